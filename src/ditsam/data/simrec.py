"""Reader for the SimREC preprocessed format used by the reference DIT code.

Layout::

    anns/<dataset>.json        {split: [{iid, bbox: [x, y, w, h], cat_id, refs: [sentences],
                                          mask_id}, ...], ...}
    masks/<dataset>/<mask_id>.npy   uint8 (H, W) at original resolution, nonzero = object
    <image_dir>/COCO_train2014_<iid:012d>.jpg   (pattern configurable)

The train split has one entry per referred object with all its sentences; val/test have one
entry per sentence. Entries are grouped by ``mask_id`` (= REFER ref_id), so ``mode`` means the
same as for every reader: train = one item per object, eval = one item per sentence.

The format carries no annotation or sentence ids: ``ann_id`` is -1 and ``sent_ids`` are the
sentences' positions in the split (in file order), stable for a given file.
"""

from __future__ import annotations

import json
import os
import tokenize
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ditsam.data.base import (
    RefDatasetBase,
    RefObject,
    bbox_field,
    check_split,
    clean_sentence,
    integer_field,
    mask_shape_problem,
    sorted_splits,
)
from ditsam.data.sample import DataError, PathLike
from ditsam.schema import is_integer, key_problems

COCO_TRAIN2014_PATTERN = "COCO_train2014_%012d.jpg"
_REQUIRED_KEYS = ("iid", "bbox", "refs", "mask_id")
# numpy dtype kinds a mask may have: bool, signed / unsigned integers, floats (nonzero is the object).
_MASK_DTYPE_KINDS = "biuf"


def available_splits(ann_file: PathLike) -> list[str]:
    """Names of the splits in a SimREC annotation file."""
    return sorted_splits(_read_ann_file(Path(ann_file)))


class SimRecDataset(RefDatasetBase):
    """One split of a SimREC-format dataset; items are :class:`~ditsam.data.sample.RefSample`.

    Args:
        ann_file: ``anns/<dataset>.json``.
        mask_dir: folder of ``<mask_id>.npy`` masks (``masks/<dataset>``).
        image_dir: folder of the images.
        split: a key of the annotation file; unknown names raise listing the available ones.
        mode: ``train`` (one item per object) or ``eval`` (one item per sentence).
        image_pattern: %-format turning the integer ``iid`` into a file name.
    """

    def __init__(
        self,
        *,
        ann_file: PathLike,
        mask_dir: PathLike,
        image_dir: PathLike,
        split: str,
        mode: str = "eval",
        image_pattern: str = COCO_TRAIN2014_PATTERN,
    ) -> None:
        ann_path = Path(ann_file)
        data = _read_ann_file(ann_path)
        check_split(split, data, source=str(ann_path))
        entries = data[split]
        if not isinstance(entries, list):
            raise DataError(f"{ann_path}: split {split!r} is not a list of entries")
        self.mask_dir = Path(mask_dir)
        self.ann_file = ann_path
        objects = _group_entries(
            entries, ann_path=ann_path, split=split, image_dir=Path(image_dir), pattern=image_pattern
        )
        super().__init__(objects=objects, split=split, mode=mode)

    @classmethod
    def from_root(
        cls,
        *,
        root: PathLike,
        dataset: str,
        image_dir: PathLike,
        split: str,
        mode: str = "eval",
        image_pattern: str = COCO_TRAIN2014_PATTERN,
    ) -> "SimRecDataset":
        """Build from the standard layout: ``<root>/anns/<dataset>.json``, ``<root>/masks/<dataset>/``."""
        root = Path(root)
        return cls(
            ann_file=root / "anns" / f"{dataset}.json",
            mask_dir=root / "masks" / dataset,
            image_dir=image_dir,
            split=split,
            mode=mode,
            image_pattern=image_pattern,
        )

    def _where(self, obj: RefObject) -> str:
        return f"{self.ann_file}: {self.split} mask_id {obj.ref_id}"

    def _mask_problem(self, obj: RefObject, sizes: list[tuple[int, int]]) -> str | None:
        try:
            mask = self._load_mask(obj, mmap=True)
        except DataError as error:
            return str(error)
        return mask_shape_problem(mask, sizes, what=f"mask {self.mask_dir / f'{obj.mask_source}.npy'}")

    def _load_mask(self, obj: RefObject, *, mmap: bool = False) -> np.ndarray:
        """The object's mask; ``mmap``: memory-mapped as stored (nonzero = object), which a check
        reads without copying."""
        path = self.mask_dir / f"{obj.mask_source}.npy"
        try:
            # Never unpickle object arrays from data files.
            mask = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
        except FileNotFoundError:
            raise DataError(f"mask file not found: {path} (ref {obj.ref_id})") from None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, tokenize.TokenError) as error:
            # numpy parses the .npy header with Python's tokenizer: a garbled header raises its TokenError.
            raise DataError(f"cannot read mask file {path}: {error}") from error
        if mask.ndim != 2:
            raise DataError(f"mask file {path} has shape {mask.shape}; expected (H, W)")
        if mask.dtype.kind not in _MASK_DTYPE_KINDS:
            raise DataError(f"mask file {path} holds {mask.dtype} values; expected a bool, integer or float mask")
        return mask if mmap else np.ascontiguousarray(mask != 0)


def _read_ann_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"annotation file not found: {path}")
    try:
        with open(path, "rb") as handle:
            data = json.load(handle)
    except (OSError, ValueError, RecursionError) as error:
        raise DataError(f"cannot read annotation file {path}: {error}") from error
    if not isinstance(data, dict):
        raise DataError(f"annotation file {path} does not hold a {{split: [entries]}} mapping")
    return data


def _group_entries(entries: list, *, ann_path: Path, split: str, image_dir: Path, pattern: str) -> list[RefObject]:
    """Merge entries of the same mask_id (val/test list each sentence separately)."""
    grouped: dict[Any, dict[str, Any]] = {}
    sentence_position = 0
    for position, entry in enumerate(entries):
        where = f"{ann_path}: {split}[{position}]"
        if not isinstance(entry, dict):
            raise DataError(f"{where}: expected an entry object, got {type(entry).__name__}")
        missing, _ = key_problems(entry, required=_REQUIRED_KEYS)
        if missing:
            raise DataError(f"{where}: missing field(s) {', '.join(missing)}")
        for key in ("iid", "mask_id"):
            if not is_integer(entry[key]):
                raise DataError(f"{where}: {key!r} must be an integer, got {entry[key]!r}")
        refs = entry["refs"]
        if isinstance(refs, str):
            refs = [refs]
        if not isinstance(refs, list) or not all(isinstance(s, str) for s in refs):
            raise DataError(f"{where}: 'refs' must be a list of sentences, got {refs!r}")
        bbox, category_id = (
            bbox_field(entry["bbox"], where=where),
            integer_field(entry, "cat_id", where=where, default=-1),
        )
        group = grouped.get(entry["mask_id"])
        if group is None:
            group = grouped[entry["mask_id"]] = {
                "entry": entry,
                "sentences": [],
                "sent_ids": [],
                "bbox": bbox,
                "category_id": category_id,
            }
        elif group["entry"]["iid"] != entry["iid"]:
            raise DataError(f"{where}: mask_id {entry['mask_id']} also used for image {group['entry']['iid']}")
        for sentence in refs:
            group["sentences"].append(clean_sentence(sentence))
            group["sent_ids"].append(sentence_position)
            sentence_position += 1
    return [_object(mask_id, group, image_dir=image_dir, pattern=pattern) for mask_id, group in grouped.items()]


def _object(mask_id: Any, group: dict[str, Any], *, image_dir: Path, pattern: str) -> RefObject:
    entry = group["entry"]
    iid = int(entry["iid"])
    return RefObject(
        image_path=os.fspath(image_dir / (pattern % iid)),
        sentences=tuple(group["sentences"]),
        sent_ids=tuple(group["sent_ids"]),
        ref_id=int(mask_id),
        ann_id=-1,
        image_id=iid,
        category_id=group["category_id"],
        bbox=group["bbox"],
        mask_source=mask_id,
    )
