"""Reader for the original REFER release (RefCOCO, RefCOCO+, RefCOCOg, RefCLEF).

Layout (``root`` is the folder holding one sub-folder per dataset)::

    <root>/<dataset>/refs(<split_by>).p   pickled list of refs: {ref_id, ann_id, image_id,
                                          category_id, split, sent_ids, sentences: [{raw, sent,
                                          sent_id, tokens}], ...}
    <root>/<dataset>/instances.json      COCO images / annotations / categories
    <image_dir>/<images[i].file_name>    e.g. train2014/COCO_train2014_000000581857.jpg

Datasets and split_by: refcoco and refcoco+ (unc: train/val/testA/testB), refcocog (umd:
train/val/test; google: train/val), refclef (unc, berkeley). The image file comes from the
``file_name`` of the image in instances.json (the refs' own ``file_name`` carries an ann-id
suffix and names no real file).

The refs pickle is read with an unpickler that resolves no global at all: the files hold only
lists, dicts, strings and numbers, so anything else (a crafted file trying to call a function)
is rejected with :class:`DataError` before it can run.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from ditsam.data.base import (
    RefDatasetBase,
    RefObject,
    bbox_field,
    check_split,
    clean_sentence,
    integer_field,
    sorted_splits,
)
from ditsam.data.sample import DataError, PathLike, short_repr
from ditsam.data.segmentation import decode_segmentation, polygon_bounds, segmentation_area
from ditsam.schema import key_problems

TextField = Literal["sent", "raw"]
_REQUIRED_REF_KEYS = ("ref_id", "ann_id", "image_id", "split", "sentences")
# PIL refuses to open an image of more than this many times its MAX_IMAGE_PIXELS: a larger size declared in
# instances.json can match no image, and masks are decoded at the declared size before the image is read.
_PIL_REFUSAL_FACTOR = 2


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global, i.e. every class and callable."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: refs files hold only plain data")


def read_plain_pickle(path: PathLike) -> Any:
    """The object in a pickle file of plain data only (lists, dicts, strings, numbers), with Python 2
    byte strings kept as ``bytes``. This is the project's one way to read a pickle: any class or
    callable in the file is refused (``pickle.UnpicklingError``) before anything of it runs.
    Raises OSError as ``open`` does."""
    return _NoGlobalsUnpickler(io.BytesIO(Path(path).read_bytes()), encoding="bytes").load()


def refs_path(*, root: PathLike, dataset: str, split_by: str) -> Path:
    """Path of the refs pickle, ``<root>/<dataset>/refs(<split_by>).p``."""
    return Path(root) / dataset / f"refs({split_by}).p"


def load_refs(path: PathLike) -> list[dict]:
    """Read a refs pickle safely; returns the list of ref dicts with ``str`` text.

    Python 2 pickles (protocol 2, REFER's own) store text as byte strings; they are read as
    bytes and decoded as UTF-8, falling back to Latin-1 (which never fails) — decoding them
    straight as Latin-1 would garble UTF-8 text.
    """
    path = Path(path)
    if not path.is_file():
        others = sorted(p.name for p in path.parent.glob("refs(*).p")) if path.parent.is_dir() else []
        hint = f"; refs files there: {', '.join(others)}" if others else ""
        raise DataError(f"refs file not found: {path}{hint}")
    try:
        data = _text(read_plain_pickle(path))
    except Exception as error:  # any unpickling failure means a bad file; report it, never run it
        # (RecursionError included: data nested past the stack, or a list holding itself)
        raise DataError(f"cannot read refs file {path}: {type(error).__name__}: {error}") from error
    return check_refs(data, path)


def check_refs(refs: Any, path: PathLike) -> list[dict]:
    """``refs`` if it is a list of ref dicts that each carry REFER's required fields (integer ``ref_id`` and
    ``image_id``, a ``split`` name, a ``sentences`` list; ``ann_id`` is each format's own), else
    :class:`DataError` naming ``path`` and the first bad ref."""
    if not isinstance(refs, list) or not all(isinstance(ref, dict) for ref in refs):
        raise DataError(f"refs file {path} does not hold a list of ref dicts")
    for position, ref in enumerate(refs):
        where = f"refs file {path}: ref #{position}"
        missing, _ = key_problems(ref, required=_REQUIRED_REF_KEYS)
        if missing:
            raise DataError(f"{where} lacks field(s) {', '.join(missing)}")
        integer_field(ref, "ref_id", where=where)
        integer_field(ref, "image_id", where=where)
        if not isinstance(ref["split"], str):
            raise DataError(
                f"{where}: field 'split' is {short_repr(ref['split'])}; expected a split name such as 'train'"
            )
        if not isinstance(ref["sentences"], list):
            raise DataError(
                f"{where}: field 'sentences' is {short_repr(ref['sentences'])}; expected a list of sentences"
            )
    return refs


def available_splits(*, root: PathLike, dataset: str, split_by: str) -> list[str]:
    """Names of the splits present in ``refs(<split_by>).p``."""
    return sorted_splits(
        str(ref["split"]) for ref in load_refs(refs_path(root=root, dataset=dataset, split_by=split_by))
    )


class ReferDataset(RefDatasetBase):
    """One split of a REFER dataset; items are :class:`~ditsam.data.sample.RefSample`.

    Args:
        root: folder holding ``<dataset>/refs(<split_by>).p`` and ``<dataset>/instances.json``.
        dataset: ``refcoco``, ``refcoco+``, ``refcocog`` or ``refclef``.
        split_by: ``unc``, ``umd``, ``google`` or ``berkeley``.
        split: e.g. ``train``, ``val``, ``testA``; unknown names raise listing the available ones.
        image_dir: folder of the images named by instances.json (COCO train2014 for RefCOCO*).
        mode: ``train`` (one item per object) or ``eval`` (one item per sentence).
        text_field: ``sent`` (REFER's lowercased, tokenised text; default) or ``raw``.
    """

    def __init__(
        self,
        *,
        root: PathLike,
        dataset: str,
        split_by: str,
        split: str,
        image_dir: PathLike,
        mode: str = "eval",
        text_field: TextField = "sent",
    ) -> None:
        path = refs_path(root=root, dataset=dataset, split_by=split_by)
        refs = refs_of_split(load_refs(path), split=split, source=path, text_field=text_field)
        ann_ids = {integer_field(ref, "ann_id", where=f"{path}: ref {ref['ref_id']}") for ref in refs}
        instances = Path(root) / dataset / "instances.json"
        images, annotations = read_instances(instances, ann_ids=ann_ids)
        objects = [_ref_object(ref, images, annotations, Path(image_dir), text_field, path, instances) for ref in refs]
        self.dataset = dataset
        self.split_by = split_by
        self.refs_file = path
        super().__init__(objects=objects, split=split, mode=mode)

    def _where(self, obj: RefObject) -> str:
        return f"{self.refs_file}: ref {obj.ref_id} ({self.split})"

    def _mask_problem(self, obj: RefObject, sizes: list[tuple[int, int]]) -> str | None:
        segmentation, height, width = obj.mask_source
        size_problem = image_size_problem(obj.image_path, width=width, height=height, sizes=sizes)
        if size_problem is not None:
            return size_problem
        try:
            if segmentation_area(segmentation, height=height, width=width):
                return None
        except DataError as error:
            return f"annotation {obj.ann_id}: {error}"
        bounds = polygon_bounds(segmentation)
        if bounds is not None and (bounds[0] >= width or bounds[1] >= height or bounds[2] <= 0 or bounds[3] <= 0):
            x0, y0, x1, y1 = bounds
            return (
                f"annotation {obj.ann_id} lies outside its {width}x{height} image (polygon x {x0:g}..{x1:g}, "
                f"y {y0:g}..{y1:g}), so its mask is empty"
            )
        return f"annotation {obj.ann_id} has an empty mask; expected the referred object's pixels"

    def _load_mask(self, obj: RefObject) -> np.ndarray:
        segmentation, height, width = obj.mask_source
        try:
            return decode_segmentation(segmentation, height=height, width=width)
        except DataError as error:
            raise DataError(f"{self.dataset} ref {obj.ref_id} (annotation {obj.ann_id}): {error}") from None


def _text(value: Any) -> Any:
    """Recursively turn Python 2 byte strings into ``str``."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin-1")
    if isinstance(value, list):
        return [_text(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_text(v) for v in value)
    if isinstance(value, dict):
        return {_text(k): _text(v) for k, v in value.items()}
    return value


def read_instances(path: Path, *, ann_ids: set[int]) -> tuple[dict[int, dict], dict[int, dict]]:
    """Images by id, and the annotations whose id is in ``ann_ids`` by id."""
    if not path.is_file():
        raise DataError(f"instances file not found: {path}")
    try:
        with open(path, "rb") as handle:
            data = json.load(handle)
        images = {int(image["id"]): image for image in data["images"]}
        annotations = {int(ann["id"]): ann for ann in data["annotations"] if int(ann["id"]) in ann_ids}
    except (OSError, ValueError, KeyError, TypeError, OverflowError, RecursionError) as error:
        raise DataError(f"cannot read instances file {path}: {type(error).__name__}: {error}") from error
    return images, annotations


def image_fields(image: dict, *, where: str) -> tuple[str, int, int]:
    """``(file_name, height, width)`` of an instances.json image record: a file name, and sizes that are
    positive integers an image can have (at most what PIL opens); else :class:`DataError` naming ``where``."""
    file_name = image.get("file_name")
    if not isinstance(file_name, str) or not file_name.strip():
        raise DataError(f"{where}: field 'file_name' is {short_repr(file_name)}; expected an image file name")
    height, width = (integer_field(image, key, where=where) for key in ("height", "width"))
    limit = Image.MAX_IMAGE_PIXELS and _PIL_REFUSAL_FACTOR * Image.MAX_IMAGE_PIXELS
    if height < 1 or width < 1 or (limit and height * width > limit):
        raise DataError(f"{where}: size {width}x{height} (WxH); expected positive sizes of at most {limit} pixels")
    return file_name, height, width


def image_size_problem(image_path: str, *, width: int, height: int, sizes: list[tuple[int, int]]) -> str | None:
    """What is wrong when instances.json's (width, height) of an image is not one of the file's accepted
    (W, H) ``sizes``; None when it matches."""
    if (width, height) in sizes:
        return None
    return (
        f"instances.json gives image {image_path} as {width}x{height} (WxH) but the file is {sizes[0][0]}x{sizes[0][1]}"
    )


def refs_of_split(refs: list[dict], *, split: str, source: PathLike, text_field: str) -> list[dict]:
    """The refs of ``split`` (unknown splits raise listing the available ones), once ``text_field`` is
    known to be ``sent`` or ``raw``."""
    if text_field not in ("sent", "raw"):
        raise DataError(f"unknown text_field {text_field!r}; expected 'sent' or 'raw'")
    check_split(split, (str(ref["split"]) for ref in refs), source=str(source))
    return [ref for ref in refs if ref["split"] == split]


def ref_sentences(ref: dict, *, text_field: str, where: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """A ref's sentences (``text_field``, whitespace collapsed; ``sent`` lower-cased) and their ids."""
    sentences, sent_ids = [], []
    for position, sentence in enumerate(ref["sentences"]):
        if not isinstance(sentence, dict) or not isinstance(sentence.get(text_field), str):
            raise DataError(f"{where}: sentence #{position} has no {text_field!r} text")
        text = clean_sentence(sentence[text_field])
        sentences.append(text.lower() if text_field == "sent" else text)
        sent_ids.append(integer_field(sentence, "sent_id", where=f"{where}: sentence #{position}", default=-1))
    return tuple(sentences), tuple(sent_ids)


def _ref_object(
    ref: dict, images: dict, annotations: dict, image_dir: Path, text_field: str, refs_file: Path, instances: Path
) -> RefObject:
    where = f"{refs_file}: ref {ref['ref_id']}"
    ann = annotations.get(ref["ann_id"])
    if ann is None:
        raise DataError(f"{where}: annotation {ref['ann_id']} is not in {instances}")
    if not ann.get("segmentation"):
        raise DataError(f"{where}: annotation {ref['ann_id']} in {instances} has no segmentation")
    ann_where = f"{instances}: annotation {ref['ann_id']}"
    image_id = integer_field(ann, "image_id", where=ann_where)
    image = images.get(image_id)
    if image is None:
        raise DataError(f"{where}: image {image_id} of annotation {ref['ann_id']} is not in {instances}")
    file_name, height, width = image_fields(image, where=f"{instances}: image {image_id}")
    sentences, sent_ids = ref_sentences(ref, text_field=text_field, where=where)
    return RefObject(
        image_path=os.fspath(image_dir / file_name),
        sentences=sentences,
        sent_ids=sent_ids,
        ref_id=ref["ref_id"],
        ann_id=ref["ann_id"],
        image_id=image_id,
        category_id=integer_field(
            ref, "category_id", where=where, default=integer_field(ann, "category_id", where=ann_where, default=-1)
        ),
        bbox=bbox_field(ann["bbox"], where=ann_where) if "bbox" in ann else None,
        mask_source=(ann["segmentation"], height, width),
    )
