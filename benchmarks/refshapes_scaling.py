"""How far more training takes the RefShapes recipe: one variant trained at 1x, 2x, 4x, 8x the demo's budget.

    python benchmarks/refshapes_scaling.py [--budgets 1 2 4 8] [--variant ldit] [key=value ...]

A budget multiplies ``train.epochs`` (the demo: 14 epochs of 2,000 streamed samples, fresh scenes every
epoch, so more epochs mean more distinct data, not repeats); warm-up and batch stay as they are, the
cosine schedule stretches. Run folders go to ``runs/scaling/<variant>-<m>x``; a finished one (its
results.json written, its config's epochs as asked) is scored again, not retrained. For each run's selected
checkpoint the script scores val / testA / testB overall and per expression kind (attribute, position,
ordinal, middle, relation: ``sentence_kinds`` in the data's scenes.json) and names, per split, the smallest
measured budget that reaches the issue's goal. No curve is fitted: the recipe learns in a step (a long
plateau, then a sudden rise once spatial words are read), which no smooth extrapolation captures. Writes
benchmarks/results/refshapes_scaling.{json,md} and refshapes_scaling.png (val mIoU against samples seen,
one line per run).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from collections import defaultdict
from pathlib import Path

import yaml

from ditsam.config import parse_override
from ditsam.engine.config import load_experiment
from ditsam.engine.data import ris_dataset
from ditsam.engine.evaluate import SamplePrediction, evaluate
from ditsam.engine.train import train
from ditsam.model.dit import DITSam
from machine import machine_info
from plot_curves import draw, read_curve

SPLITS = ("val", "testA", "testB")
# Issue 8's goals for L-DIT on the demo data (mIoU).
GOALS = {"val": 55.0, "testA": 65.0, "testB": 45.0}
# Where the RefShapes writer keeps the generator's record (sentence kinds) under data.root.
SCENES_FILE = Path("refshapes") / "scenes.json"


def run_budget(variant: str, multiple: int, overrides: dict, runs: Path) -> tuple[Path, float | None]:
    """Train (or reuse) the run of ``multiple`` x the demo's epochs; returns its folder and training seconds
    (None for a reused run)."""
    base = load_experiment(f"refshapes/{variant}", overrides)
    epochs = base.train.epochs * multiple
    # About seven evaluations per run, whatever its length, for the curves.
    every = max(1, epochs // 7)
    config = load_experiment(
        f"refshapes/{variant}", {**overrides, "train.epochs": epochs, "train.eval_every_epochs": every}
    )
    run_dir = runs / f"{variant}-{multiple}x"
    saved = run_dir / "config.yaml"
    if (run_dir / "results.json").is_file() and saved.is_file():
        if yaml.safe_load(saved.read_text())["train"]["epochs"] == epochs:
            logging.info("reusing %s (finished, %d epochs)", run_dir, epochs)
            return run_dir, None
    started = time.perf_counter()
    train(config, run_dir=run_dir, progress=False)
    return run_dir, time.perf_counter() - started


def score_by_kind(run_dir: Path, data_root: Path) -> dict[str, dict[str, dict[str, float]]]:
    """Per split: mIoU and P@0.5 over all sentences and per expression kind, of the run's selected checkpoint."""
    kinds = json.loads((data_root / SCENES_FILE).read_text())["sentence_kinds"]
    model = DITSam.from_pretrained(run_dir / "checkpoints" / "best").eval()
    experiment = load_experiment(str(run_dir / "config.yaml"), {"data.root": str(data_root)})
    scores: dict[str, dict[str, dict[str, float]]] = {}
    for split in SPLITS:
        ious: dict[str, list[float]] = defaultdict(list)

        def collect(sample: SamplePrediction) -> None:
            ious["all"].append(sample.iou)
            ious[kinds[str(sample.sent_id)]].append(sample.iou)

        evaluate(
            model,
            ris_dataset(experiment, split, train=False),
            threshold=experiment.train.threshold,
            on_prediction=collect,
            progress=False,
        )
        scores[split] = {
            kind: {
                "miou": 100 * statistics.fmean(values),
                "p@0.5": 100 * sum(v >= 0.5 for v in values) / len(values),
                "count": len(values),
            }
            for kind, values in sorted(ious.items())
        }
    return scores


def smallest_budget_reaching(rows: list[dict], split: str, goal: float) -> int | None:
    """The smallest budget multiple whose run scores at least ``goal`` mIoU on ``split`` (None: none does)."""
    reaching = [row["multiple"] for row in rows if row["by_kind"][split]["all"]["miou"] >= goal]
    return min(reaching) if reaching else None


def markdown(rows: list[dict], reached: dict[str, int | None]) -> str:
    kinds = sorted({kind for row in rows for kind in row["by_kind"]["val"]} - {"all"})
    lines = [
        "| budget | samples | train s | "
        + " | ".join(f"{s} mIoU" for s in SPLITS)
        + " | val P@0.5 | "
        + " | ".join(f"val+testB {k}" for k in kinds)
        + " |",
        "|---|---:|---:|" + "---:|" * (len(SPLITS) + 1 + len(kinds)),
    ]
    for row in rows:
        by_kind = row["by_kind"]
        cells = []
        for kind in kinds:
            counted = [by_kind[s][kind] for s in ("val", "testB") if kind in by_kind[s]]
            total = sum(c["count"] for c in counted)
            cells.append(f"{sum(c['miou'] * c['count'] for c in counted) / total:.1f}" if total else "n/a")
        seconds = "reused" if row["seconds"] is None else f"{row['seconds']:.0f}"
        lines.append(
            f"| {row['multiple']}x | {row['samples']:,} | {seconds} | "
            + " | ".join(f"{by_kind[s]['all']['miou']:.2f}" for s in SPLITS)
            + f" | {by_kind['val']['all']['p@0.5']:.1f} | "
            + " | ".join(cells)
            + " |"
        )
    lines += ["", "| split | goal (mIoU) | smallest budget measured that reaches it |", "|---|---:|---|"]
    for split, multiple in reached.items():
        lines.append(f"| {split} | {GOALS[split]:.0f} | {'none' if multiple is None else f'{multiple}x'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", nargs="+", type=int, default=[1, 2, 4, 8], help="multiples of the demo's epochs")
    parser.add_argument("--variant", default="ldit", help="refshapes/<variant> (default: ldit)")
    parser.add_argument("--runs", type=Path, default=Path("runs/scaling"), help="run folders")
    parser.add_argument("--data", type=Path, default=Path("data/refshapes"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/refshapes_scaling"))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if min(args.budgets) < 1:
        parser.error("--budgets are multiples >= 1 of the demo's epochs")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = {**dict(parse_override(o) for o in args.overrides), "data.root": str(args.data)}
    rows = []
    for multiple in sorted(set(args.budgets)):
        run_dir, seconds = run_budget(args.variant, multiple, overrides, args.runs)
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        samples = saved["train"]["epochs"] * saved["data"]["train_stream_samples"]
        rows.append(
            {
                "multiple": multiple,
                "run": str(run_dir),
                "samples": samples,
                "seconds": seconds,
                "by_kind": score_by_kind(run_dir, args.data),
            }
        )
        print(
            f"{multiple}x ({samples:,} samples): "
            + ", ".join(f"{s} mIoU {rows[-1]['by_kind'][s]['all']['miou']:.2f}" for s in SPLITS),
            flush=True,
        )
    reached = {split: smallest_budget_reaching(rows, split, GOALS[split]) for split in SPLITS}
    record = {
        "machine": machine_info(),
        "variant": args.variant,
        "overrides": overrides,
        "rows": rows,
        "goals": GOALS,
        "smallest_budget_reaching_goal": reached,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    table = markdown(rows, reached)
    args.out.with_suffix(".md").write_text(f"Machine: {record['machine']}\n\n{table}\n")
    curves = {f"{row['multiple']}x": read_curve(Path(row["run"]), "val", "miou") for row in rows}
    draw(curves, title=f"RefShapes val mIoU, refshapes/{args.variant} at several budgets", y_label="val mIoU").save(
        args.out.with_suffix(".png")
    )
    print(table)


if __name__ == "__main__":
    main()
