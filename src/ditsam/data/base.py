"""What all readers share: the referred-object record, the train/eval indexing, split checks.

A reader parses its annotation files once into :class:`RefObject` records (text and ids only,
nothing decoded) and implements :meth:`RefDatasetBase._load_mask`. Items are then

- ``mode="train"``: one per referred object, with all its sentences (one epoch = every object
  once, the transform picks a random sentence), as the reference training does;
- ``mode="eval"``: one per sentence, which is how the published scores count samples.
"""

from __future__ import annotations

import dataclasses
import math
import os
from numbers import Real
from typing import Any, Iterable, Iterator, Literal, Mapping, Sequence

import numpy as np

from ditsam.data.sample import DataError, RefSample, accepted_sizes, short_repr
from ditsam.data.segmentation import bbox_from_mask
from ditsam.schema import is_integer

Mode = Literal["train", "eval"]
MODES: tuple[str, ...] = ("train", "eval")

# Conventional order for listing splits; others follow alphabetically.
_SPLIT_ORDER = ("train", "val", "test", "testA", "testB", "testC")


@dataclasses.dataclass(frozen=True)
class RefObject:
    """One referred object as read from the annotations; ``mask_source`` is reader-specific."""

    image_path: str
    sentences: tuple[str, ...]
    sent_ids: tuple[int, ...]
    ref_id: int
    ann_id: int
    image_id: int
    category_id: int
    bbox: tuple[float, float, float, float] | None  # None: computed from the mask
    mask_source: Any
    # Generalized RIS: the sentences name no object in the image (the mask is empty).
    no_target: bool = False


def check_mode(mode: str) -> Mode:
    """Return ``mode`` if it is ``"train"`` or ``"eval"``, else raise :class:`DataError`."""
    if mode not in MODES:
        raise DataError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    return mode  # type: ignore[return-value]


def sorted_splits(splits: Iterable[str]) -> list[str]:
    """Distinct split names, conventional ones first (train, val, test, testA, testB)."""
    rank = {name: i for i, name in enumerate(_SPLIT_ORDER)}
    return sorted(set(splits), key=lambda name: (rank.get(name, len(rank)), name))


def check_split(split: str, available: Iterable[str], *, source: str) -> None:
    """Raise :class:`DataError` listing the available splits when ``split`` is not one of them."""
    names = sorted_splits(available)
    if split not in names:
        raise DataError(f"unknown split {split!r} in {source}; available splits: {', '.join(names) or '(none)'}")


def clean_sentence(text: str) -> str:
    """Collapse runs of whitespace (files mix tabs, newlines and double spaces)."""
    return " ".join(text.split())


_REQUIRED = object()


def integer_field(record: Mapping[str, Any], key: str, *, where: str, default: Any = _REQUIRED) -> int:
    """``record[key]`` if it is an integer (not a bool), ``default`` if the key is absent and a default is
    given; else :class:`DataError` naming ``where``, the field and the value."""
    if key not in record:
        if default is _REQUIRED:
            raise DataError(f"{where}: missing field {key!r}; expected an integer")
        return default
    value = record[key]
    if not is_integer(value):
        raise DataError(f"{where}: field {key!r} is {short_repr(value)}; expected an integer")
    return value


def bbox_field(value: Any, *, where: str) -> tuple[float, float, float, float]:
    """A box ``[x, y, w, h]`` of finite numbers with ``w, h >= 0`` as floats, else :class:`DataError` naming
    ``where`` and the value (a NaN or negative box would reach the box prompts unnoticed)."""
    box = [_finite(v) for v in value] if isinstance(value, (list, tuple)) else []
    if len(box) != 4 or None in box or box[2] < 0 or box[3] < 0:
        raise DataError(f"{where}: bbox {short_repr(value)}; expected [x, y, w, h], finite numbers with w, h >= 0")
    return tuple(box)  # type: ignore[return-value]


def _finite(value: Any) -> float | None:
    """``value`` as a float if it is a finite real number (not a bool), else None."""
    if not isinstance(value, Real) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond float's range
        return None
    return number if math.isfinite(number) else None


def mask_shape_problem(mask: np.ndarray, sizes: Sequence[tuple[int, int]], *, what: str) -> str | None:
    """What is wrong with a decoded (H, W) ``mask`` of an image of accepted (W, H) ``sizes``: another
    size, or no object pixel at all; None when it is fine. ``what`` names the mask in the message."""
    height, width = mask.shape[:2]
    if (width, height) not in sizes:
        return f"{what} is {width}x{height} (WxH) but the image is {sizes[0][0]}x{sizes[0][1]}"
    if not mask.any():
        return f"{what} is empty (no object pixel); expected the referred object's pixels"
    return None


class RefDatasetBase:
    """Map-style dataset (``len`` / ``[i]``) of :class:`RefSample` over a list of objects."""

    # True for readers whose sentences may name several objects or none (score with GRESMetrics).
    generalized = False

    def __init__(self, *, objects: Sequence[RefObject], split: str, mode: str) -> None:
        self.mode: Mode = check_mode(mode)
        self.split = split
        self._objects = list(objects)
        self._build_index()

    def _build_index(self) -> None:
        if self.mode == "train":
            self._index: list[tuple[int, int]] = [(i, -1) for i in range(len(self._objects))]
        else:
            self._index = [(i, s) for i, obj in enumerate(self._objects) for s in range(len(obj.sentences))]

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, index: int) -> RefSample:
        # IndexError (not DataError) out of range: iteration protocols rely on it.
        object_index, sentence_index = self._index[index]
        obj = self._objects[object_index]
        if not os.path.isfile(obj.image_path):
            raise DataError(f"image file not found: {obj.image_path} (ref {obj.ref_id})")
        mask = self._load_mask(obj)
        if sentence_index < 0:
            sentences, sent_ids = list(obj.sentences), list(obj.sent_ids)
        else:
            sentences, sent_ids = [obj.sentences[sentence_index]], [obj.sent_ids[sentence_index]]
        return RefSample(
            image_path=obj.image_path,
            sentences=sentences,
            mask=mask,
            bbox=obj.bbox if obj.bbox is not None else bbox_from_mask(mask),
            ref_id=obj.ref_id,
            ann_id=obj.ann_id,
            image_id=obj.image_id,
            sent_ids=sent_ids,
            category_id=obj.category_id,
            no_target=obj.no_target,
        )

    def _load_mask(self, obj: RefObject) -> np.ndarray:
        """The object's bool (H, W) mask at original resolution."""
        raise NotImplementedError

    # -- checking the data before it is used -------------------------------------------------------
    def validate(self, *, progress: bool = False) -> list[tuple[int, str]]:
        """Every bad object of the split, as (object index, message naming the file and the record).

        Checked: at least one sentence and no empty one; the image file exists and its header
        decodes (no pixel is decoded); the mask fits the image and is not empty (a mask whose
        annotation lies outside the image is empty). Readers add what their format can get wrong
        (:meth:`_mask_problem`). ``progress`` shows a tqdm bar.
        """
        from tqdm.auto import tqdm

        problems = []
        headers: dict[str, list[tuple[int, int]] | DataError] = {}  # objects share images: one header read each
        objects = tqdm(self._objects, desc=f"checking {self.split}", unit="object", disable=not progress, leave=False)
        for index, obj in enumerate(objects):
            problem = self._object_problem(obj, headers)
            if problem is not None:
                problems.append((index, f"{self._where(obj)}: {problem}"))
        return problems

    def drop_objects(self, indices: Iterable[int]) -> None:
        """Remove the objects at ``indices`` (as :meth:`validate` numbers them) from the split."""
        dropped = set(indices)
        self._objects = [obj for index, obj in enumerate(self._objects) if index not in dropped]
        self._build_index()

    def _object_problem(self, obj: RefObject, headers: dict[str, list[tuple[int, int]] | DataError]) -> str | None:
        if not obj.sentences:
            return "no sentence; expected at least one"
        empty = [str(position) for position, sentence in enumerate(obj.sentences) if not sentence.strip()]
        if empty:
            return f"sentence #{', #'.join(empty)} is empty; expected non-empty text"
        if obj.image_path not in headers:
            try:
                headers[obj.image_path] = accepted_sizes(obj.image_path)
            except DataError as error:
                headers[obj.image_path] = error
        sizes = headers[obj.image_path]
        if isinstance(sizes, DataError):
            return str(sizes)
        return self._mask_problem(obj, sizes)

    def _where(self, obj: RefObject) -> str:
        """The file and record of ``obj`` in messages."""
        return f"{self.split} ref {obj.ref_id}"

    def _mask_problem(self, obj: RefObject, sizes: list[tuple[int, int]]) -> str | None:
        """What is wrong with the mask of ``obj`` given the image's accepted (W, H) ``sizes``, or None."""
        raise NotImplementedError

    @property
    def num_objects(self) -> int:
        """Referred objects in this split."""
        return len(self._objects)

    @property
    def num_sentences(self) -> int:
        """Sentences in this split (= eval-mode length)."""
        return sum(len(obj.sentences) for obj in self._objects)

    @property
    def num_images(self) -> int:
        """Distinct images in this split."""
        return len({obj.image_path for obj in self._objects})

    def iter_sentences(self) -> Iterator[str]:
        """Every sentence of the split, without reading images or masks (for statistics)."""
        for obj in self._objects:
            yield from obj.sentences

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(split={self.split!r}, mode={self.mode!r}, items={len(self)}, "
            f"objects={self.num_objects}, sentences={self.num_sentences})"
        )
