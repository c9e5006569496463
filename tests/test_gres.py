"""Generalized RIS end to end: the no-target head, its loss, GRES evaluation and the predictor's `present`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ditsam.api import Segmenter
from ditsam.data.grefshapes import generate_grefshapes
from ditsam.engine.config import ExperimentConfig
from ditsam.engine.losses import presence_loss, segmentation_loss
from ditsam.engine.train import train
from ditsam.model.dit import DITSam
from helpers import evaluation_by_process_count, tiny_config, tiny_experiment


@pytest.fixture(scope="module")
def grefshapes_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("grefshapes")
    generate_grefshapes(root, seed=3, preset="tiny", num_images={"train": 3, "val": 3, "testA": 2, "testB": 2})
    return root


def gres_experiment(root: Path, bert_dir: Path, **train_overrides) -> ExperimentConfig:
    train_config = dict(epochs=1, ema_decay=0.0, select_metric="giou", **train_overrides)
    return tiny_experiment(root, bert_dir, data_format="grefshapes", model=dict(no_target_head=True), **train_config)


def test_head_off_changes_nothing(tiny_bert_dir):
    model = DITSam(tiny_config(tiny_bert_dir)).eval()
    assert not any(name.startswith("presence_head") for name in model.state_dict())
    output = model(torch.randn(1, 3, 64, 64), text=["a red circle"])
    assert output.presence_logits is None


def test_head_on_gets_gradients_and_its_loss_falls(tiny_bert_dir):
    torch.manual_seed(0)
    model = DITSam(tiny_config(tiny_bert_dir, no_target_head=True)).train()
    head = {name for name in model.trainable_parameter_names() if name.startswith("presence_head.")}
    assert head and all(name in model.state_dict() for name in head)
    images = torch.randn(4, 3, 64, 64)
    text = model.tokenize(["the red circle", "the blue star", "a green square", "the left triangle"])
    masks = torch.zeros(4, 1, 64, 64)
    masks[0, 0, 10:30, 10:30] = 1
    masks[2, 0, 30:50, 5:25] = 1
    no_target = torch.tensor([False, True, False, True])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        output = model(images, text=text)
        loss = presence_loss(output.presence_logits, no_target)
        (loss + segmentation_loss(output.logits, masks)).backward()
        if not losses:
            received = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
            assert head <= received
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses


def test_training_and_evaluation_report_gres_metrics(grefshapes_root, tiny_bert_dir, tmp_path):
    results = train(
        gres_experiment(grefshapes_root, tiny_bert_dir, max_steps=2), run_dir=tmp_path / "run", progress=False
    )
    for split in ("val", "testB"):
        assert set(results[split]) == {"giou", "ciou", "n_acc", "t_acc", "p@0.7", "p@0.8", "p@0.9"}
        assert results[split]["n_acc"] is not None and 0 <= results[split]["giou"] <= 100
    assert "| gIoU | cIoU | N-acc | T-acc |" in (tmp_path / "run" / "results.md").read_text()
    assert (tmp_path / "run" / "checkpoints" / "best" / "config.json").is_file()
    sources = json.loads((tmp_path / "run" / "data_sources.json").read_text())
    assert set(sources) == {"train", "val", "testB"} and len(sources["val"]["sha256"]) == 64

    from ditsam.engine.run_eval import evaluate_checkpoint

    again, out = evaluate_checkpoint(tmp_path / "run" / "checkpoints" / "last", splits=["val"], num_pictures=0)
    assert again["val"]["giou"] == pytest.approx(results["val"]["giou"])
    source = json.loads((out / "results.json").read_text())["val"]["data_source"]
    assert source["refs_file"].endswith("grefs(unc).json") and len(source["sha256"]) == 64
    reference, _ = evaluate_checkpoint(
        tmp_path / "run" / "checkpoints" / "last",
        splits=["val"],
        num_pictures=0,
        protocol="reference",
        out=tmp_path / "reference",
    )
    assert reference["val"]["count"] == again["val"]["count"] and reference["val"]["n_acc"] == again["val"]["n_acc"]


@pytest.mark.skipif(sys.platform != "linux", reason="gloo CPU launch tested on Linux")
def test_two_process_gres_evaluation_matches_one_process(grefshapes_root, tiny_bert_dir, tmp_path):
    train(
        gres_experiment(grefshapes_root, tiny_bert_dir, max_steps=1, eval_every_epochs=100),
        run_dir=tmp_path / "run",
        progress=False,
    )
    evaluation_by_process_count(tmp_path / "run" / "checkpoints" / "last", tmp_path)


@pytest.mark.parametrize("bias, present", [(-20.0, False), (20.0, True)])
def test_predictor_says_when_nothing_is_referred(tiny_bert_dir, tmp_path, bias, present):
    torch.manual_seed(0)
    model = DITSam(tiny_config(tiny_bert_dir, no_target_head=True))
    with torch.no_grad():
        model.presence_head.mlp.layers[-1].bias.fill_(bias)
        model.mask_decoder.output_hypernetworks_mlps[0].layers[-1].bias.fill_(5.0)  # a mask with pixels
    folder = model.save_pretrained(tmp_path / "model")
    seg = Segmenter.from_pretrained(folder, device="cpu")
    result = seg.predict(np.zeros((40, 50, 3), np.uint8), "the blue star")
    assert result.present is present and result.presence == pytest.approx(float(present), abs=1e-6)
    # Without the head, an empty mask is the model's "nothing": present follows the mask.
    plain = Segmenter(DITSam(tiny_config(tiny_bert_dir)), device="cpu", threshold=1e-9 if present else 1 - 1e-9)
    plain_result = plain.predict(np.zeros((40, 50, 3), np.uint8), "the blue star")
    assert plain_result.presence is None and plain_result.present is bool(plain_result.mask.any()) is present
    assert result.mask.shape == (40, 50) and bool(result.mask.any()) is present
    # The web demo says so instead of drawing; `ditsam predict` writes it, with a valid (empty) RLE.
    from PIL import Image
    from pycocotools import mask as mask_utils

    from ditsam.cli.main import main
    from ditsam.web.handler import predict_handler

    shown = predict_handler(seg, image=np.zeros((40, 50, 3), np.uint8), sentence="the blue star")
    assert shown.ok and ("Nothing matches this sentence" in shown.status) is not present
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "image.png")
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(folder),
                "--image",
                str(tmp_path / "image.png"),
                "--text",
                "the blue star",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    record = json.loads((tmp_path / "out" / "predictions.json").read_text())[0]
    decoded = mask_utils.decode(
        {"size": record["segmentation"]["size"], "counts": record["segmentation"]["counts"].encode()}
    )
    assert record["present"] is present and bool(decoded.any()) is present and decoded.shape == (40, 50)


def test_data_of_another_generator_version_is_refused(grefshapes_root, tiny_bert_dir, tmp_path):
    import shutil

    from ditsam.data import DataError
    from ditsam.engine.generated import ensure_refshapes

    copy = tmp_path / "old"
    shutil.copytree(grefshapes_root, copy)
    scenes_path = copy / "grefshapes" / "scenes.json"
    scenes = json.loads(scenes_path.read_text())
    data = gres_experiment(copy, tiny_bert_dir).data
    assert ensure_refshapes(data) == copy
    scenes["version"] = 1
    scenes_path.write_text(json.dumps(scenes))
    with pytest.raises(DataError, match="generator version 1, this ditsam writes version 2"):
        ensure_refshapes(data)


def test_onnx_export_carries_the_presence_output(tiny_bert_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    from ditsam.export import example_inputs, export_onnx, run_onnx

    torch.manual_seed(0)
    model = DITSam(tiny_config(tiny_bert_dir, no_target_head=True))
    report = export_onnx(model, tmp_path / "model.onnx")
    assert report.max_abs_diff is not None and report.max_abs_diff < 1e-3
    image, input_ids, mask = example_inputs(model, batch_size=3, seed=2)
    masks, iou, presence = run_onnx(tmp_path / "model.onnx", image.numpy(), input_ids.numpy(), mask.numpy())
    with torch.no_grad():
        expected = model.eval()(image, text=model.tokenize(["the left one", "a", "the left one"]))
    assert presence.shape == (3,)
    np.testing.assert_allclose(presence, expected.presence_logits.numpy(), atol=1e-4)
