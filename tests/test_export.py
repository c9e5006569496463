"""ONNX export: onnxruntime matches PyTorch (<= 1e-3) with dynamic batch and token count."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ditsam.model.dit import DITSam
from helpers import tiny_config

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

from ditsam.export import check_onnx, example_inputs, export_onnx, onnx_wrapper, run_onnx  # noqa: E402


def test_onnx_matches_pytorch(tiny_bert_dir: Path, tmp_path: Path) -> None:
    model = DITSam(tiny_config(tiny_bert_dir, injection="layerwise", injection_options=dict(zero_init=False))).eval()
    report = export_onnx(model, tmp_path / "model.onnx", opset=17)
    assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-3
    graph = onnx.load(str(report.path)).graph
    assert [i.name for i in graph.input] == ["image", "input_ids", "attention_mask"]
    assert [o.name for o in graph.output] == ["masks", "iou"]

    # Another batch size and fewer tokens than traced: the axes are dynamic.
    image, input_ids, attention_mask = example_inputs(model, batch_size=3, seed=5)
    input_ids, attention_mask = input_ids[:, :6], attention_mask[:, :6]
    masks, iou = run_onnx(report.path, image.numpy(), input_ids.numpy(), attention_mask.numpy())
    with torch.no_grad():
        expected_masks, expected_iou = onnx_wrapper(model)(image, input_ids, attention_mask)
    assert masks.shape == (3, 1, 64, 64) and iou.shape == (3, 1)
    np.testing.assert_allclose(masks, expected_masks.numpy(), atol=1e-3, rtol=0)
    np.testing.assert_allclose(iou, expected_iou.numpy(), atol=1e-3, rtol=0)
    # The ONNX output is the Segmenter's canvas output: same logits as the model's own forward.
    with torch.no_grad():
        direct = model(image, text=model.tokenize(["the left one", "a", "the left one"]))
    tokens = model.tokenize(["the left one", "a", "the left one"])
    masks, _ = run_onnx(report.path, image.numpy(), tokens.input_ids.numpy(), tokens.attention_mask.long().numpy())
    np.testing.assert_allclose(masks, direct.logits.numpy(), atol=1e-3, rtol=0)


def test_bool_attention_mask_and_cli(tiny_bert_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Also another architecture: E-DIT, windowed attention, static tokens (checked by the command)."""
    from ditsam.cli.main import main

    config = tiny_config(tiny_bert_dir, injection="e2e", attention="windowed", injection_options=dict(static_tokens=2))
    checkpoint = DITSam(config).save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "exported" / "m.onnx"
    assert main(["export-onnx", "--checkpoint", str(checkpoint), "--out", str(out), "--mask-dtype", "bool"]) == 0
    printed = capsys.readouterr().out
    assert "max |onnxruntime - torch|" in printed
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert {i.name: i.type for i in session.get_inputs()}["attention_mask"] == "tensor(bool)"
    diff, how = check_onnx(DITSam.from_pretrained(checkpoint), out, attention_mask_dtype="bool")
    assert diff is not None and diff <= 1e-3 and how.startswith("onnxruntime")
    assert main(["export-onnx", "--checkpoint", str(tmp_path / "nowhere"), "--out", str(out)]) == 2


def test_out_that_would_replace_a_checkpoint_or_cannot_be_written(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Refused in one line before the model loads: a checkpoint's name as --out (swapped arguments would
    write an ONNX graph over the weights), or a folder that cannot be written."""
    from ditsam.cli.main import main

    swapped = tmp_path / "model.pth"
    swapped.write_bytes(b"weights")
    for out, expected in [
        (swapped, "checkpoint's suffix .pth"),
        (tmp_path / "a-file" / "m.onnx", "is a file"),
        (checkpoint, "is a folder"),
    ]:
        (tmp_path / "a-file").write_text("x")
        assert main(["export-onnx", "--checkpoint", str(checkpoint), "--out", str(out), "--no-verify"]) == 2
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err, err
    assert swapped.read_bytes() == b"weights"
