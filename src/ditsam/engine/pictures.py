"""Prediction pictures of an evaluation: image, sentence, prediction (red), ground truth (green)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from ditsam.data.sample import load_sample_image
from ditsam.viz import prediction_card, side_by_side


def save_prediction_pictures(samples: Sequence[Any], dataset: Any, path: Path, *, per_row: int = 3,
                             max_side: int = 320) -> Path:
    """Write a grid of prediction cards for :class:`~ditsam.engine.evaluate.SamplePrediction` s."""
    cards = []
    for sample in samples:
        image = load_sample_image(dataset.base[sample.index])
        card = prediction_card(image, sample.sentence, sample.pred, sample.gt, sample.iou)
        scale = max_side / max(card.size)
        if scale < 1:
            card = card.resize((round(card.width * scale), round(card.height * scale)), Image.BILINEAR)
        cards.append(card)
    rows = [side_by_side(cards[i:i + per_row]) for i in range(0, len(cards), per_row)]
    width = max(r.width for r in rows)
    grid = Image.new("RGB", (width, sum(r.height for r in rows) + 4 * (len(rows) - 1)), "white")
    y = 0
    for row in rows:
        grid.paste(row, (0, y))
        y += row.height + 4
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path
