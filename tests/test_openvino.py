"""OpenVINO CPU inference: dtype="openvino" agrees with PyTorch, is cached, and refuses what it cannot run."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("openvino")

from ditsam import Segmenter  # noqa: E402
from ditsam.int8_cache import COMPLETE_MARKER  # noqa: E402
from ditsam.model.dit import DITSam  # noqa: E402
from ditsam.openvino_backend import FLOAT_MODEL_FILE, OpenVinoRunner  # noqa: E402

IMAGE = np.random.default_rng(0).integers(0, 255, size=(50, 70, 3), dtype=np.uint8)
SENTENCES = ["the red circle", "a small blue square on the left"]


def test_float32_openvino_equals_pytorch(checkpoint: Path) -> None:
    model = DITSam.from_pretrained(checkpoint).eval()
    runner = OpenVinoRunner.for_model(model, precision="f32", cache=False)
    assert runner.precision == "f32"
    images = torch.randn(
        2, 3, model.config.image_size, model.config.image_size, generator=torch.Generator().manual_seed(1)
    )
    text = model.tokenize(SENTENCES)
    with torch.inference_mode():
        expected = model(images, text=text)
    got = runner(images, text)
    assert got.logits.shape == expected.logits.shape
    assert float((got.logits - expected.logits).abs().max()) <= 1e-3
    assert float((got.iou_predictions - expected.iou_predictions).abs().max()) <= 1e-4


def test_openvino_segmenter_agrees_and_is_cached(checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    fp32 = Segmenter.from_pretrained(checkpoint, device="cpu", dtype="fp32").predict(IMAGE, SENTENCES)
    cache = tmp_path / "cache"
    segmenter = Segmenter.from_pretrained(checkpoint, dtype="OpenVINO", int8_cache=cache)
    assert segmenter.device.type == "cpu" and "dtype=openvino" in repr(segmenter)
    (entry,) = [p for p in cache.iterdir() if p.is_dir()]
    assert (entry / FLOAT_MODEL_FILE).is_file() and (entry / COMPLETE_MARKER).is_file()
    got = segmenter.predict(IMAGE, SENTENCES)
    for a, b in zip(got, fp32):
        assert a.mask.shape == b.mask.shape == (50, 70)
        scale = max(1.0, float(np.abs(b.logits).max()))
        assert float(np.abs(a.logits - b.logits).max()) <= 0.05 * scale  # bf16 on a CPU with bf16 hardware
        union = (a.mask | b.mask).sum()
        assert union == 0 or (a.mask & b.mask).sum() / union >= 0.9

    def no_export(*args, **kwargs):
        raise AssertionError("exported again instead of taken from the cache")

    monkeypatch.setattr("ditsam.export.export_onnx", no_export)
    again = Segmenter.from_pretrained(checkpoint, dtype="openvino", int8_cache=cache).predict(IMAGE, SENTENCES)
    np.testing.assert_array_equal(again[0].logits, got[0].logits)


def test_openvino_refuses_gpus_points_and_names_its_extra(checkpoint: Path, monkeypatch) -> None:
    with pytest.raises(ValueError, match="dtype='openvino' runs on the CPU"):
        Segmenter.from_pretrained(checkpoint, dtype="openvino", device="cuda")
    segmenter = Segmenter(DITSam.from_pretrained(checkpoint), dtype="openvino", int8_cache=False)
    with pytest.raises(ValueError, match="text prompts only"):
        segmenter.predict(IMAGE, "a", points=([5, 5], [1]))
    with pytest.raises(ValueError, match="the openvino model is exported for text prompts"):
        segmenter.predict(IMAGE, points=([5, 5], [1]))
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(ImportError, match=r"pip install 'ditsam\[openvino\]'"):
        Segmenter(DITSam.from_pretrained(checkpoint), dtype="openvino", int8_cache=False)
