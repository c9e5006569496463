"""The tiny SAM shipped inside the package (``refshapes-sam``): found by name with no network, its weights the
ones its card and the name table record, promptable by points as SAM is, and a start that DIT tunes."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from ditsam.api import Segmenter
from ditsam.data.refshapes_stream import RefShapesStream
from ditsam.digest import file_sha256
from ditsam.engine.config import load_experiment
from ditsam.model.checkpoints import BUNDLED_MODELS, CheckpointError, bundled, bundled_folder, load_checkpoint
from ditsam.model.dit import DITSam
from helpers import tiny_config

NAME = "refshapes-sam"
SCENES = 8
# Mean IoU of one click per object on the fixed scenes that a working tiny SAM clears (issue 18: 0.7).
POINT_IOU = 0.7
# Images per split of the demo test's data (the tiny preset's scenes, a sixth of its evaluation splits).
DEMO_TEST_IMAGES = {"train": 2, "val": 6, "testA": 6, "testB": 6}


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    return Segmenter.from_pretrained(NAME, device="cpu", dtype="fp32")


def test_the_name_loads_offline_and_its_weights_match_card_and_table(no_network) -> None:
    folder = bundled_folder(NAME)
    digest = file_sha256(folder / "model.safetensors")
    assert digest == BUNDLED_MODELS[NAME].sha256
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert re.search(rf"SHA-256 of `model.safetensors`: `{digest}`", card)
    assert f"ditsam train {BUNDLED_MODELS[NAME].experiment}" in card
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size <= 5_000_000
    model = DITSam.from_pretrained(NAME)
    assert model.config.injection == "none"


def test_a_changed_copy_is_refused(monkeypatch, tmp_path) -> None:
    wrong = bundled.BundledModel(name=NAME, experiment="refshapes/sam", sha256="f" * 64)
    monkeypatch.setattr(bundled, "BUNDLED_MODELS", {NAME: wrong})
    with pytest.raises(CheckpointError, match="changed or damaged"):
        bundled_folder(NAME)
    with pytest.raises(KeyError, match="shipped: refshapes-sam"):
        bundled_folder("refshapes-sam2")


def _click(mask: np.ndarray) -> tuple[float, float]:
    """The centre of the object pixel nearest the mask's centroid (a click on the object)."""
    ys, xs = np.nonzero(mask)
    nearest = np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2)
    return float(xs[nearest]) + 0.5, float(ys[nearest]) + 0.5


def test_one_click_segments_the_object_on_fixed_scenes(segmenter) -> None:
    stream = RefShapesStream(seed=11, preset="demo", samples_per_epoch=SCENES, items_per_scene=1)
    ious = []
    for index in range(SCENES):
        sample = stream[index]
        x, y = _click(sample.mask)
        result = segmenter.predict(sample.pixels, points=([[x, y]], [1]))
        union = np.logical_or(result.mask, sample.mask).sum()
        ious.append(np.logical_and(result.mask, sample.mask).sum() / union)
    assert np.mean(ious) >= POINT_IOU, ious


def test_a_box_alone_segments_and_text_is_not_needed(segmenter) -> None:
    sample = RefShapesStream(seed=12, preset="demo", samples_per_epoch=1, items_per_scene=1)[0]
    ys, xs = np.nonzero(sample.mask)
    result = segmenter.predict(sample.pixels, boxes=[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    iou = np.logical_and(result.mask, sample.mask).sum() / np.logical_or(result.mask, sample.mask).sum()
    assert iou >= POINT_IOU
    with pytest.raises(ValueError, match="give text, or points= / boxes="):
        segmenter.predict(sample.pixels)


def test_every_refshapes_experiment_starts_from_it_and_scratch_is_one_switch() -> None:
    assert load_experiment("refshapes/ldit").train.init_checkpoint == NAME
    assert load_experiment("refshapes/default").train.init_checkpoint == NAME
    assert load_experiment("refshapes/sam").train.init_checkpoint == ""
    assert load_experiment("refshapes/ldit", {"train.init_checkpoint": ""}).train.init_checkpoint == ""


def test_an_ldit_built_on_it_gets_its_weights_and_a_fresh_injection(tiny_bert_dir) -> None:
    config = load_experiment("refshapes/ldit").model
    sam = DITSam.from_pretrained(NAME)
    ldit = DITSam(config.with_overrides({"text": sam.config.text.to_dict()}), load_text_weights=False)
    report = load_checkpoint(ldit, bundled_folder(NAME))
    assert report.fresh and all(key.startswith("image_encoder.injection.") for key in report.fresh)
    assert torch.equal(
        ldit.state_dict()["image_encoder.patch_embed.proj.weight"],
        sam.state_dict()["image_encoder.patch_embed.proj.weight"],
    )
    with pytest.raises(CheckpointError):
        load_checkpoint(DITSam(tiny_config(tiny_bert_dir), load_text_weights=False), bundled_folder(NAME))


def test_the_demo_scores_the_start_beside_the_tuned_models(tmp_path, capsys) -> None:
    from ditsam.cli.main import main
    from ditsam.data.refshapes import generate_refshapes

    # A few evaluation scenes written beforehand (the demo generates its data only where none is): the demo's
    # whole path, without scoring four models on ~150 sentences per split.
    data = generate_refshapes(tmp_path / "data", seed=0, num_images=DEMO_TEST_IMAGES)
    tiny = ["data.refshapes_preset=tiny", "train.max_steps=2", "data.train_stream_samples=16", "train.epochs=1"]
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--data", str(data), *tiny]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["start"]) == {"points", "box"}
    assert set(results["start"]["box"]) == {"val", "testA", "testB"}
    assert results["start"]["box"]["val"]["miou"] > 50  # the tiny SAM segments from a box, untrained on text
    table = (out / "results.md").read_text()
    assert f"### {NAME}, not trained on text: the target's box" in table
    assert f"### {NAME}, not trained on text: 5 clicks on the target" in table
    ldit, default = (results["models"][name] for name in ("refshapes-ldit", "refshapes-default"))
    gap = ldit["val"]["miou"] - default["val"]["miou"]
    assert f"L-DIT minus the decoder-only baseline, mIoU: val {gap:+.1f}" in capsys.readouterr().out
