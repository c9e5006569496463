"""Properties of the COCO-style readers: REFER (the pickled refs(*).p through the no-globals unpickler,
instances.json; ditsam.data.refer) and gRefCOCO (grefs(*).json or .p; ditsam.data.grefcoco). Any files
give a dataset or a DataError naming the file (and ref), never another exception; what the data check
passes reads. Found bugs are kept as plain regression tests at the end."""

from __future__ import annotations

import io
import json
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import event, given
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils

from ditsam.data.base import RefDatasetBase
from ditsam.data.grefcoco import GRefCocoDataset, load_grefs
from ditsam.data.refer import ReferDataset, available_splits, load_refs
from ditsam.data.sample import DataError, accepted_sizes
from ditsam.data.segmentation import compressed_counts
from helpers import uncompressed_counts
from strategies import (
    assert_raises_naming,
    broken_bytes,
    deep_pickle,
    example_dir,
    hostile_texts,
    json_values,
    mutated,
    pickle_values,
    rectangles,
    segmentations,
    self_referencing_pickle,
    sentences,
    valid_or_documented,
)

# (height, width) of the two images the annotations lie on.
IMAGE_SIZES = {1: (12, 10), 2: (7, 9)}
SPLITS = ("train", "val", "testA")
HIGHEST_PROTOCOL = pickle.HIGHEST_PROTOCOL


def _image_record(image_id: int) -> dict:
    height, width = IMAGE_SIZES[image_id]
    return {"id": image_id, "file_name": f"img{image_id}.png", "height": height, "width": width}


@st.composite
def instances(draw: st.DrawFn) -> dict:
    """instances.json: both images and 1..4 annotations on them (some crowd)."""
    annotations = []
    for ann_id in range(1, draw(st.integers(1, 4)) + 1):
        image_id = draw(st.sampled_from(sorted(IMAGE_SIZES)))
        annotations.append(
            {
                "id": ann_id,
                "image_id": image_id,
                "category_id": draw(st.integers(1, 3)),
                "iscrowd": draw(st.sampled_from([0, 0, 1])),
                "bbox": [1.0, 2.0, 3.0, 4.0],
                "area": 12.0,
                "segmentation": draw(segmentations(*IMAGE_SIZES[image_id])),
            }
        )
    return {"images": [_image_record(i) for i in IMAGE_SIZES], "annotations": annotations, "categories": [{"id": 1}]}


def _sentences(draw: st.DrawFn, ref_id: int) -> list[dict]:
    texts = draw(st.lists(sentences, min_size=1, max_size=2))
    return [
        {"sent_id": ref_id * 10 + i, "raw": text, "sent": text.lower(), "tokens": text.split()}
        for i, text in enumerate(texts)
    ]


@st.composite
def refer_refs(draw: st.DrawFn, annotations: list[dict]) -> list[dict]:
    """A REFER refs list: one ref per chosen annotation (ids unique)."""
    refs = []
    for ref_id, ann in enumerate(draw(st.lists(st.sampled_from(annotations), min_size=1, max_size=4)), start=1):
        sents = _sentences(draw, ref_id)
        refs.append(
            {
                "ref_id": ref_id,
                "ann_id": ann["id"],
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "split": draw(st.sampled_from(SPLITS)),
                "file_name": f"img_{ann['id']}.png",
                "sent_ids": [s["sent_id"] for s in sents],
                "sentences": sents,
            }
        )
    return refs


@st.composite
def grefcoco_refs(draw: st.DrawFn, annotations: list[dict]) -> list[dict]:
    """A gRefCOCO refs list: each ref names some annotations of one image, or none (``[-1]``)."""
    refs = []
    for ref_id in range(1, draw(st.integers(1, 4)) + 1):
        image_id = draw(st.sampled_from(sorted(IMAGE_SIZES)))
        on_image = [ann["id"] for ann in annotations if ann["image_id"] == image_id]
        ann_ids = (
            draw(st.lists(st.sampled_from(on_image), min_size=1, unique=True))
            if on_image and draw(st.booleans())
            else [-1]
        )
        sents = _sentences(draw, ref_id)
        ref = {
            "ref_id": ref_id,
            "image_id": image_id,
            "split": draw(st.sampled_from(SPLITS)),
            "ann_id": ann_ids,
            "category_id": [1] * len(ann_ids),
            "sentences": sents,
            "sent_ids": [s["sent_id"] for s in sents],
            "file_name": f"img{image_id}.png",
        }
        if draw(st.booleans()):
            ref["no_target"] = ann_ids == [-1]
        refs.append(ref)
    return refs


@st.composite
def pickled(draw: st.DrawFn, refs: Any) -> bytes:
    """``refs`` (mutated, with pickle's own value types) pickled at any protocol, or hostile pickle bytes."""
    kind = draw(st.sampled_from(("plain", "plain", "broken", "deep", "cycle")))
    if kind == "deep":
        return deep_pickle()
    if kind == "cycle":
        return self_referencing_pickle()
    data = pickle.dumps(draw(mutated(refs, leaves=pickle_values)), protocol=draw(st.integers(0, HIGHEST_PROTOCOL)))
    return draw(broken_bytes(data)) if kind == "broken" else data


@st.composite
def json_file(draw: st.DrawFn, value: Any) -> bytes:
    """``value`` (mutated) as JSON bytes, or broken / hostile JSON."""
    data = json.dumps(draw(mutated(value, leaves=json_values))).encode()
    kind = draw(st.sampled_from(("plain", "plain", "broken", "hostile")))
    if kind == "hostile":
        return draw(hostile_texts).encode()
    return draw(broken_bytes(data)) if kind == "broken" else data


def write_images(folder: Path) -> Path:
    images = folder / "images"
    images.mkdir(parents=True)
    for image_id, (height, width) in IMAGE_SIZES.items():
        Image.new("RGB", (width, height), (9, 99, 199)).save(images / f"img{image_id}.png")
    return images


def check_reads(dataset: RefDatasetBase, *places: Any) -> None:
    """The data check lists (object, message naming the file) pairs; what it passes reads as a sample of
    its image's size with object pixels (none for a no-target sentence); the rest reads or raises DataError."""
    checked = dataset.validate()
    assert all(any(str(place) in message for place in places) for _, message in checked), checked
    bad = {index for index, _ in checked}
    event(f"dataset built; objects passing the data check: {'some' if len(bad) < dataset.num_objects else 'none'}")
    for index in range(len(dataset)):
        sample = valid_or_documented(lambda: dataset[index], DataError, *places, "ref ")
        if dataset._index[index][0] not in bad:
            assert sample is not None and sample.mask.any() != sample.no_target
            assert (sample.mask.shape[1], sample.mask.shape[0]) in accepted_sizes(sample.image_path)


# ---------------------------------------------------------------------------------------------------
# REFER
# ---------------------------------------------------------------------------------------------------
@st.composite
def refer_files(draw: st.DrawFn) -> tuple[bytes, bytes]:
    coco = draw(instances())
    return draw(pickled(draw(refer_refs(coco["annotations"])))), draw(json_file(coco))


@given(
    files=refer_files(),
    split=st.sampled_from(SPLITS),
    mode=st.sampled_from(("train", "eval")),
    text_field=st.sampled_from(("sent", "raw")),
)
def test_any_refer_files_give_a_dataset_or_a_named_error(
    files: tuple[bytes, bytes], split: str, mode: str, text_field: str
) -> None:
    with example_dir() as root:
        images = write_images(root)
        (root / "refcoco").mkdir()
        refs_file, instances_file = root / "refcoco" / "refs(unc).p", root / "refcoco" / "instances.json"
        refs_file.write_bytes(files[0])
        instances_file.write_bytes(files[1])
        refs = valid_or_documented(lambda: load_refs(refs_file), DataError, refs_file)
        if refs is None:
            return
        assert all(isinstance(ref, dict) for ref in refs)
        valid_or_documented(
            lambda: available_splits(root=root, dataset="refcoco", split_by="unc"), DataError, refs_file
        )
        dataset = valid_or_documented(
            lambda: ReferDataset(
                root=root,
                dataset="refcoco",
                split_by="unc",
                split=split,
                image_dir=images,
                mode=mode,
                text_field=text_field,
            ),
            DataError,
            refs_file,
            instances_file,
        )
        if dataset is not None:
            check_reads(dataset, refs_file)


# ---------------------------------------------------------------------------------------------------
# gRefCOCO
# ---------------------------------------------------------------------------------------------------
@st.composite
def grefcoco_files(draw: st.DrawFn) -> tuple[str, bytes, bytes]:
    coco = draw(instances())
    refs = draw(grefcoco_refs(coco["annotations"]))
    if draw(st.booleans()):
        return "grefs(unc).p", draw(pickled(refs)), draw(json_file(coco))
    return "grefs(unc).json", draw(json_file(refs)), draw(json_file(coco))


@given(files=grefcoco_files(), split=st.sampled_from(SPLITS), mode=st.sampled_from(("train", "eval")))
def test_any_grefcoco_files_give_a_dataset_or_a_named_error(
    files: tuple[str, bytes, bytes], split: str, mode: str
) -> None:
    name, refs_data, instances_data = files
    with example_dir() as root:
        images = write_images(root)
        (root / "grefcoco").mkdir()
        refs_file, instances_file = root / "grefcoco" / name, root / "grefcoco" / "instances.json"
        refs_file.write_bytes(refs_data)
        instances_file.write_bytes(instances_data)
        if valid_or_documented(lambda: load_grefs(refs_file), DataError, refs_file) is None:
            return
        dataset = valid_or_documented(
            lambda: GRefCocoDataset(root=root, split=split, image_dir=images, mode=mode),
            DataError,
            refs_file,
            instances_file,
        )
        if dataset is not None:
            check_reads(dataset, refs_file)


# ---------------------------------------------------------------------------------------------------
# Compressed RLE, which the readers now decode before pycocotools does
# ---------------------------------------------------------------------------------------------------
@given(mask=st.integers(1, 40).flatmap(lambda h: st.integers(1, 40).flatmap(lambda w: rectangles(h, w))))
def test_compressed_counts_are_the_run_lengths_pycocotools_writes(mask: np.ndarray) -> None:
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"]
    assert compressed_counts(encoded) == uncompressed_counts(mask)


def test_pickle_bytes_helpers_are_what_they_say() -> None:
    """The hostile pickles the properties use: nested lists, and a list holding itself."""
    depth = 5
    value = pickle.Unpickler(io.BytesIO(deep_pickle(depth))).load()
    for _ in range(depth - 1):
        value = value[0]
    assert value == []
    refs = pickle.loads(self_referencing_pickle())
    assert refs[0]["sentences"][0] is refs[0]["sentences"]


# ---------------------------------------------------------------------------------------------------
# Regressions: the examples the properties found
# ---------------------------------------------------------------------------------------------------
SEGMENTATION = [[1, 1, 8, 1, 1, 9]]


def _coco(**image_fields: Any) -> dict:
    ann = {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [1, 1, 7, 8], "segmentation": SEGMENTATION}
    return {"images": [{**_image_record(1), **image_fields}], "annotations": [ann]}


def _refer_ref(**fields: Any) -> dict:
    return {
        "ref_id": 1,
        "ann_id": 1,
        "image_id": 1,
        "split": "train",
        "category_id": 1,
        "sentences": [{"sent_id": 1, "sent": "the thing", "raw": "The thing"}],
        **fields,
    }


def _refer_root(root: Path, refs: Any, coco: dict, *, refs_bytes: bytes | None = None) -> Path:
    write_images(root)
    (root / "refcoco").mkdir()
    (root / "refcoco" / "refs(unc).p").write_bytes(refs_bytes or pickle.dumps(refs, protocol=2))
    (root / "refcoco" / "instances.json").write_text(json.dumps(coco))
    return root


def _refer(root: Path) -> ReferDataset:
    return ReferDataset(root=root, dataset="refcoco", split_by="unc", split="train", image_dir=root / "images")


def test_refs_pickle_nested_past_the_stack_or_holding_itself_is_a_data_error(tmp_path: Path) -> None:
    """Turning Python 2 byte strings into text recursed without end: RecursionError escaped."""
    for name, data in (("deep", deep_pickle()), ("cycle", self_referencing_pickle())):
        (tmp_path / name).write_bytes(data)
        assert_raises_naming(
            DataError, lambda: load_refs(tmp_path / name), f"cannot read refs file {tmp_path / name}", "RecursionError"
        )


def test_ref_fields_of_the_wrong_type_name_the_ref(tmp_path: Path) -> None:
    """A list ann_id was a TypeError (unhashable), a text sentence_id a ValueError, a list sentence was
    read as the text "['the', 'thing']"."""
    cases = [
        ({"ann_id": [1]}, "ref 1: field 'ann_id' is [1]; expected an integer"),
        ({"ref_id": "1"}, "ref #0: field 'ref_id' is '1'; expected an integer"),
        ({"split": ["train"]}, "ref #0: field 'split' is ['train']"),
        ({"sentences": [{"sent": ["the", "thing"]}]}, "ref 1: sentence #0 has no 'sent' text"),
        ({"sentences": [{"sent": "x", "sent_id": "7"}]}, "sentence #0: field 'sent_id' is '7'"),
    ]
    for index, (fields, message) in enumerate(cases):
        root = _refer_root(tmp_path / str(index), [_refer_ref(**fields)], _coco())
        assert_raises_naming(DataError, lambda: _refer(root), message)


def test_image_sizes_and_annotation_fields_are_checked_before_any_mask_is_decoded(tmp_path: Path) -> None:
    """A negative height was pycocotools' OverflowError, a huge one a MemoryError or a crash, a missing
    annotation image_id a KeyError, a NaN or 3-number bbox reached the box prompts or a TypeError."""
    bad_coco = _coco()
    del bad_coco["annotations"][0]["image_id"]
    nan_box = _coco()
    nan_box["annotations"][0]["bbox"] = [1, 1, math.nan, 8]
    cases = [
        (_coco(height=-5), "image 1: size 10x-5 (WxH); expected positive sizes"),
        (_coco(height=10**6, width=10**6), "image 1: size 1000000x1000000"),
        (_coco(width=2.5), "image 1: field 'width' is 2.5; expected an integer"),
        (_coco(file_name=None), "image 1: field 'file_name' is None"),
        (bad_coco, "annotation 1: missing field 'image_id'"),
        (nan_box, "annotation 1: bbox [1, 1, nan, 8]; expected [x, y, w, h]"),
    ]
    for index, (coco, message) in enumerate(cases):
        root = _refer_root(tmp_path / str(index), [_refer_ref()], coco)
        assert_raises_naming(DataError, lambda: _refer(root), message)


def test_instances_file_nested_past_the_stack_is_a_data_error(tmp_path: Path) -> None:
    root = _refer_root(tmp_path, [_refer_ref()], {})
    (root / "refcoco" / "instances.json").write_text("[" * 100_000 + "]" * 100_000)
    assert_raises_naming(DataError, lambda: _refer(root), "cannot read instances file", "RecursionError")


def _grefcoco_root(root: Path, refs: list[dict]) -> Path:
    write_images(root)
    (root / "grefcoco").mkdir()
    (root / "grefcoco" / "grefs(unc).json").write_text(json.dumps(refs))
    (root / "grefcoco" / "instances.json").write_text(json.dumps(_coco()))
    return root


def _gref(ref_id: int, ann_id: Any, **fields: Any) -> dict:
    return {
        "ref_id": ref_id,
        "image_id": 1,
        "split": "val",
        "ann_id": ann_id,
        "category_id": [1],
        "sentences": [{"sent_id": ref_id, "sent": "the thing"}],
        **fields,
    }


def test_grefcoco_ann_ids_and_flags_of_the_wrong_type_name_the_ref(tmp_path: Path) -> None:
    """A text annotation id was a ValueError, ``"no_target": "false"`` a contradiction (bool("false") is True)."""
    cases = [
        (_gref(1, ["1"]), "ref 1: ann_id ['1'] must list annotation ids"),
        (_gref(1, {"1": 1}), "ref 1: ann_id {'1': 1} must list annotation ids"),
        (_gref(1, [-1], no_target="false"), "ref 1: no_target is 'false'; expected true or false"),
        (_gref(1, [1], category_id=["person"]), "ref 1: category_id ['person']; expected an integer"),
    ]
    for index, (ref, message) in enumerate(cases):
        root = _grefcoco_root(tmp_path / str(index), [ref])
        assert_raises_naming(
            DataError, lambda: GRefCocoDataset(root=root, split="val", image_dir=root / "images"), message
        )


def test_grefcoco_refs_sharing_an_id_keep_their_own_targets(tmp_path: Path) -> None:
    """Targets were kept in a dict by ref_id: the second ref's "no target" replaced the first one's object."""
    root = _grefcoco_root(tmp_path, [_gref(5, [1]), _gref(5, [-1])])
    dataset = GRefCocoDataset(root=root, split="val", image_dir=root / "images")
    assert [dataset[i].no_target for i in range(len(dataset))] == [False, True]
    assert dataset[0].mask.any() and not dataset[1].mask.any()
