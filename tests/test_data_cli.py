"""``ditsam data validate`` and ``ditsam data stats`` on small generated data."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ditsam.cli import data_tools
from ditsam.data import DataError

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "refcocog-umd-sample"


def run(argv: list[str]) -> int:
    """Run a ``ditsam data`` sub-command with only this module's commands registered."""
    parser = argparse.ArgumentParser(prog="ditsam data")
    data_tools.register(parser.add_subparsers(dest="data_command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture()
def custom_file(tmp_path: Path) -> Path:
    (tmp_path / "img").mkdir()
    lines = []
    for i in range(4):
        pixels = np.full((20, 30, 3), 40 * i, np.uint8)
        Image.fromarray(pixels).save(tmp_path / "img" / f"{i}.png")
        mask = np.zeros((20, 30), np.uint8)
        mask[5:10, 3 + i : 12 + i] = 255
        Image.fromarray(mask).save(tmp_path / "img" / f"{i}_mask.png")
        lines.append(
            {
                "image": f"img/{i}.png",
                "mask": f"img/{i}_mask.png",
                "split": "val" if i % 2 else "train",
                "sentences": ["the red box on the left"[: 8 + 4 * i], "box"],
            }
        )
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines))
    return path


def test_validate_ok(custom_file, capsys):
    assert run(["validate", str(custom_file)]) == 0
    assert "OK, 4 record(s); splits: train 2, val 2" in capsys.readouterr().out


def test_validate_prints_every_problem(custom_file, capsys):
    lines = custom_file.read_text().splitlines()
    lines[1] = "{broken"
    lines.append(json.dumps({"image": "img/none.png", "sentence": "", "mask": "img/0_mask.png"}))
    custom_file.write_text("\n".join(lines))
    assert run(["validate", "--quick", str(custom_file)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{custom_file}:2: not valid JSON")
    assert any(line.startswith(f"{custom_file}:5: field 'sentence': empty sentence") for line in out)
    assert out[-1] == f"2 problem(s) in {custom_file}"


def test_validate_simrec_reports_every_bad_record(tmp_path, capsys):
    """The checks `ditsam train` runs, for SimREC: a missing image, a mask of another size, an empty mask."""
    (tmp_path / "anns").mkdir()
    (tmp_path / "masks" / "rc").mkdir(parents=True)
    entries = [
        {"iid": iid, "bbox": [0, 0, 2, 2], "cat_id": 1, "refs": ["a thing"], "mask_id": iid} for iid in (1, 2, 3, 4)
    ]
    (tmp_path / "anns" / "rc.json").write_text(json.dumps({"train": entries, "val": entries[:1]}))
    for iid in (1, 2, 3):
        Image.new("RGB", (8, 6)).save(tmp_path / f"COCO_train2014_{iid:012d}.jpg")
    np.save(tmp_path / "masks" / "rc" / "1.npy", np.ones((6, 8), np.uint8))
    np.save(tmp_path / "masks" / "rc" / "2.npy", np.ones((8, 6), np.uint8))
    np.save(tmp_path / "masks" / "rc" / "3.npy", np.zeros((6, 8), np.uint8))
    np.save(tmp_path / "masks" / "rc" / "4.npy", np.ones((6, 8), np.uint8))
    argv = ["validate", "--format", "simrec", "--root", str(tmp_path), "--dataset", "rc", "--image-dir", str(tmp_path)]
    assert run(argv) == 1
    out = capsys.readouterr().out
    ann = tmp_path / "anns" / "rc.json"
    assert (
        f"{ann}: train mask_id 2: mask {tmp_path / 'masks' / 'rc' / '2.npy'} is 6x8 (WxH) but the image is 8x6" in out
    )
    assert f"{ann}: train mask_id 3: mask" in out and "is empty" in out
    assert f"{ann}: train mask_id 4: image file not found" in out
    assert "3 bad record(s) of 5 in simrec data, split(s) train, val" in out
    assert run([*argv, "--split", "val"]) == 0
    assert "OK, 1 record(s) checked" in capsys.readouterr().out


def test_validate_custom_through_format_and_usage_errors(custom_file, capsys):
    assert run(["validate", "--format", "custom", "--path", str(custom_file)]) == 0
    assert "custom data, split(s) train, val: OK, 4 record(s) checked" in capsys.readouterr().out
    with pytest.raises(ValueError, match="not both or neither"):
        run(["validate", str(custom_file), "--format", "custom"])
    with pytest.raises(ValueError, match="not both or neither"):
        run(["validate"])


def test_stats_custom(custom_file, tmp_path, capsys):
    out_dir = tmp_path / "stats"
    assert (
        run(["stats", "--format", "custom", "--path", str(custom_file), "--split", "val", "--out", str(out_dir)]) == 0
    )
    out = capsys.readouterr().out
    assert "split  objects  sentences  images" in out
    assert "train  2        4          2" in out and "val    2        4          2" in out
    assert "split 'val': 4 sentences, mean 2.75, median 2, min 1, max 6" in out
    histogram = out_dir / "sentence_lengths_val.png"
    with Image.open(histogram) as picture:
        assert picture.size == (720, 360)
    samples = sorted(out_dir.glob("sample_*.png"))
    assert len(samples) == 4
    with Image.open(samples[0]) as picture:
        assert picture.width == 30 and picture.height > 20  # the text band sits above the picture


def test_stats_refer_sample_without_images(tmp_path, capsys, caplog):
    if not FIXTURE.is_dir():
        pytest.skip(f"REFER sample not found at {FIXTURE}")
    argv = [
        "stats",
        "--format",
        "refer",
        "--root",
        str(FIXTURE.parent),
        "--dataset",
        FIXTURE.name,
        "--split-by",
        "umd",
        "--image-dir",
        str(tmp_path / "no-images"),
        "--split",
        "test",
        "--out",
        str(tmp_path / "out"),
        "--samples",
        "2",
    ]
    assert run(argv) == 0
    out = capsys.readouterr().out
    for row in ("train  5        9          5", "val    5        10         5", "test   5        9          5"):
        assert row in out
    assert (tmp_path / "out" / "sentence_lengths_test.png").is_file()
    assert not list((tmp_path / "out").glob("sample_*.png"))  # no images: samples skipped with a warning
    assert "image file not found" in caplog.text


def test_stats_simrec(tmp_path, capsys):
    (tmp_path / "anns").mkdir()
    (tmp_path / "masks" / "rc").mkdir(parents=True)
    anns = {"val": [{"iid": 1, "bbox": [0, 0, 2, 2], "cat_id": 1, "refs": ["one two three"], "mask_id": 9}]}
    (tmp_path / "anns" / "rc.json").write_text(json.dumps(anns))
    np.save(tmp_path / "masks" / "rc" / "9.npy", np.ones((6, 8), np.uint8))
    Image.new("RGB", (8, 6)).save(tmp_path / "COCO_train2014_000000000001.jpg")
    argv = [
        "stats",
        "--format",
        "simrec",
        "--root",
        str(tmp_path),
        "--dataset",
        "rc",
        "--image-dir",
        str(tmp_path),
        "--split",
        "val",
        "--out",
        str(tmp_path / "out"),
    ]
    assert run(argv) == 0
    assert "val    1        1          1" in capsys.readouterr().out
    assert len(list((tmp_path / "out").glob("sample_*.png"))) == 1


def test_stats_rejects_options_of_other_formats(custom_file, tmp_path):
    with pytest.raises(ValueError, match="option\\(s\\) --split-by do not apply to --format custom"):
        run(
            [
                "stats",
                "--format",
                "custom",
                "--path",
                str(custom_file),
                "--split-by",
                "umd",
                "--split",
                "val",
                "--out",
                str(tmp_path),
            ]
        )
    with pytest.raises(DataError, match="unknown split 'test'"):
        run(["stats", "--format", "custom", "--path", str(custom_file), "--split", "test", "--out", str(tmp_path)])


def test_through_main(custom_file, tmp_path, capsys):
    from ditsam.cli.main import main

    assert main(["data", "validate", str(custom_file)]) == 0
    assert (
        main(
            [
                "data",
                "stats",
                "--format",
                "custom",
                "--path",
                str(custom_file),
                "--split",
                "nope",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "error: unknown split 'nope'" in capsys.readouterr().err


def test_typed_config_opens_through_the_reader_table_like_the_mapping(custom_file):
    """The engine opens a typed DataConfig through engine.data.READERS (one reader per data.format); it reads
    the same samples as the mapping form of ditsam.data.open_dataset."""
    from typing import get_args, get_type_hints

    from ditsam.data import open_dataset as open_mapping
    from ditsam.engine.config import DataConfig
    from ditsam.engine.data import READERS
    from ditsam.engine.data import read_split as open_typed

    assert set(READERS) == set(get_args(get_type_hints(DataConfig)["format"]))
    typed = open_typed(DataConfig(format="custom", root=str(custom_file)), "val", mode="eval")
    plain = open_mapping({"format": "custom", "path": str(custom_file), "split": "val", "mode": "eval"})
    assert len(typed) == len(plain) > 0
    assert [typed[i].sentences for i in range(len(typed))] == [plain[i].sentences for i in range(len(plain))]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_typed(DataConfig(format="custom", root=str(custom_file.parent / "absent.jsonl")), "val", mode="eval")
