"""``ditsam predict``'s files for one prediction: the mask PNG, the overlay picture and the COCO-RLE
record that goes into the journal and ``predictions.json``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

OVERLAY_MAX_SIDE = 1024
#: Fields of a ``--jsonl`` input line copied into its record as they are (a dataset's split and category).
PASSED_THROUGH = ("split", "category_id")


def stem(index: int, image: Path) -> str:
    """The file name (no suffix) of pair ``index``'s mask and overlay: its input index and image name."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", image.stem)[:60] or "image"
    return f"{index:05d}_{safe}"


def overlay(image, mask, sentence: str, score: float):
    """The overlay picture: the mask in red on the image (at most :data:`OVERLAY_MAX_SIDE`), captioned."""
    import numpy as np
    from PIL import Image

    from ditsam.viz import prediction_card

    scale = OVERLAY_MAX_SIDE / max(image.size)
    if scale < 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.BILINEAR)
        mask = np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))
    return prediction_card(image, f"{sentence}  (score {score:.2f})", mask, None)


def record(pair: dict[str, Any], result, *, mask_file: str | None, overlay_file: str | None) -> dict[str, Any]:
    """The line of ``predictions.json`` (and of the journals) for one prediction: a record of
    ``docs/record.schema.json`` (:meth:`~ditsam.inference.result.SegmentationResult.to_dict`: COCO RLE, box,
    area, score, present), with the pair's id, image and sentence and the input's split / category_id when given."""
    line = {"id": pair["id"], "image": str(pair["image"]), "sentence": pair["text"]}
    line.update(result.to_dict(**line))
    line.update({key: pair[key] for key in PASSED_THROUGH if key in pair})
    line.update(mask_file=mask_file, overlay_file=overlay_file)
    return line


def save_prediction(
    out: Path, index: int, pair: dict[str, Any], image: Any, result: Any, *, masks: bool, overlays: bool
) -> dict[str, Any]:
    """Write the mask PNG and the overlay of one prediction (unless turned off); its record."""
    name = stem(index, pair["image"])  # the input index: unique across processes, the same in any of them
    mask_file = overlay_file = None
    if masks:
        mask_file = f"masks/{name}.png"
        result.mask_image().save(out / mask_file)
    if overlays:
        overlay_file = f"overlays/{name}.png"
        overlay(image, result.mask, pair["text"], result.score).save(out / overlay_file)
    return record(pair, result, mask_file=mask_file, overlay_file=overlay_file)
