"""``ditsam predict``: single image, folder, JSONL (bad lines all reported), outputs and RLE."""

from __future__ import annotations

import errno
import json
import sys
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
        decoded = mask_utils.decode(
            {"size": record["segmentation"]["size"], "counts": record["segmentation"]["counts"].encode()}
        )
        saved = np.asarray(Image.open(out / record["mask_file"])) > 0
        height, width = Image.open(record["image"]).size[::-1]
        assert saved.shape == (height, width) == tuple(record["segmentation"]["size"])
        np.testing.assert_array_equal(decoded.astype(bool), saved)
        assert record["area"] == int(saved.sum())
        assert (out / record["overlay_file"]).is_file()
        if record["area"]:
            ys, xs = np.nonzero(saved)
            assert record["bbox"] == [
                int(xs.min()),
                int(ys.min()),
                int(xs.max() - xs.min() + 1),
                int(ys.max() - ys.min() + 1),
            ]
    return records


def test_single_image(checkpoint: Path, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    code = main(
        [
            "predict",
            "--checkpoint",
            str(checkpoint),
            "--image",
            str(images / "a.png"),
            "--text",
            "the red circle",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    records = _check_outputs(out, 1)
    assert records[0]["sentence"] == "the red circle"
    printed = capsys.readouterr().out
    assert "1 prediction(s)" in printed and "mean score" in printed and str(out / "predictions.json") in printed


def test_folder_with_one_sentence(checkpoint: Path, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(checkpoint),
                "--images",
                str(images),
                "--text",
                "a star",
                "--out",
                str(out),
                "--batch-size",
                "2",
            ]
        )
        == 0
    )
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
        "\n".join(
            [
                json.dumps({"image": str(images / "a.png"), "text": "fine"}),
                "{not json",
                json.dumps({"image": str(images / "a.png"), "text": ""}),
                json.dumps({"image": str(tmp_path / "missing.png"), "text": "a star"}),
                json.dumps({"image": str(images / "a.png"), "txt": "typo"}),
                json.dumps(["a", "list"]),
            ]
        )
        + "\n"
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


def test_unreadable_image_is_skipped_and_reported(
    checkpoint: Path, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    broken = tmp_path / "broken.png"
    broken.write_text("not a png")
    out = tmp_path / "out"
    code = main(
        [
            "predict",
            "--checkpoint",
            str(checkpoint),
            "--image",
            str(broken),
            "--image",
            str(images / "c.png"),
            "--text",
            "a",
            "--out",
            str(out),
        ]
    )
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
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(tmp_path / "empty"),
                "--image",
                str(images / "a.png"),
                "--text",
                "a",
                "--out",
                str(tmp_path / "out2"),
            ]
        )
        == 2
    )
    assert "without config" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# Nothing lost: the journal, --resume, --overwrite, unusable --out / --device, a full disk
# ---------------------------------------------------------------------------------------------------
def _pairs_file(images: Path, tmp_path: Path, count: int) -> Path:
    names = ["a.png", "b.jpg", "c.png"]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "\n".join(json.dumps({"image": str(images / names[i % 3]), "text": f"shape {i}"}) for i in range(count))
    )
    return pairs


def _one_line_error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("ditsam predict: error:")]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def test_kill_then_resume_predicts_only_what_is_missing(
    checkpoint: Path, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ditsam.api import Segmenter

    pairs = _pairs_file(images, tmp_path, 7)
    base = ["predict", "--checkpoint", str(checkpoint), "--jsonl", str(pairs), "--batch-size", "2"]
    assert main([*base, "--out", str(tmp_path / "straight")]) == 0
    real_predict, predicted = Segmenter.predict, []

    def dies_on_the_third_batch(self, image, text, **kwargs):
        if len(predicted) == 4:
            raise KeyboardInterrupt  # as a kill: two batches are made and journaled
        predicted.extend(text)
        return real_predict(self, image, text, **kwargs)

    monkeypatch.setattr(Segmenter, "predict", dies_on_the_third_batch)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        main([*base, "--out", str(out)])
    journal = out / "predictions.jsonl"
    assert len(journal.read_text().splitlines()) == 4 and not (out / "predictions.json").exists()
    with journal.open("a") as handle:
        handle.write('{"id": 4, "image": "cut off by the kil')  # a line the kill cut short

    assert main([*base, "--out", str(out)]) == 2, "a non-empty --out needs --resume or --overwrite"
    predicted.clear()
    assert main([*base, "--out", str(out), "--resume"]) == 0
    assert predicted == ["shape 4", "shape 5", "shape 6"], "finished pairs are not predicted again"
    resumed, straight = _predictions(out), _predictions(tmp_path / "straight")
    assert [r["sentence"] for r in resumed] == [f"shape {i}" for i in range(7)]
    for a, b in zip(resumed, straight):
        assert a["segmentation"] == b["segmentation"] and a["score"] == pytest.approx(b["score"], abs=1e-6)
    assert len(journal.read_text().splitlines()) == 7 and all(
        json.loads(line) for line in journal.read_text().splitlines()
    )
    _check_outputs(out, 7)


def test_overwrite_removes_the_earlier_outputs_only(
    checkpoint: Path, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    assert (
        main(["predict", "--checkpoint", str(checkpoint), "--images", str(images), "--text", "a", "--out", str(out)])
        == 0
    )
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    again = [
        "predict",
        "--checkpoint",
        str(checkpoint),
        "--image",
        str(images / "c.png"),
        "--text",
        "b",
        "--out",
        str(out),
    ]
    assert main(again) == 2
    assert "already holds results" in _one_line_error(capsys)
    assert main([*again, "--overwrite"]) == 0
    assert len(list((out / "masks").iterdir())) == 1, "no stale mask of the earlier run is left"
    assert [r["sentence"] for r in _check_outputs(out, 1)] == ["b"]
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("kind", ["file", "read-only"])
def test_unusable_out_is_one_line_before_the_model_loads(
    checkpoint: Path,
    images: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    import ditsam.api

    if kind == "file":
        out = images / "a.png"
    elif sys.platform == "linux":
        out = Path("/sys/ditsam-test-out")  # nobody, root included, can create a folder there
    else:
        pytest.skip("uses Linux /sys as a read-only location")
    monkeypatch.setattr(ditsam.api.Segmenter, "from_pretrained", None)  # loading the model would fail loudly
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(checkpoint),
                "--image",
                str(images / "a.png"),
                "--text",
                "a",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert f"--out {out}" in _one_line_error(capsys)


def test_device_without_cuda_is_one_line(
    checkpoint: Path, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(checkpoint),
                "--image",
                str(images / "a.png"),
                "--text",
                "a",
                "--out",
                str(tmp_path / "out"),
                "--device",
                "cuda",
            ]
        )
        == 2
    )
    assert "device 'cuda' asked for" in _one_line_error(capsys)


def test_full_disk_keeps_the_journal_and_says_how_to_resume(
    checkpoint: Path, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image as PILImage

    real_save, saved = PILImage.Image.save, []

    def fills_the_disk(self, fp, *args, **kwargs):
        if len(saved) == 2:  # the masks and overlays of the first pair fit, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(fp))
        saved.append(fp)
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(PILImage.Image, "save", fills_the_disk)
    out = tmp_path / "out"
    argv = ["predict", "--checkpoint", str(checkpoint), "--images", str(images), "--text", "a", "--out", str(out)]
    argv += ["--batch-size", "1"]
    assert main(argv) == 2
    err = _one_line_error(capsys)
    assert "is full" in err and "predictions.jsonl" in err and "--resume" in err
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 1
    monkeypatch.undo()
    assert main([*argv, "--resume"]) == 0
    _check_outputs(out, 3)
