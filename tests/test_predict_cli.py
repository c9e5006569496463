"""``ditsam predict``: single image, folder, JSONL (bad lines all reported), outputs and RLE."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from ditsam.cli.main import main


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a.png": (37, 53), "b.jpg": (64, 20), "c.png": (11, 90)}.items():
        Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(folder / name)
    (folder / "readme.txt").write_text("not an image")  # not an image suffix: ignored by --images
    return folder


def _predictions(out: Path) -> list[dict]:
    return json.loads((out / "predictions.json").read_text())


def _check_outputs(out: Path, expected: int) -> list[dict]:
    records = _predictions(out)
    assert len(records) == expected
    for record in records:
        assert set(record) >= {"image", "sentence", "score", "segmentation", "bbox", "area"}
        decoded = mask_utils.decode({"size": record["segmentation"]["size"], "counts": record["segmentation"]["counts"].encode()})
        saved = np.asarray(Image.open(out / record["mask_file"])) > 0
        height, width = Image.open(record["image"]).size[::-1]
        assert saved.shape == (height, width) == tuple(record["segmentation"]["size"])
        np.testing.assert_array_equal(decoded.astype(bool), saved)
        assert record["area"] == int(saved.sum())
        assert (out / record["overlay_file"]).is_file()
        if record["area"]:
            ys, xs = np.nonzero(saved)
            assert record["bbox"] == [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
    return records


def test_single_image(checkpoint: Path, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    code = main(["predict", "--checkpoint", str(checkpoint), "--image", str(images / "a.png"), "--text", "the red circle",
                 "--out", str(out)])
    assert code == 0
    records = _check_outputs(out, 1)
    assert records[0]["sentence"] == "the red circle"
    printed = capsys.readouterr().out
    assert "1 prediction(s)" in printed and "mean score" in printed and str(out / "predictions.json") in printed


def test_folder_with_one_sentence(checkpoint: Path, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(checkpoint), "--images", str(images), "--text", "a star",
                 "--out", str(out), "--batch-size", "2"]) == 0
    records = _check_outputs(out, 3)
    assert [Path(r["image"]).name for r in records] == ["a.png", "b.jpg", "c.png"]


def test_jsonl_pairs(checkpoint: Path, images: Path, tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    lines = [
        {"image": str(images / "a.png"), "text": "the red circle"},
        {"image": str(images / "a.png"), "text": "the blue square", "id": "x7"},
        {"image": "b.jpg", "sentence": "a star"},  # relative to the JSONL folder
    ]
    (tmp_path / "b.jpg").write_bytes((images / "b.jpg").read_bytes())
    pairs.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(checkpoint), "--jsonl", str(pairs), "--out", str(out)]) == 0
    records = _check_outputs(out, 3)
    assert [r["sentence"] for r in records] == ["the red circle", "the blue square", "a star"]
    assert records[1]["id"] == "x7"


def test_jsonl_bad_lines_are_all_reported_before_running(
    checkpoint: Path, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "\n".join([
            json.dumps({"image": str(images / "a.png"), "text": "fine"}),
            "{not json",
            json.dumps({"image": str(images / "a.png"), "text": ""}),
            json.dumps({"image": str(tmp_path / "missing.png"), "text": "a star"}),
            json.dumps({"image": str(images / "a.png"), "txt": "typo"}),
            json.dumps(["a", "list"]),
        ]) + "\n"
    )
    out = tmp_path / "out"
    code = main(["predict", "--checkpoint", str(checkpoint), "--jsonl", str(pairs), "--out", str(out)])
    assert code != 0
    error = capsys.readouterr().err
    for line in (2, 3, 4, 5, 6):
        assert f"pairs.jsonl:{line}:" in error
    assert "pairs.jsonl:1:" not in error
    assert "missing.png" in error and "'txt'" in error
    assert not (out / "predictions.json").exists()


def test_unreadable_image_is_skipped_and_reported(checkpoint: Path, images: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    broken = tmp_path / "broken.png"
    broken.write_text("not a png")
    out = tmp_path / "out"
    code = main(["predict", "--checkpoint", str(checkpoint), "--image", str(broken), "--image", str(images / "c.png"),
                 "--text", "a", "--out", str(out)])
    assert code == 1
    _check_outputs(out, 1)
    assert "broken.png" in capsys.readouterr().out


def test_usage_errors(checkpoint: Path, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = ["predict", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out")]
    assert main([*base, "--image", str(images / "a.png")]) == 2  # no --text
    assert "--text" in capsys.readouterr().err
    assert main([*base, "--image", str(tmp_path / "nope.png"), "--text", "a"]) == 2
    assert "nope.png" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([*base, "--images", str(tmp_path / "empty"), "--text", "a"]) == 2
    assert main(["predict", "--checkpoint", str(tmp_path / "empty"), "--image", str(images / "a.png"), "--text", "a",
                 "--out", str(tmp_path / "out2")]) == 2
    assert "without config" in capsys.readouterr().err
