"""CustomDataset and validate_custom on generated JSONL data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from ditsam.data import CustomDataset, DataError, open_dataset
from ditsam.data.custom import available_splits, validate_custom

H, W = 12, 16


def _write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for name in ("a", "b"):
        Image.new("RGB", (W, H), (90, 90, 90)).save(tmp_path / "images" / f"{name}.jpg")
    mask = np.zeros((H, W), np.uint8)
    mask[2:5, 3:9] = 1  # palette index / gray level 1: nonzero is the object
    Image.fromarray(mask).save(tmp_path / "masks" / "a.png")
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[6:8, 0:2, 2] = 200  # only the blue channel is set
    Image.fromarray(rgb).save(tmp_path / "masks" / "b_rgb.png")
    return tmp_path


def _good_lines(folder: Path) -> list:
    rle = mask_utils.encode(np.asfortranarray(np.pad(np.ones((2, 2), np.uint8), ((0, H - 2), (W - 2, 0)))))
    return [
        {"image": "images/a.jpg", "sentences": ["the  left one", "leftmost"], "mask": "masks/a.png", "id": 10},
        {
            "image": str(folder / "images" / "b.jpg"),
            "sentence": "blue thing",
            "mask": "masks/b_rgb.png",
            "split": "val",
        },
        "",
        {
            "image": "images/a.jpg",
            "sentence": "triangle",
            "segmentation": [[1, 1, 9, 1, 1, 9]],
            "split": "val",
            "category_id": 4,
        },
        {
            "image": "images/b.jpg",
            "sentence": "corner",
            "segmentation": {"size": [H, W], "counts": rle["counts"].decode()},
            "split": "val",
        },
    ]


def test_good_file_validates_and_reads(folder):
    path = _write_jsonl(folder / "data.jsonl", _good_lines(folder))
    assert validate_custom(path) == []
    assert available_splits(path) == ["train", "val"]
    train = CustomDataset(path=path, split="train", mode="train")
    assert len(train) == 1 and len(CustomDataset(path=path, split="train", mode="eval")) == 2
    sample = train[0]
    assert sample.sentences == ["the left one", "leftmost"] and sample.sent_ids == [0, 1]
    assert (sample.ref_id, sample.ann_id, sample.image_id, sample.category_id) == (10, 10, 0, 0)
    assert sample.mask.shape == (H, W) and sample.mask.sum() == 18
    assert sample.bbox == (3.0, 2.0, 6.0, 3.0)

    val = CustomDataset(path=path, split="val", mode="eval")
    items = [val[i] for i in range(len(val))]
    assert [s.sentences for s in items] == [["blue thing"], ["triangle"], ["corner"]]
    assert [s.ref_id for s in items] == [2, 4, 5]  # default id: the line number
    assert [s.image_id for s in items] == [1, 0, 1] and [s.sent_ids for s in items] == [[2], [3], [4]]
    assert items[0].mask.sum() == 4 and items[0].bbox == (0.0, 6.0, 2.0, 2.0)
    expected_triangle = mask_utils.decode(mask_utils.frPyObjects([[1, 1, 9, 1, 1, 9]], H, W))[..., 0].astype(bool)
    np.testing.assert_array_equal(items[1].mask, expected_triangle)
    assert items[1].category_id == 4
    assert items[2].mask.sum() == 4 and items[2].mask[0:2, W - 2 :].all()
    assert len(open_dataset({"format": "custom", "path": path, "split": "val"})) == 3


def test_validate_reports_every_problem_with_line_field_value(folder):
    Image.new("L", (W + 1, H)).save(folder / "masks" / "wide.png")
    Image.new("L", (W, H)).save(folder / "masks" / "lossy.jpg")
    lines = [
        '{"image": "images/a.jpg", "sentence": "ok", "mask": "masks/a.png"',  # 1 bad JSON
        {"sentence": "no image", "mask": "masks/a.png"},  # 2
        {"image": "images/missing.jpg", "sentence": "x", "mask": "masks/a.png"},  # 3
        {"image": "images/a.jpg", "sentence": "x", "mask": "masks/missing.png"},  # 4
        {"image": "images/a.jpg", "sentence": "x", "mask": "masks/wide.png"},  # 5
        {"image": "images/a.jpg", "sentences": ["fine", "  "], "mask": "masks/a.png"},  # 6
        {"image": "images/a.jpg", "sentence": "x", "mask": "masks/a.png", "colour": "red"},  # 7
        {"image": "images/a.jpg", "sentence": "x", "mask": "masks/a.png", "segmentation": [[0, 0, 1, 0, 1, 1]]},  # 8
        {"image": "images/a.jpg", "sentence": "x", "segmentation": [[0, 0, 1, 0]]},  # 9
        {"image": "images/a.jpg", "sentence": "x", "segmentation": {"size": [5, 5], "counts": [25]}},  # 10
        {"image": "images/a.jpg", "sentence": "x", "mask": "masks/a.png", "id": 11},  # 11
        {"image": "images/a.jpg", "sentence": "x", "mask": "masks/a.png", "id": 11},  # 12 duplicate id
        {"image": "images/a.jpg", "sentence": "x", "mask": "masks/a.png", "id": 7.5},  # 13
        ["not", "an", "object"],  # 14
        {"image": "images/a.jpg", "sentence": "x", "mask": "masks/lossy.jpg"},  # 15
        {"image": "images/a.jpg", "mask": "masks/a.png"},  # 16
    ]
    path = _write_jsonl(folder / "bad.jsonl", lines)
    problems = validate_custom(path)
    text = "\n".join(problems)
    expectations = [
        r"bad\.jsonl:1: not valid JSON .*expected one JSON object per line",
        r"bad\.jsonl:2: missing field 'image'; expected a file path",
        r"bad\.jsonl:3: field 'image': image file not found: .*missing\.jpg; expected a readable image file",
        r"bad\.jsonl:4: field 'mask': file .*missing\.png not found; expected a PNG file",
        r"bad\.jsonl:5: field 'mask': .*wide\.png is 17x12 \(WxH\); expected the image's size 16x12",
        r"bad\.jsonl:6: field 'sentences\[1\]': empty sentence '  '; expected non-empty text",
        r"bad\.jsonl:7: unknown field 'colour' \(value \"red\"\); expected only image, sentences",
        r"bad\.jsonl:8: both 'mask' and 'segmentation' given; expected exactly one",
        r"bad\.jsonl:9: field 'segmentation': polygon part 0 has 2 point\(s\); expected at least 3",
        r"bad\.jsonl:10: field 'segmentation': RLE size \[5, 5\] does not match the image's \[height, width\] = \[12, 16\]",
        r"bad\.jsonl:12: field 'id': 11 is already used on line 11; expected a unique integer",
        r"bad\.jsonl:13: field 'id': 7.5; expected an integer or a string",
        r"bad\.jsonl:14: got a JSON list; expected an object",
        r"bad\.jsonl:15: field 'mask': .*lossy\.jpg is JPEG; expected a PNG",
        r"bad\.jsonl:16: neither 'sentences' and 'sentence' given; expected exactly one",
    ]
    for pattern in expectations:
        assert any(re.search(pattern, p) for p in problems), f"{pattern!r} not in:\n{text}"
    assert len(problems) == len(expectations)
    with pytest.raises(DataError, match=r"bad\.jsonl has \d+ problem\(s\); run `ditsam data validate .*bad\.jsonl`"):
        CustomDataset(path=path)


def test_validate_finds_empty_masks(folder):
    """An annotation outside its image decodes to an empty mask: training would learn from nothing."""
    (folder / "masks" / "blank.png").write_bytes(b"")
    Image.new("L", (W, H), 0).save(folder / "masks" / "blank.png")
    path = _write_jsonl(
        folder / "d.jsonl",
        [
            {"image": "images/a.jpg", "sentence": "outside", "segmentation": [[W + 1, 0, W + 9, 0, W + 9, 5]]},
            {"image": "images/a.jpg", "sentence": "blank", "mask": "masks/blank.png"},
            {"image": "images/a.jpg", "sentence": "fine", "mask": "masks/a.png"},
        ],
    )
    problems = validate_custom(path, check_pixels=False)
    assert len(problems) == 2, problems
    assert problems[0].startswith(f"{path}:1: field 'segmentation': the mask is empty")
    assert problems[1].startswith(f"{path}:2: field 'mask': the mask is empty")
    reader = CustomDataset(path=path, split="train", mode="train")
    assert [index for index, _ in reader.validate()] == [0, 1]


def test_validate_missing_file_and_empty_file(tmp_path):
    assert validate_custom(tmp_path / "none.jsonl") == [f"{tmp_path / 'none.jsonl'}: file not found"]
    empty = _write_jsonl(tmp_path / "empty.jsonl", ["", "  "])
    assert validate_custom(empty) == [f"{empty}: no records; expected one JSON object per line"]


def test_truncated_image_found_by_validate_only_in_full_mode(folder):
    noise = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "images" / "noise.jpg", quality=100)
    data = (folder / "images" / "noise.jpg").read_bytes()
    (folder / "images" / "cut.jpg").write_bytes(data[: len(data) - 200])  # header intact, pixels cut
    path = _write_jsonl(folder / "d.jsonl", [{"image": "images/cut.jpg", "sentence": "x", "mask": "masks/a.png"}])
    assert validate_custom(path, check_pixels=False) == []
    (problem,) = validate_custom(path)
    assert "d.jsonl:1: field 'image': cannot read image" in problem and "cut.jpg" in problem


def test_unknown_split_and_missing_image_at_read(folder):
    path = _write_jsonl(folder / "data.jsonl", _good_lines(folder))
    with pytest.raises(DataError, match=r"unknown split 'test' in .*data\.jsonl; available splits: train, val"):
        CustomDataset(path=path, split="test")
    (folder / "images" / "a.jpg").unlink()
    dataset = CustomDataset(path=path, split="train")
    with pytest.raises(DataError, match=r"image file not found: .*a\.jpg"):
        dataset[0]


def test_mask_of_stored_size_accepted_for_exif_rotated_image(folder):
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (W, H)).save(folder / "images" / "rot.jpg", exif=exif.tobytes())  # shown as H x W
    Image.new("L", (H, W), 1).save(folder / "masks" / "upright.png")
    path = _write_jsonl(
        folder / "r.jsonl",
        [
            {"image": "images/rot.jpg", "sentence": "stored", "mask": "masks/a.png"},
            {"image": "images/rot.jpg", "sentence": "upright", "mask": "masks/upright.png"},
        ],
    )
    assert validate_custom(path) == []
    dataset = CustomDataset(path=path)
    assert dataset[0].mask.shape == (H, W) and dataset[1].mask.shape == (W, H)
