"""Image-encoder forward time: plain SAM ViT vs E-DIT vs L-DIT (text tokens inside the ViT).

Times ``ImageEncoderViT.forward`` alone (no BERT, no decoder) with random-init weights, under
``torch.inference_mode``: a warm-up call per measured setting, then ``--repeats`` rounds in which
every (implementation, variant) of a case runs once, interleaved, so that the load of a shared
machine hits all of them alike; the median per setting is reported. The text-token cost is
``variant / plain - 1`` for the same implementation, measured in the same rounds.

- variants: ``plain`` (NoInjection, T = 0), ``e2e`` (E-DIT), ``layerwise`` (L-DIT), with
  ``--text-tokens`` random text features of width 768 and ``--real-tokens`` of them unmasked;
- implementations: ``after`` (the package's attention: bias and text padding folded into widened
  heads, no mask), ``mask`` (the package's attention with ``text_padding="mask"``: the padding as a
  broadcast key mask, the default until issue 13) and ``before`` (the explicit-mask attention the
  package used first, kept below verbatim as ``legacy_*``, patched in for the measurement);
- cases: tiny configs and ViT-B at 512 (``global``: every block global, as the reference code;
  ``windowed``: SAM's layout), fp32 and bf16 autocast, batch 1 and 4 (see ``CASES``).

``--check`` first verifies that both implementations agree (fp32: max |after - before| <= 1e-5 of
max |before|, outputs and, on the tiny configs, gradients; bf16 autocast: after no further from
the fp32 output than before, within 1.5x). Results go to
``benchmarks/results/encoder_speed_cpu.json`` with the machine description.

    .venv/bin/python benchmarks/encoder_speed.py                 # default cases (~10 min, 2 cores)
    .venv/bin/python benchmarks/encoder_speed.py --cases tiny-global-fp32-b1 --repeats 5
    .venv/bin/python benchmarks/encoder_speed.py --check-only
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

from ditsam.model.inject import EndToEndInjection, LayerwiseInjection
from ditsam.model.sam import image_encoder as ie
from ditsam.model.sam.image_encoder import Attention, Block, ImageEncoderViT
from ditsam.model.sam.position import relative_position_table
from ditsam.model.sam.text_hooks import NoInjection
from machine import machine_info

TEXT_DIM = 768
# Reference code's L-DIT ViT-B 512 fp32 batch 1 (DESIGN.md §6), measured on a 2-core AMD EPYC with
# ~170 GFLOP/s fp32 on a 2048^3 matmul.
ANCHOR_S_PER_IMAGE = 2.70
ANCHOR_FP32_GFLOPS = 170.0


# --------------------------------------------------------------------------------------------
# The "before" implementation: the first version of Attention.forward / Block.forward, verbatim.
# --------------------------------------------------------------------------------------------
def legacy_relative_position_bias(q, rel_pos_h, rel_pos_w, grid):
    height, width = grid
    table_h = relative_position_table(height, height, rel_pos_h)
    table_w = relative_position_table(width, width, rel_pos_w)
    q = q.reshape(q.shape[0], height, width, q.shape[-1])
    bias_h = torch.einsum("nhwc,hkc->nhwk", q, table_h.to(q.dtype))
    bias_w = torch.einsum("nhwc,wkc->nhwk", q, table_w.to(q.dtype))
    bias = bias_h[:, :, :, :, None] + bias_w[:, :, :, None, :]
    return bias.reshape(q.shape[0], height * width, height * width)


def legacy_attention_forward(self, x, *, num_text, grid, text_bias):
    batch, length, dim = x.shape
    qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    image_bias = torch.zeros((), dtype=q.dtype, device=q.device)
    if self.use_rel_pos:
        image_q = q[:, :, num_text:].reshape(batch * self.num_heads, length - num_text, self.head_dim)
        image_bias = legacy_relative_position_bias(image_q, self.rel_pos_h, self.rel_pos_w, grid)
        image_bias = image_bias.reshape(batch, self.num_heads, length - num_text, length - num_text)
    mask = F.pad(
        image_bias.expand(batch, self.num_heads, length - num_text, length - num_text), (num_text, 0, num_text, 0)
    )
    mask = mask + F.pad(text_bias.to(q.dtype), (0, length - num_text))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


def legacy_block_forward(self, x, text, text_bias):
    batch, height, width, dim = x.shape
    num_text = text.shape[1]
    shortcut_x, shortcut_text = x, text
    x, text = self.norm1(x), self.norm1(text)
    if self.window_size > 0:
        windows, padded_hw = ie.window_partition(x, self.window_size)
        per_image = windows.shape[0] // batch
        grid = (self.window_size, self.window_size)
        tokens = torch.cat(
            [text.repeat_interleave(per_image, dim=0), windows.reshape(windows.shape[0], -1, dim)], dim=1
        )
        tokens = self.attn(
            tokens, num_text=num_text, grid=grid, text_bias=text_bias.repeat_interleave(per_image, dim=0)
        )
        text = tokens[:, :num_text].reshape(batch, per_image, num_text, dim).mean(dim=1)
        windows = tokens[:, num_text:].reshape(-1, self.window_size, self.window_size, dim)
        x = ie.window_unpartition(windows, self.window_size, padded_hw, (height, width))
    else:
        tokens = torch.cat([text, x.reshape(batch, height * width, dim)], dim=1)
        tokens = self.attn(tokens, num_text=num_text, grid=(height, width), text_bias=text_bias)
        text, x = tokens[:, :num_text], tokens[:, num_text:].reshape(batch, height, width, dim)
    x, text = shortcut_x + x, shortcut_text + text
    return x + self.mlp(self.norm2(x)), text + self.mlp(self.norm2(text))


@contextlib.contextmanager
def implementation(name: str, encoder: torch.nn.Module) -> Iterator[None]:
    """``after``: the package as it is; ``mask``: its key-mask form of the text padding (in ``encoder``);
    ``before``: the legacy forwards patched in."""
    if name in ("after", "mask"):
        ie.set_text_padding(encoder, "mask" if name == "mask" else "folded")
        try:
            yield
        finally:
            ie.set_text_padding(encoder, "folded")
        return
    saved = Attention.forward, Block.forward
    Attention.forward, Block.forward = legacy_attention_forward, legacy_block_forward
    try:
        yield
    finally:
        Attention.forward, Block.forward = saved


# --------------------------------------------------------------------------------------------
# Models and inputs
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Size:
    image_size: int
    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    window_size: int


SIZES = {
    # 8x8 grid, window 3 (padded to 9x9: exercises the window padding), 4 blocks of width 64.
    "tiny": Size(128, 64, 4, 4, (1, 3), 3),
    "vit_b": Size(512, 768, 12, 12, (2, 5, 8, 11), 14),
}


@dataclasses.dataclass(frozen=True)
class Case:
    size: str
    layout: str  # "global" | "windowed"
    dtype: str  # "fp32" | "bf16"
    batch: int
    repeats: int  # default timed rounds (scaled by --repeats-scale, replaced by --repeats)
    impls: tuple[str, ...] = ("before", "after")  # default implementations (replaced by --impls)

    @property
    def name(self) -> str:
        return f"{self.size.replace('_', '')}-{self.layout}-{self.dtype}-b{self.batch}"


# Defaults sized for ~10 minutes on 2 shared cores (bf16 is slow on CPUs without AVX512-BF16/AMX).
CASES = [
    Case("tiny", "global", "fp32", 1, 20),
    Case("tiny", "windowed", "fp32", 1, 20),
    Case("tiny", "global", "bf16", 1, 10),
    Case("vit_b", "global", "fp32", 1, 5),
    Case("vit_b", "windowed", "fp32", 1, 3),
    Case("vit_b", "global", "bf16", 1, 1),
    Case("vit_b", "global", "fp32", 4, 1),
    Case("vit_b", "windowed", "bf16", 1, 1, ("after",)),  # not in the default run (--cases)
]
DEFAULT_CASES = [case.name for case in CASES if case.name != "vitb-windowed-bf16-b1"]
CASE_BY_NAME = {case.name: case for case in CASES}
VARIANTS = ("plain", "e2e", "layerwise")


def build_encoder(size: Size, layout: str, *, use_rel_pos: bool = True, seed: int = 0) -> ImageEncoderViT:
    torch.manual_seed(seed)
    encoder = ImageEncoderViT(
        img_size=size.image_size,
        embed_dim=size.embed_dim,
        depth=size.depth,
        num_heads=size.num_heads,
        out_chans=256 if size.embed_dim >= 256 else 32,
        use_rel_pos=use_rel_pos,
        window_size=size.window_size if layout == "windowed" else 0,
        global_attn_indexes=size.global_attn_indexes,
    )
    with torch.no_grad():  # rel-pos tables and pos-embed are zero-initialised: make them matter
        for name, param in encoder.named_parameters():
            if "rel_pos" in name:
                param.normal_(0.0, 0.5)
            elif name == "pos_embed":
                param.normal_(0.0, 0.1)
    return encoder.eval()


def build_injections(size: Size, *, static_tokens: int = 0, refine: bool = False) -> dict[str, torch.nn.Module]:
    common = dict(text_dim=TEXT_DIM, embed_dim=size.embed_dim, depth=size.depth, static_tokens=static_tokens)
    return {
        "plain": NoInjection(),
        "e2e": EndToEndInjection(**common, refine_per_layer=refine).eval(),
        "layerwise": LayerwiseInjection(**common, zero_init=False).eval(),
    }


def make_inputs(size: Size, batch: int, text_tokens: int, real_tokens: list[int], seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size.image_size, size.image_size, generator=generator)
    features = torch.randn(batch, text_tokens, TEXT_DIM, generator=generator)
    mask = torch.zeros(batch, text_tokens, dtype=torch.bool)
    for row in range(batch):
        mask[row, : real_tokens[row % len(real_tokens)]] = True
    return images, features, mask


def run_encoder(encoder, injection, variant, images, features, mask, dtype: str) -> torch.Tensor:
    encoder.injection = injection
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
        if variant == "plain":
            return encoder(images)
        return encoder(images, features, mask)


# --------------------------------------------------------------------------------------------
# Correctness check: after vs before
# --------------------------------------------------------------------------------------------
def relative_error(new: torch.Tensor, ref: torch.Tensor) -> float:
    return float((new.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-30))


def check(args) -> dict:
    """Outputs (fp32 within ``args.tolerance`` of max |before|) and tiny-config gradients."""
    report: dict = {"tolerance": args.tolerance, "outputs": [], "gradients": [], "bf16_outputs": []}
    settings = [("tiny", layout, rel) for layout in ("global", "windowed") for rel in (True, False)]
    if not args.check_skip_vitb:
        settings += [("vit_b", "global", True), ("vit_b", "windowed", True)]
    for size_name, layout, use_rel_pos in settings:
        size = SIZES[size_name]
        encoder = build_encoder(size, layout, use_rel_pos=use_rel_pos, seed=3)
        tiny = size_name == "tiny"
        injections = build_injections(size, static_tokens=2 if tiny else 0, refine=tiny)
        batch = 2 if tiny else 1
        images, features, mask = make_inputs(
            size, batch, args.text_tokens, [args.real_tokens, args.text_tokens], seed=4
        )
        for variant in VARIANTS if tiny else ("layerwise",):
            label = f"{size_name}-{layout}{'' if use_rel_pos else '-norelpos'}-{variant}"
            outs = {}
            for impl in ("before", "after"):
                with implementation(impl, encoder), torch.inference_mode():
                    outs[impl] = run_encoder(encoder, injections[variant], variant, images, features, mask, "fp32")
            error = relative_error(outs["after"], outs["before"])
            report["outputs"].append({"setting": label, "max_rel_error": error, "ok": error <= args.tolerance})
            print(f"  check fp32 {label:36s} max rel error {error:.2e}", flush=True)
            if tiny and use_rel_pos:
                grads = {}
                for impl in ("before", "after"):
                    encoder.zero_grad(set_to_none=True)
                    injections[variant].zero_grad(set_to_none=True)
                    with implementation(impl, encoder):
                        out = run_encoder(encoder, injections[variant], variant, images, features, mask, "fp32")
                        weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
                        (out * weight).sum().backward()
                    params = list(encoder.named_parameters()) + [
                        (f"injection.{n}", p) for n, p in injections[variant].named_parameters()
                    ]
                    grads[impl] = {n: p.grad.clone() for n, p in params if p.grad is not None}
                worst = max(relative_error(grads["after"][n], grads["before"][n]) for n in grads["before"])
                same_set = set(grads["after"]) == set(grads["before"])
                report["gradients"].append(
                    {"setting": label, "max_rel_error": worst, "ok": same_set and worst <= args.tolerance}
                )
                print(
                    f"  check grad {label:36s} max rel error {worst:.2e} (over {len(grads['before'])} tensors)",
                    flush=True,
                )
                encoder.zero_grad(set_to_none=True)
                outs_bf16 = {}
                for impl in ("before", "after"):
                    with implementation(impl, encoder), torch.inference_mode():
                        outs_bf16[impl] = run_encoder(
                            encoder, injections[variant], variant, images, features, mask, "bf16"
                        )
                # bf16 cannot match to 1e-5; it must not drift further from fp32 than before did.
                before_error = relative_error(outs_bf16["before"], outs["before"])
                after_error = relative_error(outs_bf16["after"], outs["before"])
                report["bf16_outputs"].append(
                    {
                        "setting": label,
                        "before_vs_fp32": before_error,
                        "after_vs_fp32": after_error,
                        "after_vs_before": relative_error(outs_bf16["after"], outs_bf16["before"]),
                        "ok": after_error <= 1.5 * before_error,
                    }
                )
                print(
                    f"  check bf16 {label:36s} rel error vs fp32: before {before_error:.2e}, after {after_error:.2e}",
                    flush=True,
                )
    report["ok"] = all(r["ok"] for r in report["outputs"] + report["gradients"] + report["bf16_outputs"])
    return report


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------
def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def timed_both(fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds: all threads, user + system)."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def time_case(case: Case, args) -> list[dict]:
    size = SIZES[case.size]
    encoder = build_encoder(size, case.layout)
    injections = build_injections(size)
    images, features, mask = make_inputs(size, case.batch, args.text_tokens, [args.real_tokens])
    settings = [(impl, variant) for variant in args.variants for impl in (args.impls or case.impls)]
    repeats = args.repeats if args.repeats is not None else max(1, round(case.repeats * args.repeats_scale))
    times: dict[tuple[str, str], list[float]] = {s: [] for s in settings}
    cpu_times: dict[tuple[str, str], list[float]] = {s: [] for s in settings}

    def call(impl: str, variant: str) -> tuple[float, float]:
        with implementation(impl, encoder), torch.inference_mode():
            return timed_both(
                lambda: run_encoder(encoder, injections[variant], variant, images, features, mask, case.dtype)
            )

    for setting in settings:
        for _ in range(args.warmup):
            call(*setting)
    for _ in range(repeats):
        for setting in settings:
            wall, cpu = call(*setting)
            times[setting].append(wall)
            cpu_times[setting].append(cpu)
    rows = []
    for impl, variant in settings:
        median = statistics.median(times[(impl, variant)])
        rows.append(
            {
                "case": case.name,
                "size": case.size,
                "layout": case.layout,
                "dtype": case.dtype,
                "batch": case.batch,
                "impl": impl,
                "variant": variant,
                "repeats": repeats,
                "median_ms": median * 1e3,
                "ms_per_image": median * 1e3 / case.batch,
                "min_ms": min(times[(impl, variant)]) * 1e3,
                "cpu_median_ms": statistics.median(cpu_times[(impl, variant)]) * 1e3,
                "times_ms": [t * 1e3 for t in times[(impl, variant)]],
                "cpu_times_ms": [t * 1e3 for t in cpu_times[(impl, variant)]],
            }
        )
    for row in rows:
        plain = next((r for r in rows if r["impl"] == row["impl"] and r["variant"] == "plain"), None)
        for key, source in (
            ("text_cost_pct", "median_ms"),
            ("text_cost_min_pct", "min_ms"),
            ("text_cost_cpu_pct", "cpu_median_ms"),
        ):
            row[key] = None if plain is None else 100.0 * (row[source] / plain[source] - 1.0)
    return rows


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 3) -> float:
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    a @ b
    best = min(timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------
def format_table(rows: list[dict]) -> str:
    """Markdown: wall ms per image (median), then the text-token cost by wall median, wall min and
    process CPU time (median; with 1 thread the least disturbed by other load on the machine)."""
    lines = [
        "| case | impl | plain ms/img | E-DIT ms/img | L-DIT ms/img | E-DIT cost (median / min / cpu) | L-DIT cost (median / min / cpu) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    order = [c.name for c in CASES]
    keys = sorted(
        {(r["case"], r["impl"]) for r in rows},
        key=lambda k: (order.index(k[0]), ("before", "mask", "after").index(k[1])),
    )
    for case, impl in keys:
        by_variant = {r["variant"]: r for r in rows if r["case"] == case and r["impl"] == impl}

        def ms(variant: str) -> str:
            return f"{by_variant[variant]['ms_per_image']:.1f}" if variant in by_variant else "-"

        def cost(variant: str) -> str:
            row = by_variant.get(variant)
            if row is None or row["text_cost_pct"] is None:
                return "-"
            return " / ".join(f"{row[k]:+.1f}%" for k in ("text_cost_pct", "text_cost_min_pct", "text_cost_cpu_pct"))

        lines.append(
            f"| {case} | {impl} | {ms('plain')} | {ms('e2e')} | {ms('layerwise')} | {cost('e2e')} | {cost('layerwise')} |"
        )
    return "\n".join(lines)


def speedups(rows: list[dict]) -> list[str]:
    out = []
    for case in dict.fromkeys(r["case"] for r in rows):
        for variant in VARIANTS:
            pair = {r["impl"]: r for r in rows if r["case"] == case and r["variant"] == variant}
            for other in ("before", "mask"):
                if {other, "after"} <= set(pair):
                    ratio = pair[other]["median_ms"] / pair["after"]["median_ms"]
                    out.append(f"{case} {variant}: {other}/after = {ratio:.2f}x")
    return out


def anchor(rows: list[dict], fp32_gflops: float) -> dict | None:
    row = next(
        (
            r
            for r in rows
            if r["case"] == "vitb-global-fp32-b1" and r["variant"] == "layerwise" and r["impl"] == "after"
        ),
        None,
    )
    if row is None:
        return None
    seconds = row["ms_per_image"] / 1e3
    scaled_anchor = ANCHOR_S_PER_IMAGE * ANCHOR_FP32_GFLOPS / fp32_gflops
    return {
        "reference_code_s_per_image": ANCHOR_S_PER_IMAGE,
        "ours_s_per_image": seconds,
        "ours_min_s_per_image": row["min_ms"] / row["batch"] / 1e3,
        "speedup_vs_anchor": ANCHOR_S_PER_IMAGE / seconds,
        "anchor_scaled_to_this_cpu_s": scaled_anchor,
        "speedup_vs_scaled_anchor": scaled_anchor / seconds,
        "note": "anchor measured on the design's reference CPU; the scaled anchor multiplies it by "
        "(anchor machine fp32 GFLOP/s) / (this machine's fp32 GFLOP/s)",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--cases",
        nargs="+",
        default=DEFAULT_CASES,
        choices=[c.name for c in CASES],
        metavar="CASE",
        help="cases to time: " + ", ".join(c.name for c in CASES) + " (default: all but vitb-windowed-bf16-b1)",
    )
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument(
        "--impls",
        nargs="+",
        default=None,
        choices=["before", "mask", "after"],
        help="implementations to time (default: per case, see CASES)",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed rounds per case (default: per-case, see CASES)"
    )
    parser.add_argument("--repeats-scale", type=float, default=1.0, help="multiply the per-case default rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per setting before the rounds")
    parser.add_argument("--text-tokens", type=int, default=20)
    parser.add_argument("--real-tokens", type=int, default=8, help="unmasked text tokens (the rest is padding)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument(
        "--check", action=argparse.BooleanOptionalAction, default=True, help="verify before == after first"
    )
    parser.add_argument("--check-only", action="store_true")
    parser.add_argument("--check-skip-vitb", action="store_true", help="check the tiny configs only")
    parser.add_argument("--tolerance", type=float, default=1e-5)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "encoder_speed_cpu.json"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    started = time.time()
    info = machine_info()
    print(
        f"machine: {info['cpu_model']}, {info['usable_cores']} cores, torch {info['torch']}, "
        f"{info['torch_threads']} threads, ISA {' '.join(info['isa'])}",
        flush=True,
    )
    result: dict = {
        "machine": info,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "load_average_start": load_average(),
    }
    if args.check or args.check_only:
        print("checking after vs before ...", flush=True)
        result["check"] = check(args)
        print(f"check {'passed' if result['check']['ok'] else 'FAILED'}", flush=True)
        if not result["check"]["ok"]:
            print("refusing to time a changed implementation", file=sys.stderr)
            return 1
        if args.check_only:
            return 0
    result["matmul_2048_gflops"] = {"fp32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16)}
    print(
        f"2048^3 matmul: {result['matmul_2048_gflops']['fp32']:.0f} GFLOP/s fp32, "
        f"{result['matmul_2048_gflops']['bf16']:.0f} GFLOP/s bf16",
        flush=True,
    )
    rows: list[dict] = []
    for name in args.cases:
        case = CASE_BY_NAME[name]
        t0 = time.time()
        rows += time_case(case, args)
        print(f"{name}: {time.time() - t0:.0f} s", flush=True)
    result["results"] = rows
    result["anchor"] = anchor(rows, result["matmul_2048_gflops"]["fp32"])
    result["load_average_end"] = load_average()
    result["wall_s"] = time.time() - started
    print()
    print(format_table(rows))
    print()
    for line in speedups(rows):
        print(line)
    if result["anchor"]:
        a = result["anchor"]
        print(
            f"anchor (reference L-DIT ViT-B 512 fp32 b1): {a['reference_code_s_per_image']:.2f} s/img; ours "
            f"{a['ours_s_per_image']:.2f} s/img median, {a['ours_min_s_per_image']:.2f} min "
            f"({a['speedup_vs_anchor']:.2f}x on the median); anchor scaled to this CPU's fp32 "
            f"matmul rate {a['anchor_scaled_to_this_cpu_s']:.2f} s ({a['speedup_vs_scaled_anchor']:.2f}x)"
        )
    print(
        f"load average start {result['load_average_start']}, end {result['load_average_end']}; wall {result['wall_s']:.0f} s"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
