"""What RefShapes scenes and sentences are made of: shapes, colours, sizes, expression kinds, the
phrase templates (every word a sentence can contain) and the size presets.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

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
    "left": (
        "the leftmost {np}",
        "leftmost {np}",
        "the {np} furthest to the left",
        "the {np} on the far left",
        "the first {np} from the left",
    ),
    "right": (
        "the rightmost {np}",
        "rightmost {np}",
        "the {np} furthest to the right",
        "the {np} on the far right",
        "the first {np} from the right",
    ),
    "top": (
        "the topmost {np}",
        "the highest {np}",
        "the {np} nearest the top",
        "the {np} at the very top",
        "the first {np} from the top",
    ),
    "bottom": (
        "the bottommost {np}",
        "the lowest {np}",
        "the {np} nearest the bottom",
        "the {np} at the very bottom",
        "the first {np} from the bottom",
    ),
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
    "closest": (
        "the {np} closest to the {anchor}",
        "the {np} nearest to the {anchor}",
        "the {np} nearest the {anchor}",
    ),
}


def _vocabulary() -> tuple[str, ...]:
    templates = [
        *_ATTRIBUTE_TEMPLATES,
        *_ORDINAL_TEMPLATES,
        *_MIDDLE_TEMPLATES,
        *(
            t
            for table in (_POSITION_TEMPLATES, _PAIR_TEMPLATES, _RELATION_TEMPLATES)
            for ts in table.values()
            for t in ts
        ),
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
    # Images per split, by split name (train, val, testA, testB).
    images: Mapping[str, int]
    # At most this many sentences per referred object (train / evaluation splits).
    train_sentences_per_ref: int
    eval_sentences_per_ref: int


PRESETS: dict[str, RefShapesPreset] = {
    # ~650 train objects, ~150 objects (= sentences) per eval split, 96..160 px: a CPU job of minutes.
    "tiny": RefShapesPreset(
        side_range=(96, 160),
        side_step=16,
        objects_range=(3, 6),
        images={"train": 150, "val": 32, "testA": 40, "testB": 33},
        train_sentences_per_ref=3,
        eval_sentences_per_ref=1,
    ),
    # The CPU demo's evaluation: tiny's scenes, >= 400 sentences per evaluation split (training
    # streams fresh scenes, see ditsam.data.refshapes_stream; the train files are for reference).
    "demo": RefShapesPreset(
        side_range=(96, 160),
        side_step=16,
        objects_range=(3, 6),
        images={"train": 150, "val": 100, "testA": 110, "testB": 95},
        train_sentences_per_ref=3,
        eval_sentences_per_ref=1,
    ),
    "small": RefShapesPreset(
        side_range=(128, 256),
        side_step=16,
        objects_range=(3, 7),
        images={"train": 1500, "val": 150, "testA": 180, "testB": 180},
        train_sentences_per_ref=3,
        eval_sentences_per_ref=2,
    ),
    # GPU scale, about RefCOCO's size: ~44k train objects at 256..512 px (the reference model's
    # 512 input), ~2.8 GB of PNGs; use workers= to generate it in parallel.
    "large": RefShapesPreset(
        side_range=(256, 512),
        side_step=32,
        objects_range=(3, 8),
        images={"train": 8000, "val": 500, "testA": 500, "testB": 500},
        train_sentences_per_ref=3,
        eval_sentences_per_ref=3,
    ),
}
