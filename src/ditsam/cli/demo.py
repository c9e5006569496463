"""``ditsam demo``: the main job on the built-in RefShapes benchmark, CPU-sized.

Generates RefShapes, trains a tiny L-DIT and the tiny decoder-only SAM baseline with the same
budget, evaluates both on val / testA / testB, and writes a results table and prediction
pictures to one folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

logger = logging.getLogger(__name__)

DEMO_MODELS = (("L-DIT", "refshapes/ldit"), ("SAM decoder-only (default)", "refshapes/default"))


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="the main job: train and compare L-DIT and the SAM baseline on RefShapes (CPU, minutes)",
        description="Generate RefShapes, train a tiny L-DIT and the decoder-only baseline, evaluate both and "
                    "write a results table and prediction pictures.",
    )
    parser.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    parser.add_argument("--data", default="data/refshapes", help="RefShapes folder, generated if missing")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per model (default: the experiment's)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides applied to both experiments")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ditsam.config import parse_override
    from ditsam.engine.config import load_experiment
    from ditsam.engine.train import train
    from ditsam.metrics import format_table

    out = Path(args.out)
    overrides = dict(parse_override(o) for o in args.overrides)
    overrides["data.root"] = args.data
    if args.epochs is not None:
        overrides["train.epochs"] = args.epochs
    results: dict[str, dict[str, dict[str, float]]] = {}
    timings = {}
    for label, experiment in DEMO_MODELS:
        config = load_experiment(experiment, overrides)
        started = time.perf_counter()
        logger.info("training %s (%s)", label, experiment)
        results[label] = train(config, run_dir=out / config.name)
        timings[label] = time.perf_counter() - started
    sections = [
        format_table(split_results, title=f"### {label} ({timings[label]:.0f} s)")
        for label, split_results in results.items()
    ]
    table = "## RefShapes results (ditsam demo)\n\n" + "\n\n".join(sections) + "\n"
    (out / "results.md").write_text(table, encoding="utf-8")
    (out / "results.json").write_text(json.dumps({"results": results, "seconds": timings}, indent=2), encoding="utf-8")
    print(table)
    print(f"Results: {out / 'results.md'}")
    for label, experiment in DEMO_MODELS:
        name = load_experiment(experiment, overrides).name
        print(f"{label}: pictures in {out / name / 'predictions'}, checkpoint {out / name / 'checkpoints' / 'best'}")
    return 0
