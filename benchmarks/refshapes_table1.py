"""Reproduce the shape of the paper's Table 1 on RefShapes: every variant, the same budget.

    python benchmarks/refshapes_table1.py [--epochs N] [--variants default ldit ...] [key=value ...]

Trains each variant of ``refshapes/<variant>`` from scratch with identical data, schedule and
seed, evaluates val / testA / testB, and writes benchmarks/results/refshapes_table1.json and .md
(with the machine and the wall time). The paper's claim to check: L-DIT > E-DIT > decoder-only.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path


from ditsam.config import parse_override
from ditsam.engine.config import load_experiment
from ditsam.engine.train import train
from machine import machine_info

VARIANTS = ("default", "dec2", "edit", "ldit", "default_frozen", "dec2_frozen", "edit_frozen", "ldit_frozen")
LABELS = {
    "default": "Default (text in decoder)", "dec2": "+2 dec layers", "edit": "E-DIT", "ldit": "L-DIT",
    "default_frozen": "Default*", "dec2_frozen": "+2 dec layers*", "edit_frozen": "E-DIT*", "ldit_frozen": "L-DIT*",
}



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--runs", default="runs/table1", help="run folders")
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
    for variant in args.variants:
        config = load_experiment(f"refshapes/{variant}", overrides)
        started = time.perf_counter()
        results = train(config, run_dir=Path(args.runs) / variant)
        rows[variant] = {"label": LABELS[variant], "seconds": time.perf_counter() - started, "results": results}
        print(f"{LABELS[variant]}: " + ", ".join(f"{s} mIoU {r['miou']:.2f} oIoU {r['oiou']:.2f}" for s, r in results.items()))
    record = {"machine": machine_info(), "overrides": overrides, "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    splits = list(next(iter(rows.values()))["results"])
    lines = ["| variant | " + " | ".join(f"{s} oIoU | {s} mIoU" for s in splits) + " | time (s) |",
             "|---|" + "---|---|" * len(splits) + "---|"]
    for row in rows.values():
        cells = " | ".join(f"{row['results'][s]['oiou']:.2f} | {row['results'][s]['miou']:.2f}" for s in splits)
        lines.append(f"| {row['label']} | {cells} | {row['seconds']:.0f} |")
    table = "\n".join(lines)
    out.with_suffix(".md").write_text(f"Machine: {record['machine']}\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
