"""SimRecDataset on generated data in the SimREC / reference-DIT layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ditsam.data import DataError, SimRecDataset, list_splits, open_dataset
from ditsam.data.simrec import available_splits

H, W = 8, 10


def _mask(ref_id: int) -> np.ndarray:
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[ref_id % H, : ref_id + 1] = 1 if ref_id % 2 else 255  # any nonzero value is the object
    return mask


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    """anns/refcoco.json, masks/refcoco/*.npy and images/, as the reference code lays them out."""
    anns = {
        # train: one entry per object, all its sentences
        "train": [
            {"iid": 5, "bbox": [0, 1, 2, 1], "cat_id": 1, "refs": ["left  dog", "the dog"], "mask_id": 1},
            {"iid": 6, "bbox": [0, 2, 3, 1], "cat_id": 2, "refs": ["a cat"], "mask_id": 2},
        ],
        # val: one entry per sentence, objects repeated
        "val": [
            {"iid": 5, "bbox": [0, 3, 4, 1], "cat_id": 1, "refs": ["man"], "mask_id": 3},
            {"iid": 5, "bbox": [0, 3, 4, 1], "cat_id": 1, "refs": ["tall man"], "mask_id": 3},
            {"iid": 6, "bbox": [0, 4, 5, 1], "cat_id": 3, "refs": ["bike"], "mask_id": 4},
        ],
        "testA": [{"iid": 7, "bbox": [0, 5, 6, 1], "cat_id": 1, "refs": ["boy"], "mask_id": 5}],
    }
    (tmp_path / "anns").mkdir()
    (tmp_path / "anns" / "refcoco.json").write_text(json.dumps(anns))
    (tmp_path / "masks" / "refcoco").mkdir(parents=True)
    for ref_id in range(1, 6):
        np.save(tmp_path / "masks" / "refcoco" / f"{ref_id}.npy", _mask(ref_id))
    (tmp_path / "images").mkdir()
    for iid in (5, 6, 7):
        Image.new("RGB", (W, H)).save(tmp_path / "images" / f"COCO_train2014_{iid:012d}.jpg")
    return tmp_path


def _dataset(root: Path, split: str, mode: str = "eval", **kwargs) -> SimRecDataset:
    return SimRecDataset(
        ann_file=root / "anns" / "refcoco.json",
        mask_dir=root / "masks" / "refcoco",
        image_dir=root / "images",
        split=split,
        mode=mode,
        **kwargs,
    )


def test_counts_per_split_and_mode(root):
    assert [len(_dataset(root, "train", m)) for m in ("train", "eval")] == [2, 3]
    assert [len(_dataset(root, "val", m)) for m in ("train", "eval")] == [2, 3]  # val entries grouped per object
    assert available_splits(root / "anns" / "refcoco.json") == ["train", "val", "testA"]


def test_train_items(root):
    dataset = _dataset(root, "train", "train")
    sample = dataset[0]
    assert sample.sentences == ["left dog", "the dog"] and sample.sent_ids == [0, 1]
    assert (sample.ref_id, sample.ann_id, sample.image_id, sample.category_id) == (1, -1, 5, 1)
    assert sample.image_path == str(root / "images" / "COCO_train2014_000000000005.jpg")
    assert sample.mask.dtype == bool and sample.mask.shape == (H, W)
    np.testing.assert_array_equal(sample.mask, _mask(1) != 0)
    assert sample.bbox == (0.0, 1.0, 2.0, 1.0)


def test_eval_items_one_per_sentence(root):
    dataset = _dataset(root, "val", "eval")
    items = [dataset[i] for i in range(len(dataset))]
    assert [s.sentences for s in items] == [["man"], ["tall man"], ["bike"]]
    assert [s.sent_ids for s in items] == [[0], [1], [2]]
    assert [s.ref_id for s in items] == [3, 3, 4]
    grouped = _dataset(root, "val", "train")[0]
    assert grouped.sentences == ["man", "tall man"]


def test_image_pattern_and_from_root(root):
    for iid in (5, 6):
        Image.new("RGB", (W, H)).save(root / "images" / f"{iid}.png")
    dataset = SimRecDataset.from_root(
        root=root, dataset="refcoco", image_dir=root / "images", split="train", image_pattern="%d.png"
    )
    assert dataset[0].image_path.endswith("images/5.png")
    spec = {"format": "simrec", "root": root, "dataset": "refcoco", "image_dir": root / "images"}
    assert len(open_dataset({**spec, "split": "testA"})) == 1
    assert list_splits(spec) == ["train", "val", "testA"]


def test_unknown_split_lists_available(root):
    with pytest.raises(
        DataError, match=r"unknown split 'test' in .*refcoco\.json; available splits: train, val, testA"
    ):
        _dataset(root, "test")


def test_missing_image_mask_and_files(root):
    (root / "images" / "COCO_train2014_000000000007.jpg").unlink()
    with pytest.raises(DataError, match=r"image file not found: .*COCO_train2014_000000000007\.jpg"):
        _dataset(root, "testA")[0]
    (root / "masks" / "refcoco" / "2.npy").unlink()
    with pytest.raises(DataError, match=r"mask file not found: .*2\.npy"):
        _dataset(root, "train")[2]
    with pytest.raises(DataError, match=r"annotation file not found: .*nothing\.json"):
        SimRecDataset(ann_file=root / "nothing.json", mask_dir=root, image_dir=root, split="train")


def test_corrupt_and_pickled_masks(root):
    (root / "masks" / "refcoco" / "1.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataError, match=r"cannot read mask file .*1\.npy"):
        _dataset(root, "train")[0]
    np.save(root / "masks" / "refcoco" / "2.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"cannot read mask file .*2\.npy"):
        _dataset(root, "train")[2]
    # A header whose dict literal is cut mid-tuple: numpy's parser raises tokenize.TokenError (found by the
    # property tests).
    header = b"{'descr': '|u1', 'fortran_order': False, 'shape': (8, 10(, }".ljust(117) + b"\n"
    (root / "masks" / "refcoco" / "2.npy").write_bytes(b"\x93NUMPY\x01\x00v\x00" + header + bytes(80))
    with pytest.raises(DataError, match=r"cannot read mask file .*2\.npy"):
        _dataset(root, "train")[2]
    np.save(root / "masks" / "refcoco" / "3.npy", np.zeros((2, H, W), np.uint8))
    with pytest.raises(DataError, match=r"has shape \(2, 8, 10\); expected \(H, W\)"):
        _dataset(root, "val")[0]


def test_malformed_entries(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"train": [{"iid": 1, "bbox": [0, 0, 1, 1], "refs": ["a"]}]}))
    with pytest.raises(DataError, match=r"x\.json: train\[0\]: missing field\(s\) mask_id"):
        SimRecDataset(ann_file=path, mask_dir=tmp_path, image_dir=tmp_path, split="train")
    path.write_text("{not json")
    with pytest.raises(DataError, match=r"cannot read annotation file .*x\.json"):
        SimRecDataset(ann_file=path, mask_dir=tmp_path, image_dir=tmp_path, split="train")
