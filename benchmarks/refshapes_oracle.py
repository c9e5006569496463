"""The ceiling of a RefShapes experiment's output resolution: the best scores a model can reach.

    python benchmarks/refshapes_oracle.py [--experiment refshapes/ldit] [key=value ...]

The mask decoder predicts low-resolution logits (4x the ViT grid, e.g. 48x48 for a 96-pixel input
with 8-pixel patches) that are upsampled to the canvas and restored to the original image. This
script feeds the *ground truth* through that path: each evaluation sample's canvas mask is
area-averaged down to the low-resolution grid (the best logits could do is a perfect soft
coverage), upsampled like the model's logits, thresholded at 0.5 and scored at the original size
with the metrics of the evaluation. Whatever it scores below 100 no training can recover.
Writes benchmarks/results/refshapes_oracle.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch.nn.functional as F
from tqdm import tqdm

from ditsam.config import parse_override
from ditsam.data.transforms import restore_to_original
from ditsam.engine.config import load_experiment
from ditsam.engine.data import ris_dataset
from ditsam.metrics import RISMetrics
from machine import machine_info

# The SAM decoder's output grid is this many times finer than the ViT's patch grid.
DECODER_UPSCALE = 4


def oracle_scores(config, split: str) -> dict[str, float]:
    """RISMetrics of the ground truth passed through the model's output resolution on ``split``."""
    dataset = ris_dataset(config, split, train=False)
    low_res = config.model.grid * DECODER_UPSCALE
    metrics = RISMetrics()
    for index in tqdm(range(len(dataset)), desc=split, unit="sample"):
        item = dataset[index]
        coverage = F.adaptive_avg_pool2d(item.mask[None], low_res)
        upsampled = F.interpolate(
            coverage, size=item.mask.shape[-2:], mode="bilinear", align_corners=config.model.upsample_align_corners
        )[0, 0]
        restored = restore_to_original(upsampled, item.meta)
        metrics.update((restored > 0.5).numpy(), item.gt_mask)
    return metrics.compute()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="refshapes/ldit")
    parser.add_argument("--data", default="data/refshapes")
    parser.add_argument("--out", default="benchmarks/results/refshapes_oracle.json")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    overrides = {"data.root": args.data, **dict(parse_override(o) for o in args.overrides)}
    config = load_experiment(args.experiment, overrides)
    results = {split: oracle_scores(config, split) for split in config.data.eval_splits}
    record = {"machine": machine_info(), "experiment": args.experiment, "overrides": overrides, "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2))
    for split, values in results.items():
        print(f"{split}: " + ", ".join(f"{name} {value:.2f}" for name, value in values.items()))


if __name__ == "__main__":
    main()
