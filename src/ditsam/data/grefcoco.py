"""Reader for gRefCOCO (generalized referring expressions: one object, several, or none).

Layout (``root`` holds one sub-folder per dataset; RefShapes' generalized variant writes the same
layout under ``dataset="grefshapes"``)::

    <root>/<dataset>/grefs(<split_by>).json   JSON list of ref records (or the same list pickled as
                                              grefs(<split_by>).p, read with the no-globals unpickler)
    <root>/<dataset>/instances.json           COCO images / annotations / categories
    <image_dir>/<images[i].file_name>         found through the ref's image_id

A ref record: ``ref_id`` (int), ``image_id`` (int), ``split``, ``ann_id`` (list of ints; exactly
``[-1]`` means no target), ``category_id`` (list, parallel), ``sentences`` (``{sent_id, sent, raw,
tokens}``), ``sent_ids``, ``file_name``; some copies add ``no_target`` (bool), which must agree with
``ann_id == [-1]``. The target mask is the union of the listed annotations, crowd annotations
excluded as the gRefCOCO API does; a no-target sentence has an all-False mask of the image's size.

The release was renumbered once (2023-08), so :attr:`GRefCocoDataset.source` records the refs file
read and its sha256; evaluation results carry it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ditsam.data.base import RefDatasetBase, RefObject, integer_field, sorted_splits
from ditsam.data.refer import (
    TextField,
    check_refs,
    image_fields,
    image_size_problem,
    load_refs,
    read_instances,
    ref_sentences,
    refs_of_split,
)
from ditsam.data.sample import DataError, PathLike, short_repr
from ditsam.data.segmentation import decode_segmentation, segmentation_area
from ditsam.digest import file_sha256
from ditsam.schema import is_integer

# ann_id of a ref whose sentences name nothing in the image.
NO_TARGET_ANN_IDS = [-1]


def grefs_path(*, root: PathLike, dataset: str = "grefcoco", split_by: str = "unc") -> Path:
    """The refs file: ``grefs(<split_by>).json`` if present, else the pickled ``grefs(<split_by>).p``."""
    folder = Path(root) / dataset
    json_path = folder / f"grefs({split_by}).json"
    pickle_path = folder / f"grefs({split_by}).p"
    if json_path.is_file() or not pickle_path.is_file():
        return json_path
    return pickle_path


def load_grefs(path: PathLike) -> list[dict]:
    """The list of ref records of a ``grefs(*).json`` or ``.p`` file, fields checked."""
    path = Path(path)
    if path.suffix == ".p":
        return load_refs(path)
    if not path.is_file():
        others = sorted(p.name for p in path.parent.glob("grefs(*)*")) if path.parent.is_dir() else []
        hint = f"; refs files there: {', '.join(others)}" if others else ""
        raise DataError(f"gRefCOCO refs file not found: {path} (nor its pickled .p twin){hint}")
    try:
        refs = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:
        raise DataError(f"cannot read gRefCOCO refs file {path}: {type(error).__name__}: {error}") from error
    return check_refs(refs, path)


def available_splits(*, root: PathLike, dataset: str = "grefcoco", split_by: str = "unc") -> list[str]:
    """Names of the splits present in the refs file."""
    return sorted_splits(
        str(ref["split"]) for ref in load_grefs(grefs_path(root=root, dataset=dataset, split_by=split_by))
    )


def target_ann_ids(ref: dict, *, where: str) -> list[int]:
    """The ref's annotation ids, ``[]`` for no target; checks ``no_target`` agrees with ``ann_id``."""
    raw = ref["ann_id"]
    ann_ids = list(raw) if isinstance(raw, (list, tuple)) else [raw]
    no_target = ann_ids == NO_TARGET_ANN_IDS
    if not ann_ids or not all(is_integer(a) for a in ann_ids) or (-1 in ann_ids and not no_target):
        raise DataError(f"{where}: ann_id {short_repr(raw)} must list annotation ids, or be exactly [-1] for no target")
    if "no_target" in ref and not isinstance(ref["no_target"], bool):
        raise DataError(f"{where}: no_target is {short_repr(ref['no_target'])}; expected true or false")
    if "no_target" in ref and ref["no_target"] != no_target:
        raise DataError(
            f"{where}: no_target is {ref['no_target']!r} but ann_id is {raw!r} "
            f"({'[-1] means no target' if no_target else 'annotations listed means a target'}); the record contradicts itself"
        )
    return [] if no_target else ann_ids


class GRefCocoDataset(RefDatasetBase):
    """One split of gRefCOCO (or RefShapes' generalized variant); items are
    :class:`~ditsam.data.sample.RefSample` with the union mask of every referred object, and
    ``no_target`` set (mask all False) when a sentence names nothing.

    Args:
        root: folder holding ``<dataset>/grefs(<split_by>).json`` (or ``.p``) and ``<dataset>/instances.json``.
        split: ``train``, ``val``, ``testA`` or ``testB``; unknown names raise listing the available ones.
        image_dir: folder of the images named by instances.json (COCO train2014 for gRefCOCO).
        mode: ``train`` (one item per ref, all its sentences) or ``eval`` (one item per sentence).
        dataset: sub-folder name (``grefcoco``; ``grefshapes`` for the generated variant).
        split_by: the refs file's scheme (``unc``).
        text_field: ``sent`` (default) or ``raw``.
    """

    # Sentences may name several objects or none: score with GRESMetrics.
    generalized = True

    def __init__(
        self,
        *,
        root: PathLike,
        split: str,
        image_dir: PathLike,
        mode: str = "eval",
        dataset: str = "grefcoco",
        split_by: str = "unc",
        text_field: TextField = "sent",
    ) -> None:
        path = grefs_path(root=root, dataset=dataset, split_by=split_by)
        refs = refs_of_split(load_grefs(path), split=split, source=path, text_field=text_field)
        # One entry per ref, not a dict by ref_id: refs sharing an id keep their own targets.
        targets = [target_ann_ids(ref, where=f"{path}: ref {ref['ref_id']}") for ref in refs]
        instances = Path(root) / dataset / "instances.json"
        images, annotations = read_instances(instances, ann_ids={a for ids in targets for a in ids})
        self.dataset = dataset
        self.split_by = split_by
        self.refs_file = path
        # The refs file read and its sha256 (the release was renumbered once: results name their file).
        self.source = {"refs_file": os.fspath(path), "sha256": file_sha256(path)}
        objects = [
            self._ref_object(
                ref,
                ann_ids,
                images,
                annotations,
                Path(image_dir),
                text_field,
                where=f"{path}: ref {ref['ref_id']}",
                instances=instances,
            )
            for ref, ann_ids in zip(refs, targets)
        ]
        super().__init__(objects=objects, split=split, mode=mode)

    @staticmethod
    def _ref_object(
        ref: dict,
        ann_ids: list[int],
        images: dict,
        annotations: dict,
        image_dir: Path,
        text_field: str,
        *,
        where: str,
        instances: Path,
    ) -> RefObject:
        image = images.get(ref["image_id"])
        if image is None:
            raise DataError(f"{where}: image {ref['image_id']} is not in {instances}")
        file_name, height, width = image_fields(image, where=f"{instances}: image {ref['image_id']}")
        parts = []
        for ann_id in ann_ids:
            ann = annotations.get(ann_id)
            if ann is None:
                raise DataError(f"{where}: annotation {ann_id} is not in {instances}")
            if integer_field(ann, "image_id", where=f"{instances}: annotation {ann_id}") != ref["image_id"]:
                raise DataError(
                    f"{where}: annotation {ann_id} belongs to image {ann['image_id']}, not {ref['image_id']}"
                )
            if not ann.get("iscrowd", 0):  # crowd regions are not part of the target (gRefCOCO API)
                if not ann.get("segmentation"):
                    raise DataError(f"{where}: annotation {ann_id} in {instances} has no segmentation")
                parts.append((ann_id, ann["segmentation"]))
        categories = ref.get("category_id", [])
        first_category = categories[0] if isinstance(categories, list) and categories else categories
        if first_category not in ([], None) and not is_integer(first_category):
            raise DataError(f"{where}: category_id {short_repr(categories)}; expected an integer or a list of them")
        sentences, sent_ids = ref_sentences(ref, text_field=text_field, where=where)
        return RefObject(
            image_path=os.fspath(image_dir / file_name),
            sentences=sentences,
            sent_ids=sent_ids,
            ref_id=ref["ref_id"],
            ann_id=ann_ids[0] if ann_ids else -1,
            image_id=ref["image_id"],
            category_id=first_category if first_category not in ([], None) else -1,
            bbox=None,
            mask_source=(parts, height, width),
            no_target=not ann_ids,
        )

    def _where(self, obj: RefObject) -> str:
        return f"{self.refs_file}: ref {obj.ref_id} ({self.split})"

    def _mask_problem(self, obj: RefObject, sizes: list[tuple[int, int]]) -> str | None:
        parts, height, width = obj.mask_source
        size_problem = image_size_problem(obj.image_path, width=width, height=height, sizes=sizes)
        if size_problem is not None:
            return size_problem
        if obj.no_target:
            return None  # an empty mask is what "no target" means
        if not parts:
            return "every listed annotation is a crowd region, so the target mask is empty; expected object pixels"
        for ann_id, segmentation in parts:
            try:
                if not segmentation_area(segmentation, height=height, width=width):
                    return f"annotation {ann_id} has an empty mask (outside its {width}x{height} image?)"
            except DataError as error:
                return f"annotation {ann_id}: {error}"
        return None

    def _load_mask(self, obj: RefObject) -> np.ndarray:
        parts, height, width = obj.mask_source
        mask = np.zeros((height, width), dtype=bool)
        for ann_id, segmentation in parts:
            try:
                mask |= decode_segmentation(segmentation, height=height, width=width)
            except DataError as error:
                raise DataError(f"{self.dataset} ref {obj.ref_id} (annotation {ann_id}): {error}") from None
        return mask
