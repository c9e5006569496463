"""Properties of the SimREC reader (anns/<dataset>.json + masks/<dataset>/<mask_id>.npy; ditsam.data.simrec):
any annotation file and mask files give a dataset or a DataError naming the file (and entry), never another
exception; what the data check passes reads. Found bugs are kept as plain regression tests at the end."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import event, given
from hypothesis import strategies as st
from PIL import Image

from ditsam.data.sample import DataError, accepted_sizes
from ditsam.data.simrec import SimRecDataset, available_splits
from strategies import (
    assert_raises_naming,
    broken_bytes,
    example_dir,
    hostile_texts,
    json_values,
    mutated,
    sentences,
    valid_or_documented,
)

H, W = 8, 10
IMAGE_IDS = (5, 6)
PATTERN = "img%d.png"
SPLITS = ("train", "val", "testA")


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _object_mask() -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    mask[1:4, 2:7] = 255
    return mask


#: Mask files: the stored uint8 mask, and what a mask file may be instead.
MASK_FILES = {
    "uint8": lambda: _npy(_object_mask()),
    "bool": lambda: _npy(_object_mask() > 0),
    "float_nan": lambda: _npy(np.where(_object_mask() > 0, np.nan, 0.0)),
    "empty": lambda: _npy(np.zeros((H, W), np.uint8)),
    "wrong_size": lambda: _npy(np.ones((H + 1, W), np.uint8)),
    "three_d": lambda: _npy(np.ones((H, W, 3), np.uint8)),
    "scalar": lambda: _npy(np.array(3)),
    "text": lambda: _npy(np.full((H, W), "x")),
    "structured": lambda: _npy(np.zeros((H, W), dtype=[("a", "u1"), ("b", "f4")])),
    "complex": lambda: _npy(np.ones((H, W), np.complex64)),
    "pickled": lambda: _npy(np.array([[{"a": 1}]], dtype=object)),
    "noise": lambda: b"\x93NUMPY garbage",
}


@st.composite
def simrec_entries(draw: st.DrawFn) -> dict:
    """{split: [entries]}: train one entry per object, the others one per sentence (mask_ids repeated)."""
    data: dict = {}
    mask_id = 0
    for split in draw(st.lists(st.sampled_from(SPLITS), min_size=1, max_size=3, unique=True)):
        entries = []
        for _ in range(draw(st.integers(1, 3))):
            mask_id += 1
            entry = {
                "iid": draw(st.sampled_from(IMAGE_IDS)),
                "bbox": [2, 1, 5, 3],
                "cat_id": draw(st.integers(1, 9)),
                "refs": draw(st.lists(sentences, min_size=1, max_size=2)),
                "mask_id": mask_id,
            }
            entries += [entry] if split == "train" else [{**entry, "refs": [text]} for text in entry["refs"]]
        data[split] = entries
    return data


@st.composite
def simrec_files(draw: st.DrawFn) -> tuple[bytes, dict[int, bytes]]:
    """The annotation file's bytes (mutated, broken or hostile) and a mask file per mask_id (some missing)."""
    data = draw(simrec_entries())
    mask_ids = sorted({entry["mask_id"] for entries in data.values() for entry in entries})
    ann = json.dumps(draw(mutated(data, leaves=json_values))).encode()
    kind = draw(st.sampled_from(("plain", "plain", "broken", "hostile")))
    if kind == "hostile":
        ann = draw(hostile_texts).encode()
    elif kind == "broken":
        ann = draw(broken_bytes(ann))
    masks = {}
    for mask_id in mask_ids:
        kind = draw(st.sampled_from(["uint8", "uint8", "missing", *MASK_FILES]))
        if kind != "missing":
            masks[mask_id] = (
                MASK_FILES[kind]()
                if kind != "uint8" or draw(st.booleans())
                else draw(broken_bytes(_npy(_object_mask())))
            )
    return ann, masks


@given(files=simrec_files(), split=st.sampled_from(SPLITS), mode=st.sampled_from(("train", "eval")))
def test_any_simrec_files_give_a_dataset_or_a_named_error(
    files: tuple[bytes, dict[int, bytes]], split: str, mode: str
) -> None:
    ann_data, masks = files
    with example_dir() as root:
        ann_file, mask_dir, image_dir = root / "anns" / "refcoco.json", root / "masks" / "refcoco", root / "images"
        for folder in (ann_file.parent, mask_dir, image_dir):
            folder.mkdir(parents=True)
        ann_file.write_bytes(ann_data)
        for mask_id, data in masks.items():
            (mask_dir / f"{mask_id}.npy").write_bytes(data)
        for iid in IMAGE_IDS:
            Image.new("RGB", (W, H), (5, 50, 150)).save(image_dir / (PATTERN % iid))
        valid_or_documented(lambda: available_splits(ann_file), DataError, ann_file)
        dataset = valid_or_documented(
            lambda: SimRecDataset(
                ann_file=ann_file, mask_dir=mask_dir, image_dir=image_dir, split=split, mode=mode, image_pattern=PATTERN
            ),
            DataError,
            ann_file,
        )
        if dataset is None:
            return
        checked = dataset.validate()
        assert all(str(ann_file) in message for _, message in checked), checked
        bad = {index for index, _ in checked}
        event(f"dataset built; objects passing the data check: {'some' if len(bad) < dataset.num_objects else 'none'}")
        for index in range(len(dataset)):
            sample = valid_or_documented(lambda: dataset[index], DataError, mask_dir, "ref ")
            if dataset._index[index][0] not in bad:
                assert sample is not None and sample.mask.dtype == bool and sample.mask.any()
                assert (sample.mask.shape[1], sample.mask.shape[0]) in accepted_sizes(sample.image_path)


# ---------------------------------------------------------------------------------------------------
# Regressions: the examples the properties found
# ---------------------------------------------------------------------------------------------------
def _root(root: Path, entries: Any, masks: dict[int, bytes] | None = None) -> SimRecDataset:
    (root / "anns").mkdir(parents=True)
    (root / "anns" / "refcoco.json").write_text(json.dumps(entries))
    (root / "masks" / "refcoco").mkdir(parents=True)
    for mask_id, data in (masks or {}).items():
        (root / "masks" / "refcoco" / f"{mask_id}.npy").write_bytes(data)
    (root / "images").mkdir()
    Image.new("RGB", (W, H)).save(root / "images" / (PATTERN % 5))
    return SimRecDataset.from_root(
        root=root, dataset="refcoco", image_dir=root / "images", split="train", image_pattern=PATTERN
    )


def _entry(**fields: Any) -> dict:
    return {"iid": 5, "bbox": [2, 1, 5, 3], "cat_id": 1, "refs": ["a dog"], "mask_id": 1, **fields}


def test_mask_file_of_a_non_numeric_dtype_is_a_problem_of_its_entry(tmp_path: Path) -> None:
    """A structured-dtype .npy mask escaped the data check as numpy's TypeError from mask.any()."""
    dataset = _root(tmp_path, {"train": [_entry()]}, {1: MASK_FILES["structured"]()})
    [(_, message)] = dataset.validate()
    assert "train mask_id 1" in message and "holds [('a', 'u1'), ('b', '<f4')] values" in message
    assert_raises_naming(DataError, lambda: dataset[0], "1.npy holds")


def test_annotation_file_nested_past_the_stack_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "anns").mkdir()
    (tmp_path / "anns" / "refcoco.json").write_text("[" * 100_000 + "]" * 100_000)
    assert_raises_naming(
        DataError,
        lambda: available_splits(tmp_path / "anns" / "refcoco.json"),
        "cannot read annotation file",
        "recursion",
    )


def test_entry_category_and_box_of_the_wrong_type_name_the_entry(tmp_path: Path) -> None:
    """A text cat_id was int()'s ValueError, None a TypeError; a NaN or negative box reached the box prompts."""
    cases = [
        (_entry(cat_id="dog"), "train[0]: field 'cat_id' is 'dog'; expected an integer"),
        (_entry(cat_id=None), "train[0]: field 'cat_id' is None"),
        (_entry(bbox=[1, 1, math.nan, 2]), "train[0]: bbox [1, 1, nan, 2]; expected [x, y, w, h]"),
        (_entry(bbox=[1, 1, -3, 2]), "train[0]: bbox [1, 1, -3, 2]"),
        (_entry(bbox=["1", 1, 2, 2]), "train[0]: bbox ['1', 1, 2, 2]"),
    ]
    for index, (entry, message) in enumerate(cases):
        assert_raises_naming(DataError, lambda: _root(tmp_path / str(index), {"train": [entry]}), message)
