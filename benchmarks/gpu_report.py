"""The report of ``gpu_suite.py``: the issue's goals and a markdown table of the results."""

from __future__ import annotations

from typing import Any

# The goals of issue 13: value key -> (comparison, target).
GOALS = {
    "batch1_bf16_full_model_ms": ("<=", 5.0),
    "batch64_images_per_s": (">=", 1500.0),
    "training_mfu_pct": (">=", 40.0),
    "text_tokens_cost_pct": ("<=", 3.0),
}


# ---------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------
def goals(sections: dict[str, Any]) -> dict[str, Any]:
    """The issue's goals: the best measured value of each, its target, the ratio value / target."""
    latency = sections.get("latency", {})
    compiled = sections.get("compile", {})
    b1 = [latency.get("model_bf16_b1", {}).get("median_ms")]
    b1 += [compiled.get(mode, {}).get("bf16_b1", {}).get("median_ms") for mode in ("default", "reduce-overhead")]
    throughput = sections.get("throughput", {}).get("bf16", {})
    batch64 = [entry.get("images_per_s") for key, entry in throughput.items() if key == "64"]
    batch64 += [compiled.get("default", {}).get("bf16_b64", {}).get("images_per_s")]
    training = sections.get("training", {})
    mfu = [entry.get("mfu_datasheet_pct") for entry in training.values() if isinstance(entry, dict)]
    text = sections.get("text_cost", {})
    cost = [text.get(f"bf16_b{batch}", {}).get("cost_pct", {}).get("layerwise") for batch in (64,)]
    values = {
        "batch1_bf16_full_model_ms": min((v for v in b1 if isinstance(v, (int, float))), default=None),
        "batch64_images_per_s": max((v for v in batch64 if isinstance(v, (int, float))), default=None),
        "training_mfu_pct": max((v for v in mfu if isinstance(v, (int, float))), default=None),
        "text_tokens_cost_pct": next((v for v in cost if isinstance(v, (int, float))), None),
    }
    out = {}
    for key, (comparison, target) in GOALS.items():
        value = values[key]
        met = None if value is None else (value <= target if comparison == "<=" else value >= target)
        out[key] = {
            "value": value,
            "goal": f"{comparison} {target:g}",
            "ratio_to_goal": None if value is None else value / target,
            "met": met,
        }
    return out


def markdown(results: dict[str, Any]) -> str:
    sections = results["sections"]
    env = sections.get("environment", {})
    smi = env.get("nvidia_smi") if isinstance(env.get("nvidia_smi"), dict) else {}
    lines = [
        f"# GPU suite{' (smoke)' if results['smoke'] else ''}: {env.get('device_name', results['device'])}",
        "",
        f"torch {env.get('torch')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, transformers {env.get('transformers')}, "
        f"driver {smi.get('driver_version', '-')}, SM clock {smi.get('clocks.sm', '-')} (max {smi.get('clocks.max.sm', '-')}), "
        f"memory clock {smi.get('clocks.mem', '-')}; bf16 matmul {fmt(env.get('matmul_bf16_tflops'))} TFLOP/s measured, "
        f"{fmt(env.get('datasheet_bf16_tflops'))} datasheet; wall {results.get('wall_s')} s.",
        "",
        "| goal | value | target | ratio | met |",
        "|---|---:|---:|---:|---|",
    ]
    for key, goal in results.get("goals", {}).items():
        lines.append(
            f"| {key} | {fmt(goal['value'])} | {goal['goal']} | {fmt(goal['ratio_to_goal'])} | {goal['met']} |"
        )
    lines += ["", "| section | status | s |", "|---|---|---:|"]
    lines += [
        f"| {name} | {rec.get('status', 'running')} | {rec.get('seconds', '')} |" for name, rec in sections.items()
    ]
    lines += ["", "| measurement | ms (median) | extra |", "|---|---:|---|"]
    for name, rec in sections.items():
        for path, value in flatten(rec):
            if isinstance(value, dict) and "median_ms" in value:
                extra = f"{value['images_per_s']:.0f} images/s" if "images_per_s" in value else ""
                lines.append(f"| {name}.{path} | {value['median_ms']:.3f} | {extra} |")
    training = sections.get("training", {})
    if any(isinstance(v, dict) and "samples_per_s" in v for v in training.values()):
        lines += [
            "",
            "| training | samples/s | TFLOP/s | MFU (datasheet) | peak GiB | syncs/step |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for key, entry in training.items():
            if isinstance(entry, dict) and "samples_per_s" in entry:
                lines.append(
                    f"| {key} | {entry['samples_per_s']:.1f} | {fmt(entry.get('achieved_tflops'))} | "
                    f"{fmt(entry.get('mfu_datasheet_pct'))} | {fmt(entry.get('peak_memory_gib'))} | "
                    f"{entry.get('host_syncs_in_one_step')} |"
                )
    return "\n".join(lines)


def flatten(record: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted path, value) for every dict that holds a timing, depth first."""
    out = []
    for key, value in record.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            if "median_ms" in value:
                out.append((path, value))
            else:
                out += flatten(value, path + ".")
    return out


def fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value if value is not None else "-")
