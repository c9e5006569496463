"""COCO segmentations (polygons or RLE) to boolean masks and back (:func:`encode_rle`), and boxes from masks.

Accepted forms of a segmentation, all at an image of ``height`` x ``width`` pixels:

- polygons: ``[[x0, y0, x1, y1, ...], ...]``, one list per part;
- RLE: ``{"size": [height, width], "counts": ...}`` with compressed (``str`` / ``bytes``) or
  uncompressed (list of run lengths) counts;
- a list of RLE dicts (one per part).

The mask of an annotation is the union of its parts, as ``COCO.annToMask`` computes it.
"""

from __future__ import annotations

import logging
import os
from numbers import Real
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from ditsam.data.sample import IMAGE_READ_ERRORS, DataError, PathLike, short_repr
from ditsam.schema import is_integer

log = logging.getLogger(__name__)

# How far outside the image, in image sizes, a polygon point may lie. pycocotools rasterises every edge at
# 5x resolution into buffers sized by the edge's length: a point far away (or NaN / infinite, cast to a
# huge int in C) exhausts memory or crashes the process instead of raising.
POLYGON_REACH = 1
# Compressed RLE counts: each character is RLE_CHAR_OFFSET + a 6-bit group holding 5 value bits, a
# continuation bit and (in a value's last group) a sign bit; counts after the second are stored as the
# difference to the count two before.
RLE_CHAR_OFFSET = 48
RLE_GROUP_BITS = 5
RLE_VALUE_MASK = 0x1F
RLE_MORE_BIT = 0x20
RLE_SIGN_BIT = 0x10
RLE_GROUP_LIMIT = 64
# Groups of one count: 7 x 5 bits cover every run of a mask whose size fits pycocotools' 32-bit counts.
RLE_MAX_GROUPS = 7


def decode_segmentation(segmentation: Any, *, height: int, width: int, strict: bool = False) -> np.ndarray:
    """Decode a COCO segmentation to a bool mask of shape (height, width).

    Polygon parts with fewer than 3 points cover no area; they are skipped unless ``strict``
    (used when validating users' files), because real COCO annotations contain a few and
    pycocotools would mistake a 4-number part for a box. Malformed input raises
    :class:`DataError` describing what is wrong (callers add the file and record).
    """
    rles = _to_rles(segmentation, height=height, width=width, strict=strict)
    if not rles:
        return np.zeros((height, width), dtype=bool)
    decoded = mask_utils.decode(mask_utils.merge(rles, intersect=0))
    return np.ascontiguousarray(decoded, dtype=bool)


def segmentation_area(segmentation: Any, *, height: int, width: int) -> int:
    """Pixels of :func:`decode_segmentation`'s mask, counted on the run-length encoding without making
    the (height, width) array: cheap enough to check every annotation of a large dataset."""
    rles = _to_rles(segmentation, height=height, width=width, strict=False)
    if not rles:
        return 0
    return int(mask_utils.area(mask_utils.merge(rles, intersect=0)))


def polygon_bounds(segmentation: Any) -> tuple[float, float, float, float] | None:
    """(x_min, y_min, x_max, y_max) over every point of a polygon segmentation; None for RLE or
    anything without numeric points (to say *where* an empty mask's polygon lies)."""
    if not isinstance(segmentation, list) or not all(isinstance(part, list) for part in segmentation):
        return None
    xs = [v for part in segmentation for v in part[0::2] if isinstance(v, Real)]
    ys = [v for part in segmentation for v in part[1::2] if isinstance(v, Real)]
    if not xs or not ys:
        return None
    return (float(min(xs)), float(min(ys)), float(max(xs)), float(max(ys)))


def read_mask_png(path: PathLike) -> np.ndarray:
    """Bool (H, W) mask from an image file: nonzero pixels (palette index, any RGB channel)."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("RGB", "RGBA", "RGBa", "CMYK", "YCbCr"):
                values = np.asarray(image)[..., :3]
                return np.ascontiguousarray(values.any(axis=-1))
            if image.mode in ("LA", "La", "PA"):
                return np.ascontiguousarray(np.asarray(image)[..., 0] != 0)
            return np.ascontiguousarray(np.asarray(image) != 0)
    except FileNotFoundError:
        raise DataError(f"mask file not found: {os.fspath(path)}") from None
    except IMAGE_READ_ERRORS as error:
        raise DataError(f"cannot read mask file {os.fspath(path)}: {error}") from error


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """A bool / 0-1 (H, W) mask as COCO RLE, JSON-ready: ``{"size": [H, W], "counts": str}`` (compressed
    counts, as ``pycocotools.mask.encode`` writes them; ``pycocotools.mask.decode`` and
    :func:`decode_segmentation` read it back). Raises ValueError for a mask that is not 2-D."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask to encode as RLE must be 2-D (H, W), got shape {mask.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8) != 0, dtype=np.uint8))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def bbox_from_mask(mask: np.ndarray) -> tuple[float, float, float, float]:
    """(x, y, w, h) of the mask's nonzero pixels, COCO convention; zeros for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return (0.0, 0.0, 0.0, 0.0)
    return (float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1))


def _to_rles(segmentation: Any, *, height: int, width: int, strict: bool) -> list[dict]:
    if isinstance(segmentation, dict):
        return [_rle(segmentation, height=height, width=width)]
    if not isinstance(segmentation, list) or not segmentation:
        raise DataError(
            f"segmentation {short_repr(segmentation)} is neither a non-empty polygon list nor an RLE dict {{size, counts}}"
        )
    if all(isinstance(part, dict) for part in segmentation):
        return [_rle(part, height=height, width=width) for part in segmentation]
    if all(isinstance(part, list) for part in segmentation):
        polygons = _polygons(segmentation, height=height, width=width, strict=strict)
        return mask_utils.frPyObjects(polygons, height, width) if polygons else []
    raise DataError(f"segmentation {short_repr(segmentation)} mixes polygons and RLE dicts or holds other values")


def _polygons(parts: list[list], *, height: int, width: int, strict: bool) -> list[list[float]]:
    kept = []
    for index, part in enumerate(parts):
        if not all(isinstance(v, Real) and not isinstance(v, bool) for v in part):
            raise DataError(
                f"polygon part {index} {short_repr(part)} holds non-numbers; expected [x0, y0, x1, y1, ...]"
            )
        far = _far_coordinate(part, height=height, width=width)
        if far is not None:
            raise DataError(
                f"polygon part {index} has coordinate {short_repr(far)}, far outside the {width}x{height} image (or not finite); "
                f"expected points within {POLYGON_REACH} image size(s) of it"
            )
        if len(part) % 2:
            raise DataError(f"polygon part {index} has an odd number of coordinates ({len(part)}); expected x, y pairs")
        if len(part) < 6:
            if strict:
                raise DataError(f"polygon part {index} has {len(part) // 2} point(s); expected at least 3")
            log.debug("skipping degenerate polygon part with %d coordinates", len(part))
            continue
        kept.append([float(v) for v in part])
    return kept


def _far_coordinate(part: list, *, height: int, width: int) -> Real | None:
    """The first x or y of ``part`` beyond :data:`POLYGON_REACH` image sizes outside the image (NaN never
    compares within), or None."""
    for position, value in enumerate(part):
        size = height if position % 2 else width
        if not -POLYGON_REACH * size <= value <= (1 + POLYGON_REACH) * size:
            return value
    return None


def compressed_counts(counts: bytes) -> list[int] | None:
    """The run lengths a compressed RLE string stands for (see :data:`RLE_CHAR_OFFSET`), or None when it is
    malformed: a character outside the alphabet, a value cut off, or one longer than :data:`RLE_MAX_GROUPS`.
    pycocotools parses such strings without bounds checks, so they are decoded here first."""
    runs: list[int] = []
    position = 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position == len(counts) or shift >= RLE_MAX_GROUPS * RLE_GROUP_BITS:
                return None
            group = counts[position] - RLE_CHAR_OFFSET
            if not 0 <= group < RLE_GROUP_LIMIT:
                return None
            value |= (group & RLE_VALUE_MASK) << shift
            more = bool(group & RLE_MORE_BIT)
            position, shift = position + 1, shift + RLE_GROUP_BITS
            if not more and group & RLE_SIGN_BIT:
                value -= 1 << shift
        runs.append(value + runs[-2] if len(runs) > 2 else value)
    return runs


def _rle(rle: dict, *, height: int, width: int) -> dict:
    if not {"size", "counts"} <= set(rle):
        raise DataError(f"RLE {short_repr(rle)} lacks 'size' or 'counts'")
    size = rle["size"]
    if not isinstance(size, (list, tuple)) or list(size) != [height, width]:
        raise DataError(f"RLE size {size!r} does not match the image's [height, width] = [{height}, {width}]")
    counts = rle["counts"]
    if isinstance(counts, list):
        if not all(is_integer(v) and v >= 0 for v in counts):
            raise DataError("uncompressed RLE counts must be non-negative integers")
        if sum(counts) != height * width:
            raise DataError(f"uncompressed RLE counts sum to {sum(counts)}; expected height*width = {height * width}")
        return mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    if isinstance(counts, str):
        if not counts.isascii():
            raise DataError(f"compressed RLE counts {short_repr(counts)} hold non-ASCII characters")
        counts = counts.encode("ascii")
    if not isinstance(counts, bytes):
        raise DataError(f"RLE counts {short_repr(counts)} are neither a string nor a list of run lengths")
    runs = compressed_counts(counts)
    if runs is None or any(run < 0 for run in runs) or sum(runs) != height * width:
        found = "malformed" if runs is None else f"{len(runs)} runs summing to {sum(runs)}"
        raise DataError(
            f"compressed RLE counts {short_repr(counts)} are not a run-length encoding of {height}x{width} pixels "
            f"({found}); expected non-negative runs summing to height*width = {height * width}"
        )
    return {"size": [height, width], "counts": counts}
