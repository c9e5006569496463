"""RefShapes scenes: sampling shapes that share attributes on purpose, rasterising their masks, and
painting them on a textured background. Arrays are (H, W) masks and (H, W, 3) uint8 images.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from ditsam.data.refshapes.vocabulary import _REPEAT_PROBABILITY, _SIZE_RADIUS, COLOURS, POLYGON_SHAPES, SHAPES, SIZES


@dataclasses.dataclass
class SceneObject:
    """One shape in a scene. mask: bool (H, W); bbox: (x0, y0, x1, y1) with exclusive x1, y1."""

    shape: str
    colour: str
    size: str
    mask: np.ndarray
    polygon: list[float] | None  # COCO polygon the mask was rasterised from (polygonal shapes)
    bbox: tuple[int, int, int, int]

    @property
    def cx(self) -> float:
        return (self.bbox[0] + self.bbox[2]) / 2.0

    @property
    def cy(self) -> float:
        return (self.bbox[1] + self.bbox[3]) / 2.0


def _regular_polygon(n: int, rotation: float, radii: Sequence[float]) -> np.ndarray:
    """(n, 2) vertices around the origin; vertex i lies at radius ``radii[i % len(radii)]``."""
    angles = rotation + np.arange(n) * 2 * math.pi / n
    r = np.asarray(radii, dtype=np.float64)[np.arange(n) % len(radii)]
    return np.stack([r * np.sin(angles), -r * np.cos(angles)], axis=1)


def _polygon_vertices(shape: str, r: float, rng: np.random.Generator) -> np.ndarray:
    """Vertices (n, 2) of a polygonal shape of radius ``r``, centred on the origin, rotated."""
    if shape == "square":  # rotation kept small: a square turned 45 degrees would be a diamond
        return _regular_polygon(4, math.pi / 4 + rng.uniform(-0.2, 0.2), [r])
    if shape == "diamond":  # an elongated rhombus, point up
        half = np.array([[0, -r], [0.62 * r, 0], [0, r], [-0.62 * r, 0]])
        return _rotate(half, rng.uniform(-0.15, 0.15))
    if shape == "triangle":
        return _regular_polygon(3, rng.uniform(0, 2 * math.pi), [r])
    if shape == "star":
        return _regular_polygon(10, rng.uniform(0, 2 * math.pi), [r, 0.45 * r])
    if shape == "hexagon":
        return _regular_polygon(6, rng.uniform(0, 2 * math.pi), [r])
    if shape == "cross":
        a, b = 0.34 * r, r
        arms = np.array(
            [[-a, -b], [a, -b], [a, -a], [b, -a], [b, a], [a, a], [a, b], [-a, b], [-a, a], [-b, a], [-b, -a], [-a, -a]]
        )
        return _rotate(arms, rng.uniform(-0.25, 0.25))
    raise ValueError(f"{shape!r} is not a polygonal shape")


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _raster_mask(shape: str, r: float, cx: float, cy: float, height: int, width: int) -> np.ndarray:
    """Analytic bool (H, W) mask of a non-polygonal shape; pixel (i, j) is sampled at its centre."""
    ys = (np.arange(height) + 0.5)[:, None] - cy
    xs = (np.arange(width) + 0.5)[None, :] - cx
    if shape == "circle":
        return xs**2 + ys**2 <= (0.92 * r) ** 2
    if shape == "ring":
        d2 = xs**2 + ys**2
        return (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
    if shape == "heart":
        # (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0 spans x in +-1.14, y in -1..1.24 (y up); centred, scaled to r.
        scale = r / 1.14
        x = xs / scale
        y = -ys / scale + 0.12
        return (x**2 + y**2 - 1) ** 3 - x**2 * y**3 <= 0
    raise ValueError(f"{shape!r} is not a raster shape")


def _make_object(
    shape: str,
    colour: str,
    size: str,
    cx: float,
    cy: float,
    r: float,
    height: int,
    width: int,
    rng: np.random.Generator,
) -> SceneObject | None:
    polygon = None
    if shape in POLYGON_SHAPES:
        vertices = _polygon_vertices(shape, r, rng) + np.array([cx, cy])
        # Rounded like COCO files; the mask is decoded from exactly what instances.json stores.
        polygon = [round(float(v), 2) for v in vertices.reshape(-1)]
        rle = mask_utils.frPyObjects([polygon], height, width)
        mask = mask_utils.decode(rle)[..., 0].astype(bool)
    else:
        mask = _raster_mask(shape, r, cx, cy, height, width)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    bbox = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    return SceneObject(shape=shape, colour=colour, size=size, mask=mask, polygon=polygon, bbox=bbox)


def _dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Square (chessboard-distance) dilation of a bool mask by ``pixels``."""
    height, width = mask.shape
    padded = np.pad(mask, pixels)
    out = np.zeros_like(mask)
    for dy in range(2 * pixels + 1):
        for dx in range(2 * pixels + 1):
            out |= padded[dy : dy + height, dx : dx + width]
    return out


def _sample_objects(rng: np.random.Generator, *, height: int, width: int, count: int, split: str) -> list[SceneObject]:
    """Place up to ``count`` shapes with disjoint masks (2 px apart); boxes may overlap slightly."""
    p_shape, p_colour = _REPEAT_PROBABILITY[split]
    short = min(height, width)
    occupied = np.zeros((height, width), dtype=bool)
    objects: list[SceneObject] = []
    for _ in range(count):
        # Copying an attribute of an object already placed makes a distractor for it.
        if objects and rng.random() < p_shape:
            shape = str(rng.choice([o.shape for o in objects]))
        else:
            shape = str(rng.choice(SHAPES))
        if objects and rng.random() < p_colour:
            colour = str(rng.choice([o.colour for o in objects]))
        else:
            colour = str(rng.choice(list(COLOURS)))
        size = str(rng.choice(SIZES))
        low, high = _SIZE_RADIUS[size]
        r = rng.uniform(low, high) * short
        for _attempt in range(40):
            cx = rng.uniform(r + 1, width - r - 1)
            cy = rng.uniform(r + 1, height - r - 1)
            obj = _make_object(shape, colour, size, cx, cy, r, height, width, rng)
            if obj is not None and not (obj.mask & occupied).any():
                objects.append(obj)
                occupied |= _dilate(obj.mask, 2)
                break
    return objects


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1], (H, W): a coarse random grid upsampled bicubically."""
    coarse = rng.uniform(0, 255, size=(cells, cells)).astype(np.uint8)
    up = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    return np.asarray(up, dtype=np.float32) / 127.5 - 1.0


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Textured, low-saturation background, float32 (H, W, 3) in 0..255."""
    # Mid-grey: white objects stay brighter than any background pixel, yellow stays saturated.
    base = rng.uniform(65, 145) + rng.uniform(-12, 12, size=3)
    image = np.broadcast_to(base.astype(np.float32), (height, width, 3)).copy()
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    patterns = rng.choice(["gradient", "stripes", "checker", "blobs", "noise"], size=2, replace=False)
    for pattern in patterns:
        if pattern == "gradient":
            angle = rng.uniform(0, 2 * math.pi)
            ramp = (xs * math.cos(angle) + ys * math.sin(angle)) / max(height, width)
            layer = ramp * rng.uniform(20, 45)
        elif pattern == "stripes":
            angle = rng.uniform(0, math.pi)
            period = rng.uniform(6, 18)
            layer = np.sin((xs * math.cos(angle) + ys * math.sin(angle)) * 2 * math.pi / period) * rng.uniform(8, 20)
        elif pattern == "checker":
            cell = int(rng.integers(6, 20))
            layer = (((xs // cell) + (ys // cell)) % 2 * 2 - 1) * rng.uniform(6, 14)
        elif pattern == "blobs":
            layer = _smooth_noise(rng, height, width, int(rng.integers(3, 8))) * rng.uniform(15, 30)
        else:
            layer = rng.normal(0, rng.uniform(8, 16), size=(height, width)).astype(np.float32)
        tint = 1.0 + rng.uniform(-0.15, 0.15, size=3)  # patterns slightly tinted, never a named colour
        image += layer[..., None] * tint.astype(np.float32)
    image += rng.normal(0, rng.uniform(3, 7), size=image.shape).astype(np.float32)
    return image


def _paint(image: np.ndarray, obj: SceneObject, rng: np.random.Generator) -> None:
    """Fill the object's mask: its colour, a shading ramp and pixel noise (in place)."""
    brightness = rng.uniform(0.95, 1.03) if obj.colour == "white" else rng.uniform(0.88, 1.08)
    base = np.asarray(COLOURS[obj.colour], dtype=np.float32) * brightness + rng.uniform(-8, 8, size=3)
    rows, cols = np.nonzero(obj.mask)
    angle = rng.uniform(0, 2 * math.pi)
    extent = max(obj.bbox[2] - obj.bbox[0], obj.bbox[3] - obj.bbox[1], 1)
    ramp = ((cols - obj.cx) * math.cos(angle) + (rows - obj.cy) * math.sin(angle)) / extent
    shade = ramp * rng.uniform(10, 30)
    noise = rng.normal(0, 5, size=(rows.size, 3))
    image[rows, cols] = base[None, :] + shade[:, None] + noise


def _render(rng: np.random.Generator, height: int, width: int, objects: Sequence[SceneObject]) -> np.ndarray:
    image = _background(rng, height, width)
    for obj in objects:
        _paint(image, obj, rng)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)
