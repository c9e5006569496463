"""Reader and validator for users' own data: records of ``docs/record.schema.json`` (:mod:`ditsam.data.records`),
one JSON object per line (JSONL), a JSON array of them (``ditsam predict``'s ``predictions.json``) or a
``ditsam predict --out`` folder.

Each record describes one referred object::

    {"image": "images/cat.jpg", "sentences": ["the cat on the left", "left cat"],
     "mask": "masks/cat_left.png", "split": "train", "id": 7}
    {"image": "/data/dog.jpg", "sentence": "the dog", "segmentation": [[10, 10, 50, 10, 30, 40]]}

Fields:

- ``image`` (required): path of the image, relative to the JSONL file's folder or absolute.
- ``sentences`` (list of non-empty strings) or ``sentence`` (one string): exactly one of the two.
- ``mask`` or ``segmentation``: exactly one of the two.
  ``mask`` is a PNG of the image's size (relative or absolute path); nonzero pixels are the
  object (the palette index for palette PNGs, any colour channel for RGB(A) PNGs).
  ``segmentation`` is COCO-style: a polygon list ``[[x0, y0, x1, y1, ...], ...]`` or an RLE
  dict ``{"size": [height, width], "counts": ...}`` (compressed string or run-length list).
  Coordinates refer to the image as viewers show it, i.e. after its EXIF orientation; a mask or
  RLE of the stored (un-rotated) size is accepted too.
- ``split`` (optional, default ``"train"``): any name; ``CustomDataset(split=...)`` selects one.
- ``id`` (optional integer or string, default: the line number): unique over the file; an integer is
  used as ref_id and ann_id, a string (``ditsam predict`` copies its input's ids) gets the line number.
- ``category_id`` (optional integer, default 0).
- a prediction's fields (``score``, ``bbox``, ``area``, ``present``, ``presence``, ``masks``,
  ``mask_file``, ``overlay_file``; see :mod:`ditsam.data.records`): checked, not trained on. A record
  saying ``"present": false`` (nothing found: an empty mask) is left out, and so is one whose ``score``
  is below ``min_score`` (``data.min_score``): pseudo-labels that train are the confident ones.

Blank lines are ignored; any other key is an error (it is most likely a typo). ``image_id`` is
the position of the image among the file's distinct images; ``sent_ids`` number the sentences
in file order. Run ``ditsam data validate FILE`` (:func:`validate_custom`) to list every
problem of a file at once. "Line" is a record's position in a JSON array file.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from ditsam.data.base import RefDatasetBase, RefObject, check_split, clean_sentence, mask_shape_problem, sorted_splits
from ditsam.data.records import RECORD_FIELDS, confident, label_problems, record_values, records_file, short
from ditsam.data.sample import IMAGE_READ_ERRORS, DataError, PathLike, accepted_sizes, load_image
from ditsam.data.segmentation import decode_segmentation, read_mask_png
from ditsam.schema import is_integer, key_problems

logger = logging.getLogger(__name__)

FIELDS = RECORD_FIELDS
DEFAULT_SPLIT = "train"


@dataclasses.dataclass(frozen=True)
class CustomRecord:
    """One parsed record; paths are resolved against the file's folder. ``where`` names it (``file:line``,
    or ``file: record N`` in a JSON array); ``score`` / ``present`` are a prediction's (None / True when the
    record has none)."""

    line: int
    image: Path
    sentences: tuple[str, ...]
    mask: Path | None
    segmentation: Any
    split: str
    id: int
    category_id: int
    where: str = ""
    score: float | None = None
    present: bool = True


def read_custom(path: PathLike) -> tuple[list[CustomRecord], list[str]]:
    """Parse a records file (JSONL, a JSON array, or a ``ditsam predict --out`` folder: see
    :func:`ditsam.data.records.records_file`) without touching images or masks.

    Returns the records of the well-formed lines and one message per problem found in the
    others (bad JSON, missing / unknown / ill-typed fields, duplicate ids).
    """
    path = records_file(path)
    records: list[CustomRecord] = []
    problems: list[str] = []
    seen_ids: dict[Any, int] = {}
    for line, where, obj, problem in _values(path, problems):
        if problem:
            problems.append(f"{where}: {problem}")
            continue
        record, record_problems = _parse(obj, line=line, base=path.parent, where=where)
        problems.extend(record_problems)
        if record is None:
            continue
        key = obj.get("id", record.id)
        if (type(key), key) in seen_ids:
            problems.append(
                f"{where}: field 'id': {short(key)} is already used on line {seen_ids[(type(key), key)]}; "
                "expected a unique integer (or string) per line"
            )
            continue
        seen_ids[(type(key), key)] = line
        records.append(record)
    if not records and not problems:
        problems.append(f"{path}: no records; expected one JSON object per line")
    return records, problems


def validate_custom(path: PathLike, *, check_pixels: bool = True, min_score: float | None = None) -> list[str]:
    """Every problem of a custom records file, each naming line, field, value and expectation.

    Beyond :func:`read_custom` this checks, for the records training reads (see ``min_score`` and
    ``present`` in the module docstring), that image and mask files exist and can be read, that each
    mask (or RLE) has the image's size and that polygons are well formed.
    ``check_pixels=False`` reads only file headers (fast, but misses truncated files).
    """
    records, problems = read_custom(path)
    kept, _, _ = confident(records, min_score=min_score)
    for record in kept:
        problems.extend(_file_problems(record, where=record.where, check_pixels=check_pixels))
    return problems


def available_splits(path: PathLike) -> list[str]:
    """Split names used in a custom JSONL file (well-formed lines only)."""
    records, _ = read_custom(path)
    return sorted_splits(record.split for record in records)


class CustomDataset(RefDatasetBase):
    """One split of a custom JSONL file; items are :class:`~ditsam.data.sample.RefSample`.

    Args:
        path: the JSONL file (format in this module's docstring).
        split: a ``split`` value used in the file; unknown names raise listing the used ones.
        mode: ``train`` (one item per object) or ``eval`` (one item per sentence).

    Structural problems of the file raise :class:`DataError` at construction; missing or
    unreadable image / mask files raise when the item is read (``validate_custom`` finds all).
    """

    def __init__(
        self, *, path: PathLike, split: str = DEFAULT_SPLIT, mode: str = "eval", min_score: float | None = None
    ) -> None:
        path = records_file(path)
        records, problems = read_custom(path)
        if problems:
            shown = "\n  ".join(problems[:5])
            more = f"\n  ... and {len(problems) - 5} more" if len(problems) > 5 else ""
            raise DataError(
                f"{path} has {len(problems)} problem(s); run `ditsam data validate {path}` to list them all:"
                f"\n  {shown}{more}"
            )
        check_split(split, (record.split for record in records), source=str(path))
        records = _confident_split(records, split=split, min_score=min_score, path=path)
        image_ids: dict[Path, int] = {}
        objects, sentence_count = [], 0
        for record in records:
            image_id = image_ids.setdefault(record.image, len(image_ids))
            sent_ids = tuple(range(sentence_count, sentence_count + len(record.sentences)))
            sentence_count += len(record.sentences)
            if record.split == split:
                objects.append(_object(record, image_id=image_id, sent_ids=sent_ids))
        self.path = path
        super().__init__(objects=objects, split=split, mode=mode)

    def _where(self, obj: RefObject) -> str:
        return obj.mask_source.where

    def _mask_problem(self, obj: RefObject, sizes: list[tuple[int, int]]) -> str | None:
        record: CustomRecord = obj.mask_source
        try:
            mask = _record_mask(record, strict=False)
        except DataError as error:
            return str(error)
        return mask_shape_problem(mask, sizes, what=f"the mask of field '{'mask' if record.mask else 'segmentation'}'")

    def _load_mask(self, obj: RefObject) -> np.ndarray:
        record: CustomRecord = obj.mask_source
        try:
            return _record_mask(record, strict=False)
        except DataError as error:
            raise DataError(f"{record.where}: {error}") from None


def _confident_split(
    records: list[CustomRecord], *, split: str, min_score: float | None, path: Path
) -> list[CustomRecord]:
    """The records to train on (:func:`ditsam.data.records.confident`), saying how many of ``split`` were left
    out; DataError when that leaves ``split`` empty."""
    kept, _, _ = confident(records, min_score=min_score)
    ours = [record for record in records if record.split == split]
    _, below, absent = confident(ours, min_score=min_score)
    why = f"{below} with a score below min_score {min_score}, {absent} saying present: false"
    if ours and below + absent == len(ours):
        raise DataError(f"{path}: every record of split {split!r} was left out ({why}); lower data.min_score")
    if below or absent:
        logger.info("%s split %r: %d of %d record(s) left out (%s)", path, split, below + absent, len(ours), why)
    return kept


def _values(path: Path, problems: list[str]) -> Iterator[tuple[int, str, Any, str | None]]:
    try:
        yield from list(record_values(path))
    except FileNotFoundError:
        problems.append(f"{path}: file not found")
    except IsADirectoryError:
        problems.append(f"{path}: is a folder; expected a records file (JSONL or a JSON array)")
    except OSError as error:
        problems.append(f"{path}: cannot read: {error}")


def _parse(obj: Any, *, line: int, base: Path, where: str) -> tuple[CustomRecord | None, list[str]]:
    """A record from one decoded line, or None and the problems that prevent it."""
    if not isinstance(obj, dict):
        return None, [f'{where}: got a JSON {type(obj).__name__}; expected an object {{"image": ..., ...}}']
    _, unknown = key_problems(obj, allowed=FIELDS)
    problems = [
        f"{where}: unknown field {key!r} (value {_short(obj[key])}); expected only {', '.join(FIELDS)}"
        for key in unknown
    ]
    problems += label_problems(obj, where=where)

    image = _path_field(obj, "image", base, where, problems)
    sentences = _sentences(obj, where, problems)
    mask, segmentation = None, None
    if ("mask" in obj) == ("segmentation" in obj):
        problems.append(
            f"{where}: {'both' if 'mask' in obj else 'neither'} 'mask' and 'segmentation' given; expected exactly one"
        )
    elif "mask" in obj:
        mask = _path_field(obj, "mask", base, where, problems)
    else:
        segmentation = obj["segmentation"]
        if not isinstance(segmentation, (list, dict)) or not segmentation:
            problems.append(
                f"{where}: field 'segmentation': {_short(segmentation)}; expected a COCO polygon list or an RLE dict {{size, counts}}"
            )
    split = obj.get("split", DEFAULT_SPLIT)
    if not isinstance(split, str) or not split.strip():
        problems.append(f"{where}: field 'split': {_short(split)}; expected a non-empty string such as \"train\"")
    # A string id (copied by `ditsam predict` from its input) names the record; its ref_id is the line.
    named = isinstance(obj.get("id"), str) and bool(obj["id"].strip())
    record_id = line if named else _int_field(obj, "id", line, where, problems, expected="an integer or a string")
    category_id = _int_field(obj, "category_id", 0, where, problems)
    if problems:
        return None, problems
    record = CustomRecord(
        line=line,
        image=image,
        sentences=sentences,
        mask=mask,
        segmentation=segmentation,  # type: ignore[arg-type]
        split=split,
        id=record_id,
        category_id=category_id,
        where=where,
        score=obj.get("score"),
        present=obj.get("present", True),
    )
    return record, []


def _path_field(obj: dict, field: str, base: Path, where: str, problems: list[str]) -> Path | None:
    if field not in obj:
        problems.append(f"{where}: missing field {field!r}; expected a file path (relative to {base} or absolute)")
        return None
    value = obj[field]
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{where}: field {field!r}: {_short(value)}; expected a file path string")
        return None
    return base / value  # an absolute value replaces base


def _sentences(obj: dict, where: str, problems: list[str]) -> tuple[str, ...]:
    if ("sentences" in obj) == ("sentence" in obj):
        state = "both" if "sentences" in obj else "neither"
        problems.append(f"{where}: {state} 'sentences' and 'sentence' given; expected exactly one")
        return ()
    if "sentence" in obj:
        field, values = "sentence", [obj["sentence"]]
        if not isinstance(obj["sentence"], str):
            problems.append(f"{where}: field 'sentence': {_short(obj['sentence'])}; expected a string")
            return ()
    else:
        field, values = "sentences", obj["sentences"]
        if not isinstance(values, list) or not values:
            problems.append(f"{where}: field 'sentences': {_short(values)}; expected a non-empty list of strings")
            return ()
    cleaned = []
    for index, value in enumerate(values):
        label = field if field == "sentence" else f"{field}[{index}]"
        if not isinstance(value, str):
            problems.append(f"{where}: field {label!r}: {_short(value)}; expected a string")
        elif not value.strip():
            problems.append(f"{where}: field {label!r}: empty sentence {value!r}; expected non-empty text")
        else:
            cleaned.append(clean_sentence(value))
    return tuple(cleaned)


def _int_field(
    obj: dict, field: str, default: int, where: str, problems: list[str], *, expected: str = "an integer"
) -> int:
    value = obj.get(field, default)
    if not is_integer(value):
        problems.append(f"{where}: field {field!r}: {_short(value)}; expected {expected}")
        return default
    return value


def _file_problems(record: CustomRecord, *, where: str, check_pixels: bool) -> list[str]:
    try:
        sizes = accepted_sizes(record.image)
        if check_pixels:
            load_image(record.image)
    except DataError as error:
        return [f"{where}: field 'image': {error}; expected a readable image file"]
    field = "mask" if record.mask is not None else "segmentation"
    if record.mask is not None:
        problems = _mask_problems(record.mask, sizes, where=where, check_pixels=check_pixels)
        if problems:
            return problems
    try:
        mask = _record_mask(record, strict=True)
    except DataError as error:
        return [f"{where}: field {field!r}: {error}"]
    if not mask.any():  # e.g. a polygon outside the image: training would learn from an empty target
        return [f"{where}: field {field!r}: the mask is empty (no object pixel); expected the referred object's pixels"]
    return []


def _mask_problems(path: Path, sizes: list[tuple[int, int]], *, where: str, check_pixels: bool) -> list[str]:
    try:
        with Image.open(path) as mask:
            size, file_format = mask.size, mask.format
            if check_pixels:
                mask.load()
    except FileNotFoundError:
        return [f"{where}: field 'mask': file {os.fspath(path)} not found; expected a PNG file"]
    except IMAGE_READ_ERRORS as error:
        return [f"{where}: field 'mask': cannot read {os.fspath(path)}: {error}; expected a PNG file"]
    problems = []
    if file_format != "PNG":
        problems.append(f"{where}: field 'mask': {os.fspath(path)} is {file_format}; expected a PNG (lossless) file")
    if size not in sizes:
        problems.append(
            f"{where}: field 'mask': {os.fspath(path)} is {size[0]}x{size[1]} (WxH); "
            f"expected the image's size {sizes[0][0]}x{sizes[0][1]}"
        )
    return problems


def _decode(segmentation: Any, sizes: list[tuple[int, int]], *, strict: bool) -> np.ndarray:
    error: DataError | None = None
    for width, height in sizes:
        try:
            return decode_segmentation(segmentation, height=height, width=width, strict=strict)
        except DataError as failure:
            error = error or failure  # report the failure against the displayed size
    assert error is not None
    raise error


def _record_mask(record: CustomRecord, *, strict: bool) -> np.ndarray:
    sizes = accepted_sizes(record.image)
    if record.mask is None:
        return _decode(record.segmentation, sizes, strict=strict)
    mask = read_mask_png(record.mask)
    if (mask.shape[1], mask.shape[0]) not in sizes:
        raise DataError(
            f"mask {record.mask} is {mask.shape[1]}x{mask.shape[0]} (WxH) but image {record.image} is "
            f"{sizes[0][0]}x{sizes[0][1]}"
        )
    return mask


def _object(record: CustomRecord, *, image_id: int, sent_ids: tuple[int, ...]) -> RefObject:
    return RefObject(
        image_path=os.fspath(record.image),
        sentences=record.sentences,
        sent_ids=sent_ids,
        ref_id=record.id,
        ann_id=record.id,
        image_id=image_id,
        category_id=record.category_id,
        bbox=None,
        mask_source=record,
    )


def _short(value: Any, limit: int = 60) -> str:
    """A value as it would appear in the file (JSON), clipped."""
    return short(value, limit)
