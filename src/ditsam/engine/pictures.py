"""Prediction pictures of an evaluation: image, sentence, prediction (red), ground truth (green)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ditsam.data.sample import load_sample_image
from ditsam.viz import fit_within, prediction_card, side_by_side, stacked


def save_prediction_pictures(
    samples: Sequence[Any], dataset: Any, path: Path, *, per_row: int = 3, max_side: int = 320
) -> Path:
    """Write a grid of prediction cards for :class:`~ditsam.engine.evaluate.SamplePrediction` s."""
    cards = []
    for sample in samples:
        image = load_sample_image(dataset.base[sample.index])
        cards.append(fit_within(prediction_card(image, sample.sentence, sample.pred, sample.gt, sample.iou), max_side))
    grid = stacked([side_by_side(cards[i : i + per_row]) for i in range(0, len(cards), per_row)])
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path
