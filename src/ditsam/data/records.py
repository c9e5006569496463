"""The one record schema of labelled (image, sentence, mask) pairs: ``docs/record.schema.json``.

``ditsam predict`` writes these records (``predictions.json``, its journals ``predictions*.jsonl``),
``data.format=custom`` trains on them (:mod:`ditsam.data.custom`), ``ditsam data validate`` checks them, and
``ditsam predict --jsonl`` reads them as pairs. A record is one JSON object:

- what trains: ``image``, ``sentence`` or ``sentences``, ``segmentation`` (COCO polygons or RLE) or ``mask``
  (a PNG), optional ``split``, ``id``, ``category_id`` (:data:`TRAINING_FIELDS`);
- what a prediction adds (:data:`LABEL_FIELDS`), checked but not trained on: ``score`` (the model's predicted
  IoU: ``data.min_score`` keeps confident labels), ``bbox`` (COCO x, y, w, h), ``area``, ``present`` (False:
  the model found nothing; such a record has an empty mask and is left out of training), ``presence``,
  ``masks`` (SAM's three, with their scores), ``mask_file`` / ``overlay_file`` (relative to the file's folder).

A records file is JSON Lines (one record per line: a journal, a hand-written dataset) or one JSON array of
records (``predictions.json``); a folder stands for the ``predictions.json`` in it (else its
``predictions.jsonl``): a ``ditsam predict --out`` folder is a dataset as it is.
"""

from __future__ import annotations

import codecs
import json
import math
from numbers import Real
from pathlib import Path
from typing import Any, Iterator, Sequence

from ditsam.data.jsonl import json_lines
from ditsam.data.sample import clip
from ditsam.schema import is_integer

#: The fields a custom dataset trains on (see :mod:`ditsam.data.custom`).
TRAINING_FIELDS = ("image", "sentences", "sentence", "mask", "segmentation", "split", "id", "category_id")
#: The fields a prediction adds (``ditsam predict``, ``SegmentationResult.to_dict``): checked, not trained on.
LABEL_FIELDS = ("score", "bbox", "area", "present", "presence", "masks", "mask_file", "overlay_file")
RECORD_FIELDS = TRAINING_FIELDS + LABEL_FIELDS
#: What ``ditsam predict`` writes into ``--out``: every record at the end, and the journal of one process.
PREDICTIONS_FILE = "predictions.json"
JOURNAL_FILE = "predictions.jsonl"
#: Numbers in a COCO box (x, y, w, h).
BOX_VALUES = 4
#: The character that opens a JSON array: a records file starting with it is one array, not JSON Lines.
_ARRAY_START = b"["


def records_file(path: str | Path) -> Path:
    """The file a records path names: a file as it is; a folder's ``predictions.json``, else its
    ``predictions.jsonl`` (the ``predictions.json`` path when it holds neither, so that the error names it)."""
    path = Path(path)
    if not path.is_dir():
        return path
    merged, journal = path / PREDICTIONS_FILE, path / JOURNAL_FILE
    return journal if journal.is_file() and not merged.is_file() else merged


def record_values(path: Path) -> Iterator[tuple[int, str, Any, str | None]]:
    """``(number, where, value, problem)`` per record of a JSON Lines file or a JSON array file: ``number`` is
    the line (JSON Lines) or the 1-based position in the array, ``where`` names it (``file:line`` or ``file:
    record N``), ``problem`` says why a record could not be decoded (``value`` is then None). Raises OSError
    as ``open`` does."""
    data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    if not data.lstrip().startswith(_ARRAY_START):
        for line, value, problem in json_lines(path):
            yield line, f"{path}:{line}", value, problem and f"{problem}; expected one JSON object per line"
        return
    try:
        values = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        yield 0, str(path), None, f"not UTF-8 text ({error.reason} at byte {error.start + 1})"
        return
    except json.JSONDecodeError as error:
        yield 0, str(path), None, f"not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})"
        return
    except (ValueError, RecursionError) as error:
        yield 0, str(path), None, f"not valid JSON here ({type(error).__name__}: {clip(str(error))})"
        return
    for number, value in enumerate(values, start=1):
        yield number, f"{path}: record {number}", value, None


def label_problems(record: dict[str, Any], *, where: str) -> list[str]:
    """Every problem of a record's :data:`LABEL_FIELDS` (types and ranges), each naming field, value and
    what is expected."""
    problems = []

    def bad(field: str, expected: str) -> None:
        problems.append(f"{where}: field {field!r}: {short(record[field])}; expected {expected}")

    if "score" in record and not _finite(record["score"]):
        bad("score", "a finite number (the predicted IoU)")
    if "presence" in record and record["presence"] is not None and not _finite(record["presence"]):
        bad("presence", "a finite number or null")
    if "present" in record and not isinstance(record["present"], bool):
        bad("present", "true or false")
    if "area" in record and not (is_integer(record["area"]) and record["area"] >= 0):
        bad("area", "an integer >= 0 (pixels)")
    if "bbox" in record and not _box(record["bbox"]):
        bad("bbox", f"a COCO box [x, y, w, h]: {BOX_VALUES} finite numbers, w and h >= 0")
    for field in ("mask_file", "overlay_file"):
        if field in record and record[field] is not None and not isinstance(record[field], str):
            bad(field, "a file path string or null")
    if "masks" in record and not _masks(record["masks"]):
        bad("masks", 'a list of {"segmentation": ..., "score": number}')
    return problems


def confident(records: Sequence[Any], *, min_score: float | None) -> tuple[list[Any], int, int]:
    """``(kept, below, absent)``: the records to train on -- those with no score (hand-made labels) or a score
    >= ``min_score`` (None: any score) that do not say ``present: false`` -- and how many were left out for
    each reason."""
    kept, below, absent = [], 0, 0
    for record in records:
        if not record.present:
            absent += 1
        elif min_score is not None and record.score is not None and record.score < min_score:
            below += 1
        else:
            kept.append(record)
    return kept, below, absent


def short(value: Any, limit: int = 60) -> str:
    """A value as it would appear in the file (JSON), clipped."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return clip(text, limit)


def _finite(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _box(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == BOX_VALUES
        and all(_finite(v) for v in value)
        and value[2] >= 0
        and value[3] >= 0
    )


def _masks(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(item, dict) and set(item) == {"segmentation", "score"} and _finite(item["score"]) for item in value
    )
