"""GRefCocoDataset on a small gRefCOCO-layout fixture written here: one, several, no target; crowd parts."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ditsam.data import DataError, GRefCocoDataset, list_splits, open_dataset

HEIGHT, WIDTH = 20, 30


def _sentence(sent_id: int, text: str) -> dict:
    return {"sent_id": sent_id, "sent": text, "raw": text.capitalize() + ".", "tokens": text.split()}


def _ref(ref_id: int, ann_id: list[int], split: str, sentences: list[str], **extra) -> dict:
    sents = [_sentence(ref_id * 10 + i, text) for i, text in enumerate(sentences)]
    return {
        "ref_id": ref_id,
        "image_id": 7,
        "split": split,
        "ann_id": ann_id,
        "category_id": [1] * len(ann_id),
        "sentences": sents,
        "sent_ids": [s["sent_id"] for s in sents],
        "file_name": "COCO_train2014_000000000007_x.jpg",
        **extra,
    }


def _write(root: Path, refs: list[dict], *, pickled: bool = False) -> Path:
    folder = root / "grefcoco"
    folder.mkdir(parents=True, exist_ok=True)
    annotations = [
        # 1: rectangle rows 2-5, cols 3-8 (polygon); 2: rows 10-13, cols 20-25; 3: crowd, rows 15-18 everywhere.
        {
            "id": 1,
            "image_id": 7,
            "category_id": 1,
            "iscrowd": 0,
            "bbox": [3, 2, 6, 4],
            "segmentation": [[3, 2, 9, 2, 9, 6, 3, 6]],
        },
        {
            "id": 2,
            "image_id": 7,
            "category_id": 1,
            "iscrowd": 0,
            "bbox": [20, 10, 6, 4],
            "segmentation": [[20, 10, 26, 10, 26, 14, 20, 14]],
        },
        {
            "id": 3,
            "image_id": 7,
            "category_id": 1,
            "iscrowd": 1,
            "bbox": [0, 15, 30, 4],
            "segmentation": [[0, 15, 30, 15, 30, 19, 0, 19]],
        },
    ]
    instances = {
        "images": [{"id": 7, "file_name": "COCO_train2014_000000000007.jpg", "height": HEIGHT, "width": WIDTH}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "person"}],
    }
    (folder / "instances.json").write_text(json.dumps(instances))
    if pickled:
        (folder / "grefs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    else:
        (folder / "grefs(unc).json").write_text(json.dumps(refs))
    images = root / "train2014"
    images.mkdir(exist_ok=True)
    Image.new("RGB", (WIDTH, HEIGHT)).save(images / "COCO_train2014_000000000007.jpg")
    return folder


REFS = [
    _ref(1, [1], "val", ["man on the left", "left guy"]),
    _ref(2, [1, 2], "val", ["both men"]),
    _ref(3, [2, 3], "val", ["people on the right"]),
    _ref(4, [-1], "val", ["the dog"], no_target=True),
    _ref(5, [-1], "testA", ["a cat"]),
    _ref(6, [2], "train", ["right man"]),
]


def _rect(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[y0:y1, x0:x1] = True
    return mask


@pytest.mark.parametrize("pickled", [False, True])
def test_single_multi_crowd_and_no_target(tmp_path: Path, pickled: bool) -> None:
    folder = _write(tmp_path, REFS, pickled=pickled)
    data = GRefCocoDataset(root=tmp_path, split="val", image_dir=tmp_path / "train2014")
    assert data.generalized and len(data) == 5 and data.num_objects == 4
    samples = [data[i] for i in range(len(data))]
    assert [s.sentences[0] for s in samples] == [
        "man on the left",
        "left guy",
        "both men",
        "people on the right",
        "the dog",
    ]
    one, multi, crowd, none = samples[0].mask, samples[2].mask, samples[3].mask, samples[4].mask
    assert np.array_equal(one, _rect(2, 6, 3, 9))
    assert np.array_equal(multi, _rect(2, 6, 3, 9) | _rect(10, 14, 20, 26))
    # The crowd part (rows 15-18) is left out of the union.
    assert np.array_equal(crowd, _rect(10, 14, 20, 26))
    assert none.shape == (HEIGHT, WIDTH) and not none.any() and samples[4].no_target
    assert not any(s.no_target for s in samples[:4])
    assert samples[2].ann_id == 1 and samples[4].ann_id == -1 and samples[4].ref_id == 4
    assert samples[4].image_path.endswith("COCO_train2014_000000000007.jpg")
    refs_file = folder / ("grefs(unc).p" if pickled else "grefs(unc).json")
    assert data.source == {"refs_file": str(refs_file), "sha256": hashlib.sha256(refs_file.read_bytes()).hexdigest()}
    # A no-target ref without the optional flag is read from ann_id alone.
    test_a = GRefCocoDataset(root=tmp_path, split="testA", image_dir=tmp_path / "train2014")
    assert test_a[0].no_target and not test_a[0].mask.any()


def test_open_dataset_modes_and_splits(tmp_path: Path) -> None:
    _write(tmp_path, REFS)
    spec = {"format": "grefcoco", "root": str(tmp_path), "image_dir": str(tmp_path / "train2014")}
    assert list_splits(spec) == ["train", "val", "testA"]
    train = open_dataset({**spec, "split": "val", "mode": "train"})
    assert len(train) == 4 and train[0].sentences == ["man on the left", "left guy"]
    with pytest.raises(DataError, match="unknown split 'testB'.*available splits: train, val, testA"):
        open_dataset({**spec, "split": "testB"})


def test_no_target_flag_disagreeing_with_ann_id_names_the_ref(tmp_path: Path) -> None:
    _write(tmp_path, [_ref(11, [1], "val", ["a man"], no_target=True)])
    with pytest.raises(DataError, match=r"ref 11: no_target is True but ann_id is \[1\]"):
        GRefCocoDataset(root=tmp_path, split="val", image_dir=tmp_path / "train2014")
    _write(tmp_path, [_ref(12, [-1], "val", ["a dog"], no_target=False)])
    with pytest.raises(DataError, match=r"ref 12: no_target is False but ann_id is \[-1\]"):
        GRefCocoDataset(root=tmp_path, split="val", image_dir=tmp_path / "train2014")


@pytest.mark.parametrize(
    "ref, message",
    [
        (_ref(13, [1, -1], "val", ["x"]), r"ref 13: ann_id \[1, -1\] must list annotation ids"),
        (_ref(14, [99], "val", ["x"]), "ref 14: annotation 99 is not in"),
        ({**_ref(15, [1], "val", ["x"]), "image_id": 8}, "ref 15: image 8 is not in"),
    ],
)
def test_bad_records_are_named(tmp_path: Path, ref: dict, message: str) -> None:
    _write(tmp_path, [ref])
    with pytest.raises(DataError, match=message):
        GRefCocoDataset(root=tmp_path, split="val", image_dir=tmp_path / "train2014")


def test_missing_file_and_hostile_pickle(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"gRefCOCO refs file not found: .*grefs\(unc\)\.json"):
        GRefCocoDataset(root=tmp_path, split="val", image_dir=tmp_path)
    folder = _write(tmp_path, REFS, pickled=True)

    class Exploit:
        def __reduce__(self):
            return (print, ("ran code",))

    (folder / "grefs(unc).p").write_bytes(pickle.dumps([Exploit()]))
    with pytest.raises(DataError, match="refusing to load global"):
        GRefCocoDataset(root=tmp_path, split="val", image_dir=tmp_path / "train2014")
