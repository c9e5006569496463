"""SAM point and box prompts for :meth:`ditsam.api.Segmenter.predict`: checked and parsed in
ORIGINAL image pixels, and mapped onto the model canvas with the image's
:class:`~ditsam.data.transforms.TransformMeta`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    pass

#: ``(coords, labels)``: coords (N, 2) as (x, y) pixels, labels (N,) with 1 = foreground, 0 = background.
PointsInput = tuple[Any, Any]
#: ``(x1, y1, x2, y2)`` pixels: left, top, right, bottom edges.
BoxInput = Any


def parse_points(points: Any, what: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``(coords (N, 2), labels (N,))`` as float64 coords and float32 labels (0 / 1), or None;
    ValueError naming ``what`` for anything else."""
    if points is None:
        return None
    if not isinstance(points, (tuple, list)) or len(points) != 2:
        raise ValueError(f"{what}: points must be a pair (coords (N, 2), labels (N,)), got {type(points).__name__}")
    coords = np.asarray(_to_numpy(points[0]), dtype=np.float64)
    labels = np.asarray(_to_numpy(points[1]))
    if coords.ndim == 1 and coords.shape == (2,):
        coords = coords[None]
    if labels.ndim == 0:
        labels = labels[None]
    if coords.ndim != 2 or coords.shape[1] != 2 or coords.shape[0] == 0:
        raise ValueError(f"{what}: point coords must be (N, 2) x, y with N >= 1, got shape {coords.shape}")
    if labels.shape != (coords.shape[0],):
        raise ValueError(f"{what}: point labels must be ({coords.shape[0]},), got shape {labels.shape}")
    if not np.isfinite(coords).all():
        raise ValueError(f"{what}: point coords must be finite, got {coords.tolist()}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"{what}: point labels must be 1 (foreground) or 0 (background), got {labels.tolist()}")
    return coords, labels.astype(np.float32)


def parse_box(box: Any, what: str) -> np.ndarray | None:
    """``(x1, y1, x2, y2)`` as a float64 array of 4, or None; ValueError naming ``what`` otherwise."""
    if box is None:
        return None
    try:
        values = np.asarray(_to_numpy(box), dtype=np.float64)
    except (TypeError, ValueError):
        values = np.zeros(0)
    if values.size != 4:
        raise ValueError(f"{what}: a box must be 4 numbers x1, y1, x2, y2, got {box!r}")
    values = values.reshape(4)
    if not np.isfinite(values).all():
        raise ValueError(f"{what}: box values must be finite, got {values.tolist()}")
    if values[2] < values[0] or values[3] < values[1]:
        raise ValueError(f"{what}: box {values.tolist()} has x2 < x1 or y2 < y1 (expected x1, y1, x2, y2)")
    return values


def _to_numpy(value: Any) -> Any:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        return value.detach().cpu().numpy()
    return value


def check_inside(
    points: tuple[np.ndarray, np.ndarray] | None, box: np.ndarray | None, width: int, height: int, what: str
) -> None:
    """ValueError naming ``what`` when a parsed point or box lies outside the ``width`` x ``height`` image."""
    if points is not None:
        coords = points[0]
        outside = (coords[:, 0] < 0) | (coords[:, 0] > width) | (coords[:, 1] < 0) | (coords[:, 1] > height)
        if outside.any():
            raise ValueError(
                f"{what}: point {coords[outside][0].tolist()} lies outside the {width}x{height} image "
                f"(points are x, y in original image pixels)"
            )
    if box is not None:
        x1, y1, x2, y2 = box.tolist()
        if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
            raise ValueError(
                f"{what}: box {box.tolist()} reaches outside the {width}x{height} image "
                f"(boxes are x1, y1, x2, y2 in original image pixels, within 0..W and 0..H)"
            )
