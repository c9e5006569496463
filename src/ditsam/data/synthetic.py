"""RefShapes: the built-in synthetic referring-segmentation benchmark, written in the REFER layout.

Each image holds several coloured shapes on a textured background; objects share attributes
on purpose, so that the sentence, not the picture alone, decides which one is meant. Every
referring expression is a small program (attribute filter, extreme / ordinal position,
relation to an anchor object) evaluated over the scene in *three-valued* logic: a comparison
closer than a margin counts as "unsure". An expression is kept only when it is true for
exactly one object and clearly false for all others, so every sentence provably names one
object, and none hinges on a pixel-level difference a person could not see.

Output (``generate_refshapes(out)``), readable by ``ReferDataset(root=out, dataset="refshapes",
split_by="unc", image_dir=out / "images")``::

    <out>/refshapes/refs(unc).p      pickled list of REFER ref dicts
    <out>/refshapes/instances.json   COCO images / annotations / categories (shape kinds);
                                     polygons for polygonal shapes, compressed RLE for the others
    <out>/refshapes/scenes.json      per-object attributes and per-sentence expression kind
    <out>/images/refshapes_<id>.png

Splits: ``train`` and ``val`` mix every expression kind; ``testA`` holds attribute expressions
only, ``testB`` spatial ones only (position, ordinal, middle, relation). Each split has its own
images. Generation is deterministic: one :class:`numpy.random.Generator` per image, seeded from
(seed, split, image index), so the same seed writes byte-identical files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import pickle
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

log = logging.getLogger(__name__)

DATASET_NAME = "refshapes"
SPLIT_BY = "unc"
SPLITS: tuple[str, ...] = ("train", "val", "testA", "testB")
# Recorded in scenes.json; bumped whenever the same seed and preset would write other files.
GENERATOR_VERSION = 1

# Polygonal shapes are stored as COCO polygons, the others as RLE (a ring has a hole).
POLYGON_SHAPES: tuple[str, ...] = ("square", "triangle", "star", "hexagon", "diamond", "cross")
RASTER_SHAPES: tuple[str, ...] = ("circle", "ring", "heart")
SHAPES: tuple[str, ...] = POLYGON_SHAPES + RASTER_SHAPES
# Hues far apart (>= 55 degrees) plus white, so mild hue jitter never turns one colour word into another.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 45, 40),
    "yellow": (235, 205, 35),
    "green": (45, 160, 65),
    "blue": (40, 85, 215),
    "purple": (140, 60, 190),
    "white": (240, 240, 240),
}
SIZES: tuple[str, ...] = ("small", "large")
# Shape radius as a fraction of the image's short side; the gap between the classes keeps
# "small" and "large" unambiguous in every scene.
_SIZE_RADIUS: dict[str, tuple[float, float]] = {"small": (0.075, 0.095), "large": (0.14, 0.175)}

# Expression kinds; testA keeps the first, testB the others.
ATTRIBUTE, POSITION, ORDINAL, MIDDLE, RELATION = "attribute", "position", "ordinal", "middle", "relation"
EXPRESSION_KINDS: tuple[str, ...] = (ATTRIBUTE, POSITION, ORDINAL, MIDDLE, RELATION)
_SPLIT_KINDS: dict[str, tuple[str, ...]] = {
    "train": EXPRESSION_KINDS,
    "val": EXPRESSION_KINDS,
    "testA": (ATTRIBUTE,),
    "testB": (POSITION, ORDINAL, MIDDLE, RELATION),
}

# Probability that a new object copies the shape / colour of one already placed: distractors.
# testB scenes repeat more, so that attributes alone rarely suffice.
_REPEAT_PROBABILITY: dict[str, tuple[float, float]] = {
    "train": (0.5, 0.5),
    "val": (0.5, 0.5),
    "testA": (0.35, 0.35),
    "testB": (0.7, 0.6),
}

# ---------------------------------------------------------------------------------------------
# Language: templates. Every word a sentence can contain comes from these tables.
# ---------------------------------------------------------------------------------------------

_SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "little"), "large": ("large", "big")}
_GENERIC_NOUNS: tuple[str, ...] = ("shape", "object")
_ORDINAL_WORDS: tuple[str, ...] = ("first", "second", "third", "fourth")
_SIDE_WORDS: dict[str, str] = {"left": "left", "right": "right", "top": "top", "bottom": "bottom"}

_ATTRIBUTE_TEMPLATES = ("the {np}", "{np}", "the {np} in the picture", "the {np} in the image")
# Extreme position; the "pair" phrasings read naturally only when two objects fit the noun phrase.
_POSITION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "left": ("the leftmost {np}", "leftmost {np}", "the {np} furthest to the left", "the {np} on the far left", "the first {np} from the left"),
    "right": ("the rightmost {np}", "rightmost {np}", "the {np} furthest to the right", "the {np} on the far right", "the first {np} from the right"),
    "top": ("the topmost {np}", "the highest {np}", "the {np} nearest the top", "the {np} at the very top", "the first {np} from the top"),
    "bottom": ("the bottommost {np}", "the lowest {np}", "the {np} nearest the bottom", "the {np} at the very bottom", "the first {np} from the bottom"),
}
_PAIR_TEMPLATES: dict[str, tuple[str, ...]] = {
    "left": ("the {np} on the left", "the left {np}", "left {np}"),
    "right": ("the {np} on the right", "the right {np}", "right {np}"),
    "top": ("the upper {np}", "the top {np}", "the {np} on top"),
    "bottom": ("the lower {np}", "the bottom {np}", "the {np} at the bottom"),
}
_ORDINAL_TEMPLATES = ("the {ord} {np} from the {side}", "{ord} {np} from the {side}", "the {np} {ord} from the {side}")
_MIDDLE_TEMPLATES = ("the middle {np}", "the {np} in the middle", "middle {np}")
_RELATION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "left": ("the {np} left of the {anchor}", "the {np} to the left of the {anchor}", "{np} left of {anchor}"),
    "right": ("the {np} right of the {anchor}", "the {np} to the right of the {anchor}", "{np} right of {anchor}"),
    "above": ("the {np} above the {anchor}", "the {np} higher than the {anchor}", "{np} above {anchor}"),
    "below": ("the {np} below the {anchor}", "the {np} under the {anchor}", "the {np} beneath the {anchor}"),
    "closest": ("the {np} closest to the {anchor}", "the {np} nearest to the {anchor}", "the {np} nearest the {anchor}"),
}


def _vocabulary() -> tuple[str, ...]:
    templates = [
        *_ATTRIBUTE_TEMPLATES, *_ORDINAL_TEMPLATES, *_MIDDLE_TEMPLATES,
        *(t for table in (_POSITION_TEMPLATES, _PAIR_TEMPLATES, _RELATION_TEMPLATES) for ts in table.values() for t in ts),
    ]
    words = {w for t in templates for w in t.split() if not w.startswith("{")}
    words.update(SHAPES, COLOURS, _GENERIC_NOUNS, ("one",), _ORDINAL_WORDS, _SIDE_WORDS.values())
    words.update(w for ws in _SIZE_WORDS.values() for w in ws)
    return tuple(sorted(words))


# Every word any RefShapes sentence can contain (for build_tiny_bert's vocabulary).
REFSHAPES_WORDS: tuple[str, ...] = _vocabulary()

# ---------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RefShapesPreset:
    """Sizes of one RefShapes variant."""

    # Inclusive range of image side lengths in pixels; width and height are drawn independently.
    side_range: tuple[int, int]
    # Step between allowed side lengths.
    side_step: int
    # Inclusive range of objects per image.
    objects_range: tuple[int, int]
    # Images per split.
    images: Mapping[str, int]
    # At most this many sentences per referred object (train / evaluation splits).
    train_sentences_per_ref: int
    eval_sentences_per_ref: int


PRESETS: dict[str, RefShapesPreset] = {
    # ~650 train objects, ~150 objects (= sentences) per eval split, 96..160 px: a CPU job of minutes.
    "tiny": RefShapesPreset(
        side_range=(96, 160), side_step=16, objects_range=(3, 6),
        images={"train": 150, "val": 32, "testA": 40, "testB": 33},
        train_sentences_per_ref=3, eval_sentences_per_ref=1,
    ),
    # The CPU demo's evaluation: tiny's scenes, >= 400 sentences per evaluation split (training
    # streams fresh scenes, see ditsam.data.refshapes_stream; the train files are for reference).
    "demo": RefShapesPreset(
        side_range=(96, 160), side_step=16, objects_range=(3, 6),
        images={"train": 150, "val": 100, "testA": 110, "testB": 95},
        train_sentences_per_ref=3, eval_sentences_per_ref=1,
    ),
    "small": RefShapesPreset(
        side_range=(128, 256), side_step=16, objects_range=(3, 7),
        images={"train": 1500, "val": 150, "testA": 180, "testB": 180},
        train_sentences_per_ref=3, eval_sentences_per_ref=2,
    ),
    # GPU scale, about RefCOCO's size: ~44k train objects at 256..512 px (the reference model's
    # 512 input), ~2.8 GB of PNGs; use workers= to generate it in parallel.
    "large": RefShapesPreset(
        side_range=(256, 512), side_step=32, objects_range=(3, 8),
        images={"train": 8000, "val": 500, "testA": 500, "testB": 500},
        train_sentences_per_ref=3, eval_sentences_per_ref=3,
    ),
}

# ---------------------------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------------------------


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
        arms = np.array([[-a, -b], [a, -b], [a, -a], [b, -a], [b, a], [a, a], [a, b], [-a, b], [-a, a], [-b, a], [-b, -a], [-a, -a]])
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
    shape: str, colour: str, size: str, cx: float, cy: float, r: float, height: int, width: int, rng: np.random.Generator
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


def _sample_objects(
    rng: np.random.Generator, *, height: int, width: int, count: int, split: str
) -> list[SceneObject]:
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


# ---------------------------------------------------------------------------------------------
# Expressions: programs over a scene, evaluated in three-valued logic
# ---------------------------------------------------------------------------------------------

TRUE, FALSE, UNSURE = 1, 0, -1


@dataclasses.dataclass(frozen=True)
class NounPhrase:
    """An attribute filter; ``None`` fields are unconstrained."""

    size: str | None = None
    colour: str | None = None
    shape: str | None = None

    def matches(self, obj: SceneObject) -> bool:
        return (
            (self.size is None or obj.size == self.size)
            and (self.colour is None or obj.colour == self.colour)
            and (self.shape is None or obj.shape == self.shape)
        )

    @property
    def specificity(self) -> int:
        return sum(v is not None for v in (self.size, self.colour, self.shape))


@dataclasses.dataclass(frozen=True)
class Expression:
    """One referring program. Which fields matter depends on ``kind``:

    attribute: phrase. position: phrase, side, count (objects fitting the phrase). ordinal: phrase,
    side, rank (0-based, counted from side).
    middle: phrase, side ("left": along x, "top": along y). relation: phrase, relation, anchor
    (object index), anchor_phrase (the phrase naming the anchor alone).
    """

    kind: str
    phrase: NounPhrase
    side: str = ""
    rank: int = 0
    count: int = 0
    relation: str = ""
    anchor: int = -1
    anchor_phrase: NounPhrase | None = None


class _Geometry:
    """Positions of a scene's objects and the perceptual margin (pixels) comparisons must clear."""

    def __init__(self, objects: Sequence[SceneObject], *, height: int, width: int) -> None:
        self.objects = objects
        self.cx = [o.cx for o in objects]
        self.cy = [o.cy for o in objects]
        # Centres closer than this along an axis are not reliably "left of" one another to the eye.
        self.margin = max(6.0, 0.08 * min(height, width))
        # Per side, a key that grows away from that side.
        self._keys = {
            "left": self.cx, "right": [-v for v in self.cx], "top": self.cy, "bottom": [-v for v in self.cy],
        }

    def key(self, index: int, side: str) -> float:
        """Smaller = closer to ``side``."""
        return self._keys[side][index]

    def rank_truth(self, members: Sequence[int], target: int, side: str, rank: int) -> int:
        """Is ``target`` the ``rank``-th of ``members`` counted from ``side``? Three-valued."""
        keys = self._keys[side]
        k = keys[target]
        before = sum(1 for o in members if k - keys[o] >= self.margin)
        after = sum(1 for o in members if keys[o] - k >= self.margin)
        low, high = before, len(members) - 1 - after
        if low == high == rank:
            return TRUE
        return FALSE if not low <= rank <= high else UNSURE

    def relation_truth(self, target: int, anchor: int, relation: str, members: Sequence[int]) -> int:
        dx = self.cx[target] - self.cx[anchor]
        dy = self.cy[target] - self.cy[anchor]
        if relation == "closest":
            d = math.hypot(dx, dy)
            others = [math.hypot(self.cx[o] - self.cx[anchor], self.cy[o] - self.cy[anchor]) for o in members if o != target]
            if all(o >= 1.4 * d for o in others):
                return TRUE
            return FALSE if any(d >= 1.4 * o for o in others) else UNSURE
        along, across = {"left": (-dx, dy), "right": (dx, dy), "above": (-dy, dx), "below": (dy, dx)}[relation]
        if along >= max(self.margin, 0.5 * abs(across)):
            return TRUE
        return FALSE if along <= 0 else UNSURE


def evaluate(expression: Expression, geometry: _Geometry) -> list[int] | None:
    """Truth value (TRUE / FALSE / UNSURE) of ``expression`` for every object; None if it is
    ill-formed in this scene (e.g. an ordinal beyond the number of matching objects)."""
    objects = geometry.objects
    members = [i for i, o in enumerate(objects) if expression.phrase.matches(o)]
    truths = [FALSE] * len(objects)
    kind = expression.kind
    if kind == ATTRIBUTE:
        for i in members:
            truths[i] = TRUE
        return truths
    if kind in (POSITION, ORDINAL):
        if len(members) < 2 or expression.rank >= len(members) or len(members) != expression.count:
            return None
        for i in members:
            truths[i] = geometry.rank_truth(members, i, expression.side, expression.rank)
        return truths
    if kind == MIDDLE:
        if len(members) != 3:
            return None
        xs, ys = [geometry.cx[i] for i in members], [geometry.cy[i] for i in members]
        spread_x, spread_y = max(xs) - min(xs), max(ys) - min(ys)
        # "middle" names an axis only when the three lie roughly along it.
        along, across = (spread_x, spread_y) if expression.side == "left" else (spread_y, spread_x)
        if along < 2 * across:
            return None
        for i in members:
            truths[i] = geometry.rank_truth(members, i, expression.side, 1)
        return truths
    if kind == RELATION:
        assert expression.anchor_phrase is not None
        anchors = [i for i, o in enumerate(objects) if expression.anchor_phrase.matches(o)]
        if anchors != [expression.anchor]:
            return None
        members = [i for i in members if i != expression.anchor]
        if len(members) < 2:
            return None
        for i in members:
            truths[i] = geometry.relation_truth(i, expression.anchor, expression.relation, members)
        return truths
    raise ValueError(f"unknown expression kind {kind!r}")


def referent(truths: Sequence[int] | None) -> int | None:
    """Index of the only object the expression is true for, if every other one is clearly false."""
    if truths is None:
        return None
    hits = [i for i, t in enumerate(truths) if t == TRUE]
    if len(hits) != 1 or any(t == UNSURE for t in truths):
        return None
    return hits[0]


def _noun_phrases(obj: SceneObject) -> list[NounPhrase]:
    return [
        NounPhrase(size=s, colour=c, shape=h)
        for s in (None, obj.size) for c in (None, obj.colour) for h in (None, obj.shape)
    ]


def _candidate_expressions(objects: Sequence[SceneObject]) -> Iterator[Expression]:
    """Every expression worth evaluating in the scene (spatial ones only where the noun phrase
    alone is ambiguous, so that the spatial words are needed)."""
    phrases = list(dict.fromkeys(p for o in objects for p in _noun_phrases(o)))
    counts = {p: sum(p.matches(o) for o in objects) for p in phrases}
    for phrase in phrases:
        n = counts[phrase]
        if phrase.specificity and n == 1:
            yield Expression(kind=ATTRIBUTE, phrase=phrase)
        if n < 2:
            continue
        for side in _SIDE_WORDS:
            yield Expression(kind=POSITION, phrase=phrase, side=side, count=n)
            for rank in range(1, min(n, len(_ORDINAL_WORDS))):
                yield Expression(kind=ORDINAL, phrase=phrase, side=side, rank=rank, count=n)
        if n == 3:
            for side in ("left", "top"):
                yield Expression(kind=MIDDLE, phrase=phrase, side=side)
    # Anchors: named by their shortest unique phrase that includes the shape.
    for anchor, obj in enumerate(objects):
        unique = [p for p in _noun_phrases(obj) if p.shape is not None and counts[p] == 1]
        if not unique:
            continue
        anchor_phrase = min(unique, key=lambda p: (p.specificity, p.size is not None))
        for phrase in phrases:
            if counts[phrase] - int(phrase.matches(obj)) < 2:
                continue
            for relation in _RELATION_TEMPLATES:
                yield Expression(kind=RELATION, phrase=phrase, relation=relation, anchor=anchor, anchor_phrase=anchor_phrase)


def find_expressions(objects: Sequence[SceneObject], *, height: int, width: int) -> dict[int, list[Expression]]:
    """Object index -> every candidate expression that provably refers to it alone."""
    geometry = _Geometry(objects, height=height, width=width)
    found: dict[int, list[Expression]] = {}
    for expression in _candidate_expressions(objects):
        index = referent(evaluate(expression, geometry))
        if index is not None:
            found.setdefault(index, []).append(expression)
    return found


def _choice(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def render_phrase(phrase: NounPhrase, rng: np.random.Generator) -> str:
    """Words of a noun phrase, e.g. "small red triangle", "big one", "object"."""
    words = []
    if phrase.size is not None:
        words.append(_choice(rng, _SIZE_WORDS[phrase.size]))
    if phrase.colour is not None:
        words.append(phrase.colour)
    if phrase.shape is not None:
        words.append(phrase.shape)
    else:
        words.append(_choice(rng, _GENERIC_NOUNS + (("one",) if words else ())))
    return " ".join(words)


def render_expression(expression: Expression, rng: np.random.Generator) -> str:
    """One phrasing of ``expression`` (lower case, words separated by single spaces)."""
    np_text = render_phrase(expression.phrase, rng)
    kind = expression.kind
    if kind == ATTRIBUTE:
        template = _choice(rng, _ATTRIBUTE_TEMPLATES)
    elif kind == POSITION:
        pair = _PAIR_TEMPLATES[expression.side] if expression.count == 2 else ()
        template = _choice(rng, _POSITION_TEMPLATES[expression.side] + pair)
    elif kind == ORDINAL:
        template = _choice(rng, _ORDINAL_TEMPLATES).replace("{ord}", _ORDINAL_WORDS[expression.rank])
        template = template.replace("{side}", _SIDE_WORDS[expression.side])
    elif kind == MIDDLE:
        template = _choice(rng, _MIDDLE_TEMPLATES)
    else:
        assert expression.anchor_phrase is not None
        template = _choice(rng, _RELATION_TEMPLATES[expression.relation])
        template = template.replace("{anchor}", render_phrase(expression.anchor_phrase, rng))
    return template.replace("{np}", np_text)


def _pick_sentences(
    expressions: Sequence[Expression], *, kinds: Sequence[str], limit: int, rng: np.random.Generator
) -> list[tuple[str, str]]:
    """Up to ``limit`` distinct (sentence, kind) pairs, cycling over kinds so that one object's
    sentences differ in kind where possible."""
    by_kind = {k: [e for e in expressions if e.kind == k] for k in kinds}
    available = [k for k in kinds if by_kind[k]]
    if not available:
        return []
    order = [available[i] for i in rng.permutation(len(available))]
    chosen: list[tuple[str, str]] = []
    seen: set[str] = set()
    for attempt in range(limit * 6):
        if len(chosen) == limit:
            break
        kind = order[attempt % len(order)]
        options = by_kind[kind]
        sentence = render_expression(options[int(rng.integers(len(options)))], rng)
        if sentence not in seen:
            seen.add(sentence)
            chosen.append((sentence, kind))
    return chosen


# ---------------------------------------------------------------------------------------------
# Generation and REFER output
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Scene:
    """A generated scene: its objects and its referring expressions with their targets."""

    width: int
    height: int
    objects: list[SceneObject]
    # Per ref: (indices of the referred objects, [(sentence, kind), ...]). RefShapes refers to exactly
    # one object; its generalized variant (ditsam.data.grefshapes) also to several or none (empty).
    refs: list[tuple[tuple[int, ...], list[tuple[str, str]]]]


def sentence_limit(preset: RefShapesPreset, split: str) -> int:
    """At most this many phrasings per ref in ``split``."""
    return preset.train_sentences_per_ref if split == "train" else preset.eval_sentences_per_ref


def sample_scene_objects(rng: np.random.Generator, *, preset: RefShapesPreset, split: str) -> tuple[int, int, list[SceneObject]]:
    """(width, height, objects) of a new layout with at least two objects."""
    sides = np.arange(preset.side_range[0], preset.side_range[1] + 1, preset.side_step)
    while True:
        width, height = (int(v) for v in rng.choice(sides, size=2))
        count = int(rng.integers(preset.objects_range[0], preset.objects_range[1] + 1))
        objects = _sample_objects(rng, height=height, width=width, count=count, split=split)
        if len(objects) >= 2:
            return width, height, objects


def single_target_refs(
    objects: Sequence[SceneObject], *, height: int, width: int, split: str, limit: int, rng: np.random.Generator
) -> list[tuple[tuple[int, ...], list[tuple[str, str]]]]:
    """One ref per object that some expression of ``split``'s kinds provably names alone."""
    expressions = find_expressions(objects, height=height, width=width)
    refs = []
    for index in sorted(expressions):
        sentences = _pick_sentences(expressions[index], kinds=_SPLIT_KINDS[split], limit=limit, rng=rng)
        if sentences:
            refs.append(((index,), sentences))
    return refs


def _generate_scene(rng: np.random.Generator, *, preset: RefShapesPreset, split: str) -> Scene:
    while True:  # redraw the (rare) scenes where nothing can be referred to
        width, height, objects = sample_scene_objects(rng, preset=preset, split=split)
        refs = single_target_refs(objects, height=height, width=width, split=split,
                                  limit=sentence_limit(preset, split), rng=rng)
        if refs:
            return Scene(width, height, objects, refs)


def _segmentation(obj: SceneObject) -> list[list[float]] | dict:
    if obj.polygon is not None:
        return [obj.polygon]
    rle = mask_utils.encode(np.asfortranarray(obj.mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


@dataclasses.dataclass(frozen=True)
class _ImageJob:
    seed: int
    split: str
    image_index: int
    image_id: int
    preset_name: str
    image_dir: str
    # File name prefix of the written PNGs (the dataset's name).
    prefix: str = DATASET_NAME


@dataclasses.dataclass
class _ImageRecord:
    """What one image contributes to the annotation files (masks already encoded)."""

    job: _ImageJob
    file_name: str
    width: int
    height: int
    objects: list[dict]  # shape, colour, size, bbox (x, y, w, h), area, segmentation
    refs: list[tuple[tuple[int, ...], list[tuple[str, str]]]]


def draw_scene(rng: np.random.Generator, *, preset: str, split: str) -> tuple[Scene, np.ndarray]:
    """A new scene of ``split``'s kind drawn from ``rng``, and its pixels, uint8 (H, W, 3)."""
    scene = _generate_scene(rng, preset=PRESETS[preset], split=split)
    return scene, render_scene(rng, scene)


def render_scene(rng: np.random.Generator, scene: Scene) -> np.ndarray:
    """The pixels of ``scene``, uint8 (H, W, 3), drawn with ``rng``."""
    return _render(rng, scene.height, scene.width, scene.objects)


def scene_rng(*, seed: int, split: str, image_index: int) -> np.random.Generator:
    """The generator of image ``image_index`` of ``split``: one per image, so files do not depend on workers."""
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), image_index]))


def build_scene(*, seed: int, preset: str, split: str, image_index: int) -> tuple[Scene, np.ndarray]:
    """Re-create image ``image_index`` of ``split`` exactly as :func:`generate_refshapes` draws
    it: the scene (objects with their masks, refs with their sentences) and its pixels, uint8
    (H, W, 3). For tests and debugging."""
    return draw_scene(scene_rng(seed=seed, split=split, image_index=image_index), preset=preset, split=split)


def image_record(job: _ImageJob, scene: Scene, pixels: np.ndarray) -> _ImageRecord:
    """Save the scene's image under ``job.image_dir`` and encode its objects for the annotation files."""
    file_name = f"{job.prefix}_{job.image_id:06d}.png"
    # PIL writes no timestamp into PNGs: equal pixels give equal bytes.
    Image.fromarray(pixels).save(Path(job.image_dir) / file_name, format="PNG", compress_level=6)
    objects = []
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.bbox
        objects.append({
            "shape": obj.shape, "colour": obj.colour, "size": obj.size,
            "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
            "area": float(obj.mask.sum()), "segmentation": _segmentation(obj),
        })
    return _ImageRecord(job, file_name, scene.width, scene.height, objects, scene.refs)


def _build_image(job: _ImageJob) -> _ImageRecord:
    """Generate, render and save one RefShapes image. A process-pool task: depends on ``job`` alone."""
    scene, pixels = build_scene(seed=job.seed, preset=job.preset_name, split=job.split, image_index=job.image_index)
    return image_record(job, scene, pixels)


def _resolve_counts(preset: RefShapesPreset, num_images: Mapping[str, int] | None) -> dict[str, int]:
    counts = dict(preset.images)
    for split, n in (num_images or {}).items():
        if split not in SPLITS:
            raise ValueError(f"unknown RefShapes split {split!r}; splits are {', '.join(SPLITS)}")
        if n < 0:
            raise ValueError(f"num_images[{split!r}] must be >= 0, got {n}")
        counts[split] = int(n)
    return counts


@dataclasses.dataclass(frozen=True)
class DatasetFiles:
    """Where a generated dataset's files go under its root."""

    refs: Path
    instances: Path
    scenes: Path
    images: Path


def dataset_files(out_dir: str | Path, *, dataset: str = DATASET_NAME, refs_name: str = f"refs({SPLIT_BY}).p") -> DatasetFiles:
    """The files of generated ``dataset`` under ``out_dir``: ``<dataset>/<refs_name>``,
    ``<dataset>/instances.json``, ``<dataset>/scenes.json`` and the ``images`` folder."""
    out = Path(out_dir)
    return DatasetFiles(out / dataset / refs_name, out / dataset / "instances.json", out / dataset / "scenes.json", out / "images")


def refshapes_files(out_dir: str | Path) -> tuple[Path, Path, Path, Path]:
    """(refs pickle, instances.json, scenes.json, images directory) under ``out_dir``."""
    files = dataset_files(out_dir)
    return files.refs, files.instances, files.scenes, files.images


def _prepare_output(out_dir: str | Path, files: DatasetFiles, *, prefix: str, overwrite: bool) -> None:
    old = [p for p in (files.refs, files.instances, files.scenes) if p.exists()]
    old += sorted(files.images.glob(f"{prefix}_*.png")) if files.images.is_dir() else []
    if old and not overwrite:
        raise FileExistsError(f"{out_dir} already holds generated files ({old[0]}); pass overwrite=True to replace them")
    for path in old:
        path.unlink()
    files.refs.parent.mkdir(parents=True, exist_ok=True)
    files.images.mkdir(parents=True, exist_ok=True)


def _run_jobs(jobs: Sequence[_ImageJob], *, build: Callable[[_ImageJob], _ImageRecord], workers: int,
              progress: bool) -> Iterator[_ImageRecord]:
    """Records in job order, whatever the number of worker processes (``build`` must be a module-level function)."""
    bar = _progress(len(jobs), enabled=progress)
    try:
        if workers <= 1:
            for job in jobs:
                yield build(job)
                bar.update(1)
        else:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(max_workers=workers) as pool:
                for record in pool.map(build, jobs, chunksize=8):
                    yield record
                    bar.update(1)
    finally:
        bar.close()


def write_generated(
    out_dir: str | Path,
    *,
    files: DatasetFiles,
    build: Callable[[_ImageJob], _ImageRecord],
    ref_fields: Callable[[list[int], list[int]], dict],
    seed: int,
    preset: str,
    num_images: Mapping[str, int] | None,
    workers: int,
    overwrite: bool,
    progress: bool,
    prefix: str = DATASET_NAME,
    description: str = "RefShapes synthetic referring segmentation",
    version: int = GENERATOR_VERSION,
) -> list[dict]:
    """Generate every image with ``build``, write instances.json and scenes.json, and return the ref
    records (without their target fields, which ``ref_fields(ann_ids, category_ids)`` gives); the
    caller writes the refs file in its format."""
    if preset not in PRESETS:
        raise ValueError(f"unknown RefShapes preset {preset!r}; presets are {', '.join(PRESETS)}")
    counts = _resolve_counts(PRESETS[preset], num_images)
    _prepare_output(out_dir, files, prefix=prefix, overwrite=overwrite)
    jobs, image_id = [], 0
    for split in SPLITS:
        for index in range(counts[split]):
            image_id += 1
            jobs.append(_ImageJob(seed, split, index, image_id, preset, str(files.images), prefix))

    images, annotations, refs, scene_images = [], [], [], []
    sentence_kinds: dict[str, str] = {}
    ann_id = ref_id = sent_id = 0
    for record in _run_jobs(jobs, build=build, workers=workers, progress=progress):
        image_id, split = record.job.image_id, record.job.split
        images.append({"id": image_id, "file_name": record.file_name, "height": record.height, "width": record.width})
        ann_ids, scene_objects = [], []
        for obj in record.objects:
            ann_id += 1
            ann_ids.append(ann_id)
            annotations.append({
                "id": ann_id, "image_id": image_id, "segmentation": obj["segmentation"], "bbox": obj["bbox"],
                "area": obj["area"], "iscrowd": 0, "category_id": SHAPES.index(obj["shape"]) + 1,
            })
            scene_objects.append({"ann_id": ann_id, "shape": obj["shape"], "colour": obj["colour"], "size": obj["size"]})
        scene_images.append({"image_id": image_id, "split": split, "objects": scene_objects})
        for targets, sentences in record.refs:
            ref_id += 1
            sent_dicts = []
            for sentence, kind in sentences:
                sent_id += 1
                sent_dicts.append({"raw": sentence, "sent": sentence, "sent_id": sent_id, "tokens": sentence.split()})
                sentence_kinds[str(sent_id)] = kind
            categories = [SHAPES.index(record.objects[i]["shape"]) + 1 for i in targets]
            refs.append({
                "ref_id": ref_id, **ref_fields([ann_ids[i] for i in targets], categories), "image_id": image_id,
                "split": split, "file_name": record.file_name, "sent_ids": [s["sent_id"] for s in sent_dicts],
                "sentences": sent_dicts,
            })

    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPES)]
    instances = {
        "info": {"description": description, "seed": seed, "preset": preset},
        "images": images, "annotations": annotations, "categories": categories,
    }
    files.instances.write_text(json.dumps(instances), encoding="utf-8")
    scenes = {
        "seed": seed, "preset": preset, "version": version, "splits": split_counts(refs),
        "images": scene_images, "sentence_kinds": sentence_kinds,
    }
    files.scenes.write_text(json.dumps(scenes), encoding="utf-8")
    return refs


def _single_target_fields(ann_ids: list[int], category_ids: list[int]) -> dict:
    return {"ann_id": ann_ids[0], "category_id": category_ids[0]}


def generate_refshapes(
    out_dir: str | Path,
    *,
    seed: int = 0,
    preset: str = "tiny",
    num_images: Mapping[str, int] | None = None,
    workers: int = 0,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write RefShapes under ``out_dir`` and return ``out_dir`` (the ``root`` for ReferDataset).

    ``num_images`` overrides the preset's images per split (e.g. ``{"train": 4}`` in tests).
    ``workers`` > 1 renders images in that many processes; the files are the same either way.
    Existing RefShapes files raise ``FileExistsError`` unless ``overwrite``; then the old
    annotation files and ``refshapes_*.png`` images are removed first, nothing else.
    """
    files = dataset_files(out_dir)
    refs = write_generated(
        out_dir, files=files, build=_build_image, ref_fields=_single_target_fields, seed=seed, preset=preset,
        num_images=num_images, workers=workers, overwrite=overwrite, progress=progress,
    )
    with files.refs.open("wb") as handle:
        # Pickle memoises by object identity, which differs between in-process and pooled runs;
        # a JSON round trip gives every run the same object graph, hence the same bytes.
        pickle.dump(json.loads(json.dumps(refs)), handle, protocol=4)
    log.info("wrote RefShapes (%s, seed %d) to %s", preset, seed, out_dir)
    return Path(out_dir)


def split_counts(refs: Sequence[Mapping]) -> dict[str, dict[str, int]]:
    """Per split: images, refs (objects) and sentences, from a list of REFER ref dicts."""
    counts: dict[str, dict[str, int]] = {}
    images: dict[str, set[int]] = {}
    for ref in refs:
        entry = counts.setdefault(ref["split"], {"images": 0, "refs": 0, "sentences": 0})
        entry["refs"] += 1
        entry["sentences"] += len(ref["sentences"])
        images.setdefault(ref["split"], set()).add(ref["image_id"])
    for split, ids in images.items():
        counts[split]["images"] = len(ids)
    return {split: counts[split] for split in SPLITS if split in counts}


def read_split_counts(out_dir: str | Path, *, dataset: str = DATASET_NAME) -> dict[str, dict[str, int]]:
    """Per-split counts of generated ``dataset`` (refshapes, grefshapes), read back from its scenes.json."""
    return json.loads(dataset_files(out_dir, dataset=dataset).scenes.read_text(encoding="utf-8"))["splits"]


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, *, enabled: bool):
    if not enabled:
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(total=total, desc="generating", unit="img")
