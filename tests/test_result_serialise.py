"""SegmentationResult's serialisations (to_rle, to_dict, mask_image), its boxes, multimask=True and BGR input."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from ditsam.api import SegmentationResult, Segmenter
from ditsam.data.segmentation import decode_segmentation, encode_rle


def _result(mask: np.ndarray, **fields) -> SegmentationResult:
    return SegmentationResult(mask=mask, score=0.1234567891, logits=np.zeros(mask.shape, np.float32), **fields)


@pytest.fixture(scope="module")
def seg(checkpoint: Path) -> Segmenter:
    return Segmenter.from_pretrained(checkpoint, device="cpu", dtype="fp32")


def test_boxes_rle_and_record_of_a_hand_made_mask():
    mask = np.zeros((5, 7), bool)
    mask[1:3, 2:6] = True  # rows 1-2, columns 2-5
    result = _result(mask, sentence="the bar", image="/data/a.png")
    assert result.bbox == result.bbox_xywh == (2, 1, 4, 2)
    assert result.bbox_xyxy == (2, 1, 6, 3)  # continuous edges, the convention of predict(boxes=...)
    rle = result.to_rle()
    assert rle["size"] == [5, 7] and isinstance(rle["counts"], str)
    decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")})
    np.testing.assert_array_equal(decoded.astype(bool), mask)  # pycocotools reads it back
    np.testing.assert_array_equal(decode_segmentation(rle, height=5, width=7), mask)
    record = result.to_dict(id=3, split="val")
    assert record == {
        "image": "/data/a.png",
        "sentence": "the bar",
        "score": 0.123457,
        "segmentation": rle,
        "bbox": [2, 1, 4, 2],
        "area": 8,
        "present": True,
        "id": 3,
        "split": "val",
    }
    json.dumps(record)  # JSON-ready as it is
    picture = result.mask_image()
    assert picture.mode == "L" and picture.size == (7, 5)
    np.testing.assert_array_equal(np.asarray(picture), np.where(mask, 255, 0))


def test_an_empty_mask_serialises_and_its_boxes_are_zero():
    result = _result(np.zeros((4, 3), bool), present=False, presence=0.01)
    assert result.bbox_xyxy == result.bbox_xywh == (0, 0, 0, 0)
    record = result.to_dict()
    assert "image" not in record and "sentence" not in record  # unknown to a result built by hand
    assert (record["area"], record["present"], record["presence"]) == (0, False, 0.01)
    assert not mask_utils.decode({"size": [4, 3], "counts": record["segmentation"]["counts"].encode()}).any()


def test_encode_rle_refuses_a_mask_that_is_not_2d():
    with pytest.raises(ValueError, match=r"must be 2-D \(H, W\), got shape \(2, 2, 2\)"):
        encode_rle(np.zeros((2, 2, 2), bool))


def test_a_predicted_box_goes_back_in_as_a_box_prompt(seg: Segmenter):
    pixels = np.random.default_rng(0).integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    result = seg.predict(pixels, "the red circle")
    box = result.bbox_xyxy if result.area else (5, 5, 20, 20)
    again = seg.predict(pixels, "the red circle", boxes=box)  # accepted as it is: the same convention
    assert again.mask.shape == (40, 60)
    assert result.sentence == "the red circle" and result.image is None  # an array has no path


def test_predict_records_the_image_path_and_sentence(seg: Segmenter, tmp_path: Path, monkeypatch):
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(tmp_path / "a.png")
    monkeypatch.chdir(tmp_path)
    record = seg.predict("a.png", "the blue square").to_dict(id=0)
    assert record["image"] == str(tmp_path / "a.png") and record["sentence"] == "the blue square"
    np.testing.assert_array_equal(
        decode_segmentation(record["segmentation"], height=20, width=30), seg.predict("a.png", "the blue square").mask
    )


def test_multimask_returns_three_masks_and_keeps_the_best(seg: Segmenter, caplog):
    pixels = np.random.default_rng(1).integers(0, 256, size=(33, 47, 3), dtype=np.uint8)
    single = seg.predict(pixels, "the red circle")
    assert single.masks.shape == (1, 33, 47) and single.scores.shape == (1,) and single.mask_index == 0
    with caplog.at_level(logging.WARNING, logger="ditsam.api"):
        results = seg.predict(pixels, ["the red circle", "the blue square"], multimask=True)
    assert "trained with one mask" in caplog.text
    for result in results:
        assert result.masks.shape == (3, 33, 47) and result.masks.dtype == np.bool_
        assert result.scores.shape == (3,) and result.scores.dtype == np.float32
        best = int(np.argmax(result.scores))
        assert result.mask_index == best and result.score == pytest.approx(float(result.scores[best]))
        np.testing.assert_array_equal(result.mask, result.masks[best])
        masks = result.to_dict()["masks"]
        assert [m["score"] for m in masks] == [round(float(s), 6) for s in result.scores]
        for entry, mask in zip(masks, result.masks):
            np.testing.assert_array_equal(decode_segmentation(entry["segmentation"], height=33, width=47), mask)


def test_bgr_arrays_are_read_in_opencv_order(seg: Segmenter):
    rgb = np.random.default_rng(2).integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
    expected = seg.predict(rgb, "the red circle")
    from_bgr = seg.predict(np.ascontiguousarray(rgb[..., ::-1]), "the red circle", image_format="BGR")
    np.testing.assert_array_equal(from_bgr.logits, expected.logits)
    rgba = np.dstack([rgb, np.full((24, 32), 255, np.uint8)])
    bgra = np.ascontiguousarray(rgba[..., [2, 1, 0, 3]])
    np.testing.assert_array_equal(seg.predict(bgra, "the red circle", image_format="BGR").logits, expected.logits)
    swapped = seg.predict(np.ascontiguousarray(rgb[..., ::-1]), "the red circle")  # read as RGB: another image
    assert not np.array_equal(swapped.logits, expected.logits)
    with pytest.raises(ValueError, match=r"image_format must be one of 'RGB', 'BGR', got 'bgr'"):
        seg.predict(rgb, "the red circle", image_format="bgr")
