"""One record schema (docs/record.schema.json): `ditsam predict` writes it, data.format=custom trains on it (a
predictions.json, a journal or the --out folder; data.min_score keeps confident labels), `ditsam data validate`
checks it, `ditsam predict --jsonl` reads it back as pairs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ditsam.cli.main import main
from ditsam.config import ConfigError
from ditsam.data import DataError
from ditsam.data.custom import CustomDataset, read_custom, validate_custom
from ditsam.data.records import RECORD_FIELDS
from ditsam.data.segmentation import encode_rle
from ditsam.engine.config import load_experiment

SCHEMA = Path(__file__).resolve().parents[1] / "docs" / "record.schema.json"
H, W = 12, 16


def _square() -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[2:6, 3:9] = True
    return mask


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    (tmp_path / "img").mkdir()
    for index in range(4):
        Image.fromarray(np.full((H, W, 3), 40 * index, np.uint8)).save(tmp_path / "img" / f"{index}.png")
    return tmp_path


def _prediction(index: int, **fields) -> dict:
    """A record as `ditsam predict` writes it."""
    record = {
        "id": index,
        "image": f"img/{index}.png",
        "sentence": f"the thing {index}",
        "score": 0.5,
        "segmentation": encode_rle(_square()),
        "bbox": [3, 2, 6, 4],
        "area": 24,
        "mask_file": None,
        "overlay_file": None,
        "present": True,
    }
    return {**record, **fields}


def _schema_validator():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_schema_names_exactly_the_fields_the_reader_takes():
    assert set(json.loads(SCHEMA.read_text())["properties"]) == set(RECORD_FIELDS)


def test_a_json_array_trains_with_min_score_and_present(folder: Path):
    records = [
        _prediction(0, score=0.9),
        _prediction(1, score=0.2),  # below min_score
        _prediction(2, present=False, area=0, segmentation=encode_rle(np.zeros((H, W), bool))),  # nothing found
        _prediction(3, split="val", id="pair-3"),  # a string id (predict copies its input's)
    ]
    validator = _schema_validator()
    for record in records:
        validator.validate(record)
    path = folder / "predictions.json"
    path.write_text(json.dumps(records, indent=1))  # indented, as predict writes it: a record spans lines
    assert validate_custom(path, min_score=0.5) == []
    everything = CustomDataset(path=path, split="train", mode="eval")
    assert [s.sentences[0] for s in everything] == ["the thing 0", "the thing 1"]  # present: false left out
    confident = CustomDataset(path=path, split="train", mode="train", min_score=0.5)
    assert len(confident) == 1 and confident[0].ref_id == 0
    np.testing.assert_array_equal(confident[0].mask, _square())
    val = CustomDataset(path=folder, split="val", mode="eval", min_score=0.5)  # the folder stands for the file
    assert val[0].ref_id == 4  # the string id's record gets its record number
    with pytest.raises(DataError, match=r"every record of split 'train' was left out \(2 with a score below"):
        CustomDataset(path=path, split="train", mode="train", min_score=0.95)


def test_label_fields_are_checked_naming_record_field_and_value(folder: Path):
    path = folder / "predictions.json"
    records = [
        _prediction(0, score="high"),
        _prediction(1, bbox=[1, 2, 3]),
        _prediction(2, present="yes"),
        _prediction(3, area=-1),
        _prediction(4, id=10),
        _prediction(5, id=10),
    ]
    path.write_text(json.dumps(records))
    _, problems = read_custom(path)
    assert problems == [
        f"{path}: record 1: field 'score': \"high\"; expected a finite number (the predicted IoU)",
        f"{path}: record 2: field 'bbox': [1, 2, 3]; expected a COCO box [x, y, w, h]: 4 finite numbers, w and h >= 0",
        f"{path}: record 3: field 'present': \"yes\"; expected true or false",
        f"{path}: record 4: field 'area': -1; expected an integer >= 0 (pixels)",
        f"{path}: record 6: field 'id': 10 is already used on line 5; expected a unique integer (or string) per line",
    ]
    path.write_text('[{"image": "img/0.png",')
    assert read_custom(path)[1] == [
        f"{path}: not valid JSON (Expecting property name enclosed in double quotes at line 1, column 24)"
    ]


def test_min_score_is_a_custom_data_field():
    config = load_experiment("custom/finetune_ldit", {"data.min_score": 0.8})
    assert config.data.min_score == 0.8
    with pytest.raises(ConfigError, match="min_score applies to data.format=custom"):
        load_experiment("refshapes/ldit", {"data.min_score": 0.8})
    with pytest.raises(ConfigError, match="min_score must be a finite number"):
        load_experiment("custom/finetune_ldit", {"data.min_score": float("nan")})


def test_validate_command_reads_predict_folders_with_min_score(folder: Path, capsys):
    out = folder / "labels"
    out.mkdir()
    lines = [
        _prediction(0, image=str(folder / "img/0.png"), score=0.9),
        _prediction(1, image=str(folder / "img/1.png")),
    ]
    (out / "predictions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))  # a journal only
    assert main(["data", "validate", str(out), "--min-score", "0.7"]) == 0
    assert "OK, 1 record(s) to train on (1 below --min-score 0.7, 0 present: false); splits: train 1" in (
        capsys.readouterr().out
    )
    assert main(["data", "validate", "--format", "custom", "--path", str(out), "--min-score", "0.7"]) == 0
    assert "OK, 1 record(s) checked" in capsys.readouterr().out


def test_label_a_folder_then_train_on_the_labels(checkpoint: Path, folder: Path, tiny_bert_dir: Path):
    """The pseudo-labelling loop: predict writes records, the same file trains, and predict reads it back."""
    from ditsam.engine.train import train
    from helpers import tiny_experiment

    pairs = folder / "pairs.jsonl"
    lines = [
        {"image": f"img/{i}.png", "text": f"the thing {i}", "split": "val" if i == 3 else "train"} for i in range(4)
    ]
    pairs.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = folder / "labels"
    # A low threshold: the untrained tiny model's masks are not empty, so every label trains.
    base = ["predict", "--checkpoint", str(checkpoint), "--device", "cpu", "--threshold", "0.05", "--no-overlays"]
    assert main([*base, "--jsonl", str(pairs), "--out", str(out)]) == 0
    records = json.loads((out / "predictions.json").read_text())
    validator = _schema_validator()
    for record in records:
        validator.validate(record)
    assert [r["split"] for r in records] == ["train", "train", "train", "val"]  # copied from the input
    assert all(Path(r["image"]).is_absolute() for r in records)
    assert main(["data", "validate", str(out)]) == 0
    config = tiny_experiment(folder, tiny_bert_dir, max_steps=1, eval_every_epochs=100).with_overrides(
        {"data.format": "custom", "data.root": str(out), "data.eval_splits": ["val"], "data.min_score": -1.0}
    )
    train(config, run_dir=folder / "run", progress=False)
    assert (folder / "run" / "checkpoints" / "last").is_dir()
    again = folder / "again"  # the records are a pairs file as they are
    assert main([*base, "--jsonl", str(out / "predictions.json").replace(".json", ".jsonl"), "--out", str(again)]) == 0
    assert [r["sentence"] for r in json.loads((again / "predictions.json").read_text())] == [
        r["sentence"] for r in records
    ]
