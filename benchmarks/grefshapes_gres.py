"""Generalized RIS at CPU scale: L-DIT vs the decoder-only baseline on gRefShapes.

    python benchmarks/grefshapes_gres.py [--variants ldit default] [--runs runs/gres] [key=value ...]

Trains ``grefshapes/<variant>`` (RefShapes' recipe, sentences naming one shape, several, or none,
a no-target head on the decoder's IoU token), evaluates val / testA / testB with gRefCOCO's metrics
(gIoU, cIoU, N-acc, T-acc, P@0.7..0.9), and writes benchmarks/results/grefshapes_gres.json and .md
plus, per variant, a picture grid of val predictions: no-target, several-target and single-target
sentences (what the model says is printed under each picture).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from ditsam.config import parse_override
from ditsam.data.sample import load_sample_image
from ditsam.engine.config import load_experiment
from ditsam.engine.data import ris_dataset
from ditsam.engine.evaluate import evaluate
from ditsam.engine.train import train
from ditsam.metrics import format_table
from ditsam.model.dit import DITSam
from ditsam.viz import captioned, fit_within, overlay, side_by_side, stacked
from machine import machine_info

LABELS = {"ldit": "L-DIT", "default": "Default (text in decoder)", "edit": "E-DIT"}
# Examples per kind (no target, several targets, one target) in each variant's picture grid.
EXAMPLES_PER_KIND = 3
CARD_SIDE = 240


def _kind(sample, targets_by_ref: dict[int, int]) -> str:
    count = targets_by_ref[sample.ref_id]
    return "none" if count == 0 else "several" if count > 1 else "one"


def picture_grid(model: DITSam, dataset, refs_file: Path, path: Path) -> Path:
    """Val predictions of each kind, with what the model answered under each card."""
    targets_by_ref = {
        int(ref["ref_id"]): 0 if ref["ann_id"] == [-1] else len(ref["ann_id"])
        for ref in json.loads(refs_file.read_text())
    }
    chosen: dict[str, list] = {"none": [], "several": [], "one": []}

    def keep(sample) -> None:
        bucket = chosen[_kind(sample, targets_by_ref)]
        if len(bucket) < EXAMPLES_PER_KIND:
            bucket.append(sample)

    evaluate(model, dataset, on_prediction=keep, progress=False)
    rows = []
    for kind, samples in chosen.items():
        cards = []
        for sample in samples:
            image = load_sample_image(dataset.base[sample.index])
            says = "says: nothing referred" if sample.no_target else f"IoU {100 * sample.iou:.0f}"
            shown = sample.pred & (not sample.no_target)
            cards.append(
                fit_within(
                    captioned(overlay(image, shown, sample.gt), f'[{kind}] "{sample.sentence}" {says}'), CARD_SIDE
                )
            )
        if cards:
            rows.append(side_by_side(cards))
    path.parent.mkdir(parents=True, exist_ok=True)
    stacked(rows).save(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["ldit", "default"], choices=sorted(LABELS))
    parser.add_argument("--runs", default="runs/gres", help="run folders")
    parser.add_argument("--data", default="data/grefshapes")
    parser.add_argument("--out", default="benchmarks/results/grefshapes_gres")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = {**dict(parse_override(o) for o in args.overrides), "data.root": args.data}
    out = Path(args.out)
    record: dict = {"machine": machine_info(), "overrides": overrides, "rows": {}}
    for variant in args.variants:
        config = load_experiment(f"grefshapes/{variant}", overrides)
        run_dir = Path(args.runs) / variant
        started = time.perf_counter()
        results = train(config, run_dir=run_dir, progress=False)
        seconds = time.perf_counter() - started
        model = DITSam.from_pretrained(run_dir / "checkpoints" / "last")
        val = ris_dataset(config, "val", train=False)
        grid = picture_grid(model, val, Path(val.base.source["refs_file"]), out.parent / f"{out.name}_{variant}.png")
        record["rows"][variant] = {
            "label": LABELS[variant],
            "seconds": seconds,
            "results": results,
            "pictures": str(grid),
            "data_source": val.base.source,
        }
        print(format_table(results, title=f"### {LABELS[variant]} ({seconds:.0f} s)"), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    tables = "\n\n".join(
        format_table(row["results"], title=f"### {row['label']} ({row['seconds']:.0f} s)")
        for row in record["rows"].values()
    )
    out.with_suffix(".md").write_text(f"Machine: {record['machine']}\n\n{tables}\n")


if __name__ == "__main__":
    main()
