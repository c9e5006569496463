"""Reproduce the shape of the paper's Table 1 on RefShapes: every variant, the same budget, several seeds.

    python benchmarks/refshapes_table1.py [--seeds 0 1 2] [--variants default edit ldit ...] [key=value ...]

Trains each variant of ``refshapes/<variant>`` from scratch with identical data, recipe and budget,
once per seed (``train.seed``: initialisation, the stream of training scenes, dropout), evaluates
val / testA / testB (fixed by the data seed, the same for every run), and writes
benchmarks/results/refshapes_table1.json and .md: per variant and split the mean and standard
deviation over seeds of mIoU, oIoU and P@0.5, the machine and the wall time. The paper's claim to
check: L-DIT > E-DIT > decoder-only, by more than the spread between seeds.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

from ditsam.config import parse_override
from ditsam.engine.config import load_experiment
from ditsam.engine.train import train
from machine import machine_info

VARIANTS = ("default", "dec2", "edit", "ldit", "default_frozen", "dec2_frozen", "edit_frozen", "ldit_frozen")
LABELS = {
    "default": "Default (text in decoder)",
    "dec2": "+2 dec layers",
    "edit": "E-DIT",
    "ldit": "L-DIT",
    "default_frozen": "Default*",
    "dec2_frozen": "+2 dec layers*",
    "edit_frozen": "E-DIT*",
    "ldit_frozen": "L-DIT*",
    "ldit_blind": "L-DIT, text-blind control",
}
METRICS = ("miou", "oiou", "p@0.5")


def summarise(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per split and metric: mean and population standard deviation over the seeds' results."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for split in runs[0]:
        summary[split] = {}
        for metric in METRICS:
            values = [run[split][metric] for run in runs]
            summary[split][metric] = {"mean": statistics.fmean(values), "std": statistics.pstdev(values)}
    return summary


def markdown(rows: dict[str, dict], splits: list[str]) -> str:
    lines = [
        "| variant | " + " | ".join(f"{s} mIoU | {s} oIoU" for s in splits) + " | time per run (s) |",
        "|---|" + "---|---|" * len(splits) + "---|",
    ]
    for row in rows.values():
        cells = " | ".join(
            " | ".join(
                f"{row['summary'][s][m]['mean']:.2f} ± {row['summary'][s][m]['std']:.2f}" for m in ("miou", "oiou")
            )
            for s in splits
        )
        lines.append(f"| {row['label']} | {cells} | {statistics.fmean(row['seconds']):.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=sorted(LABELS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="training seeds (default: 0)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--runs", default="runs/table1", help="run folders")
    parser.add_argument("--overwrite", action="store_true", help="replace the runs of an earlier invocation")
    parser.add_argument("--data", default="data/refshapes")
    parser.add_argument("--out", default="benchmarks/results/refshapes_table1")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = dict(parse_override(o) for o in args.overrides)
    overrides["data.root"] = args.data
    if args.epochs is not None:
        overrides["train.epochs"] = args.epochs
    rows = {}
    started_all = time.perf_counter()
    for variant in args.variants:
        runs, seconds = [], []
        for seed in args.seeds:
            config = load_experiment(f"refshapes/{variant}", {**overrides, "train.seed": seed})
            started = time.perf_counter()
            runs.append(
                train(
                    config, run_dir=Path(args.runs) / f"{variant}-seed{seed}", overwrite=args.overwrite, progress=False
                )
            )
            seconds.append(time.perf_counter() - started)
            print(
                f"{LABELS[variant]} seed {seed}: "
                + ", ".join(f"{s} mIoU {r['miou']:.2f} oIoU {r['oiou']:.2f}" for s, r in runs[-1].items()),
                flush=True,
            )
        rows[variant] = {
            "label": LABELS[variant],
            "seeds": args.seeds,
            "seconds": seconds,
            "runs": runs,
            "summary": summarise(runs),
        }
    record = {
        "machine": machine_info(),
        "overrides": overrides,
        "seeds": args.seeds,
        "total_seconds": time.perf_counter() - started_all,
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    table = markdown(rows, list(next(iter(rows.values()))["summary"]))
    out.with_suffix(".md").write_text(
        f"Machine: {record['machine']}\n\nSeeds {args.seeds}; mean ± std over seeds.\n\n{table}\n"
    )
    print(table)


if __name__ == "__main__":
    main()
