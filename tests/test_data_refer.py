"""ReferDataset against the real RefCOCOg-umd sample, and against small generated REFER data."""

from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from ditsam.data import DataError, open_dataset
from ditsam.data.refer import ReferDataset, available_splits, load_refs
from helpers import uncompressed_counts

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "refcocog-umd-sample"
FIXTURE_ROOT, FIXTURE_NAME = FIXTURE.parent, FIXTURE.name
needs_fixture = pytest.mark.skipif(not FIXTURE.is_dir(), reason=f"REFER sample not found at {FIXTURE}")


# ---------------------------------------------------------------- the real RefCOCOg-umd sample


@pytest.fixture(scope="module")
def fixture_refs() -> list[dict]:
    with open(FIXTURE / "refs(umd).p", "rb") as handle:
        return pickle.load(handle)  # trusted test fixture; the reader itself never uses plain pickle


@pytest.fixture(scope="module")
def coco() -> COCO:
    return COCO(os.fspath(FIXTURE / "instances.json"))


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory, coco: COCO) -> Path:
    """Blank images of the sizes instances.json gives, named as in COCO."""
    folder = tmp_path_factory.mktemp("train2014")
    for image in coco.dataset["images"]:
        Image.new("RGB", (image["width"], image["height"])).save(folder / image["file_name"])
    return folder


def _fixture_dataset(split: str, mode: str, image_dir: Path, **kwargs) -> ReferDataset:
    return ReferDataset(
        root=FIXTURE_ROOT, dataset=FIXTURE_NAME, split_by="umd", split=split, image_dir=image_dir, mode=mode, **kwargs
    )


@needs_fixture
@pytest.mark.parametrize("split, objects, sentences", [("train", 5, 9), ("val", 5, 10), ("test", 5, 9)])
def test_counts_per_split_and_mode(split, objects, sentences, fixture_refs, image_dir):
    refs = [ref for ref in fixture_refs if ref["split"] == split]
    assert len(refs) == objects and sum(len(ref["sentences"]) for ref in refs) == sentences
    assert len(_fixture_dataset(split, "train", image_dir)) == objects
    eval_set = _fixture_dataset(split, "eval", image_dir)
    assert len(eval_set) == sentences
    assert (eval_set.num_objects, eval_set.num_sentences, eval_set.num_images) == (objects, sentences, objects)


@needs_fixture
def test_available_splits():
    assert available_splits(root=FIXTURE_ROOT, dataset=FIXTURE_NAME, split_by="umd") == ["train", "val", "test"]


@needs_fixture
@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_eval_items_match_pickle_and_pycocotools(split, fixture_refs, coco, image_dir):
    sentences = {s["sent_id"]: (ref, s) for ref in fixture_refs for s in ref["sentences"] if ref["split"] == split}
    dataset = _fixture_dataset(split, "eval", image_dir)
    seen = []
    for sample in (dataset[i] for i in range(len(dataset))):
        assert len(sample.sentences) == 1 and len(sample.sent_ids) == 1
        ref, sentence = sentences[sample.sent_ids[0]]
        seen.append(sample.sent_ids[0])
        assert sample.sentences[0] == sentence["sent"]
        assert (sample.ref_id, sample.ann_id, sample.image_id, sample.category_id) == (
            ref["ref_id"],
            ref["ann_id"],
            ref["image_id"],
            ref["category_id"],
        )
        ann = coco.anns[ref["ann_id"]]
        image = coco.imgs[ann["image_id"]]
        assert sample.image_path == os.fspath(image_dir / image["file_name"])
        assert sample.mask.dtype == bool and sample.mask.shape == (image["height"], image["width"])
        np.testing.assert_array_equal(sample.mask, coco.annToMask(ann).astype(bool))
        assert sample.mask.any()
        assert sample.bbox == pytest.approx(tuple(ann["bbox"]))
    assert sorted(seen) == sorted(sentences)  # every sentence exactly once


@needs_fixture
def test_a_multi_part_annotation_is_the_union(fixture_refs, coco, image_dir):
    multi = [ref for ref in fixture_refs if len(coco.anns[ref["ann_id"]]["segmentation"]) > 1]
    assert multi, "the sample should contain a multi-polygon annotation"
    ref = multi[0]
    dataset = _fixture_dataset(ref["split"], "train", image_dir)
    sample = next(dataset[i] for i in range(len(dataset)) if dataset[i].ref_id == ref["ref_id"])
    ann = coco.anns[ref["ann_id"]]
    height, width = coco.imgs[ann["image_id"]]["height"], coco.imgs[ann["image_id"]]["width"]
    parts = [mask_utils.decode(mask_utils.frPyObjects([poly], height, width))[..., 0] for poly in ann["segmentation"]]
    np.testing.assert_array_equal(sample.mask, np.logical_or.reduce([p.astype(bool) for p in parts]))


@needs_fixture
def test_train_mode_has_all_sentences_of_the_object(fixture_refs, image_dir):
    dataset = _fixture_dataset("val", "train", image_dir)
    by_ref = {ref["ref_id"]: ref for ref in fixture_refs}
    for i in range(len(dataset)):
        sample = dataset[i]
        ref = by_ref[sample.ref_id]
        assert sample.sentences == [s["sent"] for s in ref["sentences"]]
        assert sample.sent_ids == ref["sent_ids"]


@needs_fixture
def test_raw_text_field(fixture_refs, image_dir):
    dataset = _fixture_dataset("train", "eval", image_dir, text_field="raw")
    raw = {s["sent_id"]: " ".join(s["raw"].split()) for ref in fixture_refs for s in ref["sentences"]}
    assert all(dataset[i].sentences[0] == raw[dataset[i].sent_ids[0]] for i in range(len(dataset)))
    assert any(dataset[i].sentences[0] != dataset[i].sentences[0].lower() for i in range(len(dataset)))


@needs_fixture
def test_unknown_split_lists_available(image_dir):
    with pytest.raises(DataError, match=r"unknown split 'testA'.*available splits: train, val, test"):
        _fixture_dataset("testA", "eval", image_dir)


@needs_fixture
def test_missing_image_raises_only_when_read(tmp_path):
    dataset = _fixture_dataset("val", "eval", tmp_path)  # no images there
    assert len(dataset) == 10
    with pytest.raises(DataError, match=r"image file not found: .*COCO_train2014_\d{12}\.jpg"):
        dataset[0]


@needs_fixture
def test_open_dataset_and_bad_mode(image_dir):
    spec = {"format": "refer", "root": FIXTURE_ROOT, "dataset": FIXTURE_NAME, "split_by": "umd", "image_dir": image_dir}
    assert len(open_dataset({**spec, "split": "test", "mode": "train"})) == 5
    with pytest.raises(DataError, match="unknown mode 'training'"):
        open_dataset({**spec, "split": "test", "mode": "training"})
    with pytest.raises(DataError, match="unknown key.*splitBy"):
        open_dataset({**spec, "split": "test", "splitBy": "umd"})


# ---------------------------------------------------------------- generated REFER data


def _square(height: int, width: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _write_refer(root: Path, refs: list[dict], annotations: list[dict], *, dataset="refcoco", split_by="unc") -> Path:
    folder = root / dataset
    folder.mkdir(parents=True)
    (folder / f"refs({split_by}).p").write_bytes(pickle.dumps(refs, protocol=2))
    images = [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "height": 12, "width": 10}]
    (folder / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations, "categories": []}))
    return folder


def _ref(ref_id: int, ann_id: int, split: str, *sentences: str) -> dict:
    return {
        "ref_id": ref_id,
        "ann_id": ann_id,
        "image_id": 1,
        "category_id": 3,
        "split": split,
        "file_name": f"COCO_train2014_000000000001_{ann_id}.jpg",
        "sent_ids": [ref_id * 10 + i for i in range(len(sentences))],
        "sentences": [
            {"sent_id": ref_id * 10 + i, "raw": s, "sent": s.lower(), "tokens": s.split()}
            for i, s in enumerate(sentences)
        ],
    }


def _ann(ann_id: int, segmentation) -> dict:
    return {
        "id": ann_id,
        "image_id": 1,
        "category_id": 3,
        "bbox": [1, 2, 3, 4],
        "area": 1,
        "iscrowd": 0,
        "segmentation": segmentation,
    }


@pytest.fixture()
def rle_root(tmp_path: Path) -> tuple[Path, dict[int, np.ndarray]]:
    a = _square(12, 10, 1, 5, 2, 6)
    b = _square(12, 10, 6, 11, 0, 3)
    c = _square(12, 10, 0, 12, 9, 10)
    compressed = mask_utils.encode(np.asfortranarray(a.astype(np.uint8)))
    annotations = [
        _ann(1, {"size": [12, 10], "counts": compressed["counts"].decode("ascii")}),
        _ann(2, {"size": [12, 10], "counts": uncompressed_counts(b)}),
        # two polygon parts: squares given by their corners (pixel centres inside the outline)
        _ann(3, [[0.5, 0.5, 3.5, 0.5, 3.5, 3.5, 0.5, 3.5], [6.5, 7.5, 8.5, 7.5, 8.5, 10.5, 6.5, 10.5], [8, 0, 9, 1]]),
        _ann(
            4,
            [
                {"size": [12, 10], "counts": uncompressed_counts(b)},
                {"size": [12, 10], "counts": uncompressed_counts(c)},
            ],
        ),
    ]
    refs = [
        _ref(1, 1, "train", "Left  THING"),
        _ref(2, 2, "train", "b"),
        _ref(3, 3, "val", "c", "cc"),
        _ref(4, 4, "testA", "d"),
    ]
    _write_refer(tmp_path, refs, annotations)
    poly = mask_utils.decode(mask_utils.frPyObjects(annotations[2]["segmentation"][:2], 12, 10)).any(axis=2)
    return tmp_path, {1: a, 2: b, 3: poly, 4: b | c}


def _generated(root: Path, split: str, mode: str = "eval", **kwargs) -> ReferDataset:
    return ReferDataset(root=root, dataset="refcoco", split_by="unc", split=split, image_dir=root, mode=mode, **kwargs)


def test_rle_compressed_uncompressed_and_polygon_masks(rle_root):
    root, expected = rle_root
    Image.new("RGB", (10, 12)).save(root / "COCO_train2014_000000000001.jpg")
    for split in ("train", "val", "testA"):
        dataset = _generated(root, split, "train")
        for i in range(len(dataset)):
            sample = dataset[i]
            np.testing.assert_array_equal(sample.mask, expected[sample.ref_id])
    # both polygon parts; the 2-point part is skipped, not read as a box as pycocotools would
    assert expected[3][:4, :4].any() and expected[3][7:, 6:].any() and not expected[3][0, 8:].any()
    assert _generated(root, "train")[0].sentences == ["left thing"]
    assert available_splits(root=root, dataset="refcoco", split_by="unc") == ["train", "val", "testA"]


def test_missing_refs_and_instances_files(rle_root):
    root, _ = rle_root
    with pytest.raises(DataError, match=r"refs file not found: .*refs\(umd\)\.p; refs files there: refs\(unc\)\.p"):
        ReferDataset(root=root, dataset="refcoco", split_by="umd", split="train", image_dir=root)
    (root / "refcoco" / "instances.json").unlink()
    with pytest.raises(DataError, match=r"instances file not found: .*instances\.json"):
        _generated(root, "train")


def test_ref_without_annotation(tmp_path):
    _write_refer(tmp_path, [_ref(1, 99, "train", "x")], [_ann(1, [[0, 0, 4, 0, 4, 4]])])
    with pytest.raises(DataError, match=r"ref 1: annotation 99 is not in .*instances\.json"):
        _generated(tmp_path, "train")


@pytest.mark.parametrize("segmentation", [None, [], "missing"])
def test_annotation_without_segmentation(tmp_path, segmentation):
    ann = _ann(1, segmentation)
    if segmentation == "missing":
        del ann["segmentation"]
    _write_refer(tmp_path, [_ref(1, 1, "train", "x")], [ann])
    with pytest.raises(DataError, match=r"ref 1: annotation 1 in .*instances\.json has no segmentation"):
        _generated(tmp_path, "train")


def test_bad_rle_size_raises_when_read(tmp_path):
    _write_refer(tmp_path, [_ref(1, 1, "train", "x")], [_ann(1, {"size": [5, 5], "counts": [25]})])
    Image.new("RGB", (10, 12)).save(tmp_path / "COCO_train2014_000000000001.jpg")
    dataset = _generated(tmp_path, "train")
    with pytest.raises(DataError, match=r"ref 1 \(annotation 1\): RLE size \[5, 5\] does not match"):
        dataset[0]


class _RunsShell:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_crafted_pickle_raises_and_runs_nothing(tmp_path, protocol):
    marker = tmp_path / "pwned"
    folder = tmp_path / "refcoco"
    folder.mkdir()
    path = folder / "refs(unc).p"
    path.write_bytes(pickle.dumps([_RunsShell(f"touch {marker}")], protocol=protocol))
    with pytest.raises(DataError, match=r"cannot read refs file .*refs\(unc\)\.p: .*refusing to load global"):
        _generated(tmp_path, "train")
    with pytest.raises(DataError):
        load_refs(path)
    assert not marker.exists()


def test_truncated_pickle(tmp_path):
    folder = tmp_path / "refcoco"
    folder.mkdir()
    (folder / "refs(unc).p").write_bytes(pickle.dumps([_ref(1, 1, "train", "x")], protocol=2)[:40])
    with pytest.raises(DataError, match=r"cannot read refs file .*refs\(unc\)\.p"):
        _generated(tmp_path, "train")


def _py2_pickle(obj) -> bytes:
    """Pickle as Python 2's cPickle (protocol 2) does: str objects as byte strings (opcode U/T)."""

    def emit(value) -> bytes:
        if isinstance(value, dict):
            return b"}" + b"".join(emit(k) + emit(v) + b"s" for k, v in value.items())
        if isinstance(value, list):
            return b"]" + b"".join(emit(v) + b"a" for v in value)
        if isinstance(value, (str, bytes)):
            data = value.encode("utf-8") if isinstance(value, str) else value
            return (b"U" + bytes([len(data)]) if len(data) < 256 else b"T" + struct.pack("<i", len(data))) + data
        if isinstance(value, int):
            return b"J" + struct.pack("<i", value)
        raise TypeError(value)

    return b"\x80\x02" + emit(obj) + b"."


def test_python2_protocol2_pickle(tmp_path):
    ref = _ref(1, 1, "train", "the café on the left")
    ref["sentences"].append(
        {"sent_id": 11, "raw": b"na\xefve", "sent": b"na\xefve", "tokens": []}
    )  # Latin-1, not UTF-8
    ref["sent_ids"].append(11)
    folder = tmp_path / "refcoco"
    folder.mkdir()
    (folder / "refs(unc).p").write_bytes(_py2_pickle([ref]))
    (folder / "instances.json").write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.jpg", "height": 4, "width": 4}],
                "annotations": [_ann(1, [[0, 0, 3, 0, 3, 3]])],
            }
        )
    )
    refs = load_refs(folder / "refs(unc).p")
    assert refs[0]["sentences"][0]["raw"] == "the café on the left"
    dataset = _generated(tmp_path, "train", "eval")
    assert [dataset._objects[0].sentences] == [("the café on the left", "naïve")]
    assert dataset._objects[0].sent_ids == (10, 11)
