"""Learning curves of training runs as one PNG: an evaluation metric against training samples seen.

    python benchmarks/plot_curves.py RUN_DIR [RUN_DIR ...] [--split val] [--metric miou] [--out curves.png]

Reads each run folder's metrics.jsonl (evaluation records) and config.yaml (the global batch size,
to turn optimiser steps into samples) and draws one line per run, labelled with the folder name,
with PIL only (no plotting library needed).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import yaml
from PIL import Image, ImageDraw

WIDTH, HEIGHT, MARGIN = 900, 520, 70
COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207))
GRID_COLOUR, AXIS_COLOUR = (225, 225, 225), (60, 60, 60)
Y_TICKS = 10
# Curves with more points than this (training loss, logged every few steps) are drawn as thin lines without dots.
MAX_MARKED_POINTS = 60


def read_curve(run: Path, split: str, metric: str) -> list[tuple[float, float]]:
    """(samples seen, metric) at every evaluation of ``split`` in the run folder."""
    batch = yaml.safe_load((run / "config.yaml").read_text())["train"]["batch_size"]
    key = f"{split}/{metric}"
    points = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if key in record:
            points.append((record["step"] * batch, record[key]))
    if not points:
        raise SystemExit(f"{run / 'metrics.jsonl'} has no {key!r} record")
    return points


def draw(curves: dict[str, list[tuple[float, float]]], *, title: str, y_label: str) -> Image.Image:
    x_max = max(x for points in curves.values() for x, _ in points)
    highest = max(y for points in curves.values() for _, y in points)
    step = 10 ** math.floor(math.log10(highest)) / 2 if highest > 0 else 1.0
    y_max = math.ceil(highest / step) * step
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    pen = ImageDraw.Draw(image)
    left, top, right, bottom = MARGIN, 40, WIDTH - 20, HEIGHT - MARGIN

    def at(x: float, y: float) -> tuple[float, float]:
        return left + (right - left) * x / x_max, bottom - (bottom - top) * y / y_max

    for tick in range(Y_TICKS + 1):
        value = y_max * tick / Y_TICKS
        _, y = at(0, value)
        pen.line([(left, y), (right, y)], fill=GRID_COLOUR)
        pen.text((left - 40, y - 6), f"{value:.3g}", fill=AXIS_COLOUR)
    for tick in range(6):
        value = x_max * tick / 5
        x, _ = at(value, 0)
        pen.text((x - 15, bottom + 8), f"{value / 1000:.0f}k", fill=AXIS_COLOUR)
    pen.rectangle([left, top, right, bottom], outline=AXIS_COLOUR)
    pen.text((left, 12), title, fill=AXIS_COLOUR)
    pen.text(((left + right) // 2 - 60, bottom + 30), "training samples seen", fill=AXIS_COLOUR)
    pen.text((8, top - 20), y_label, fill=AXIS_COLOUR)
    for index, (name, points) in enumerate(curves.items()):
        colour = COLOURS[index % len(COLOURS)]
        pen.line([at(x, y) for x, y in points], fill=colour, width=3 if len(points) <= MAX_MARKED_POINTS else 1)
        for x, y in points if len(points) <= MAX_MARKED_POINTS else ():
            cx, cy = at(x, y)
            pen.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=colour)
        pen.text((left + 12, top + 10 + 16 * index), f"{name} (last {points[-1][1]:.3g})", fill=colour)
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--split", default="val")
    parser.add_argument("--metric", default="miou")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/refshapes_curves.png"))
    args = parser.parse_args()
    curves = {run.name: read_curve(run, args.split, args.metric) for run in args.runs}
    picture = draw(curves, title=f"RefShapes {args.split} {args.metric} while training", y_label=args.metric)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
