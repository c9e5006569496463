"""int8 CPU inference (ONNX Runtime dynamic quantisation): the Segmenter's dtype="int8" agrees with fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from ditsam import Segmenter  # noqa: E402
from ditsam.int8 import quantize_model  # noqa: E402
from ditsam.model.dit import DITSam  # noqa: E402


def test_int8_segmenter_agrees_with_fp32(checkpoint: Path) -> None:
    image = np.random.default_rng(0).integers(0, 255, size=(50, 70, 3), dtype=np.uint8)
    sentences = ["the red circle", "a small blue square on the left"]
    fp32 = Segmenter.from_pretrained(checkpoint, device="cpu").predict(image, sentences)
    int8 = Segmenter.from_pretrained(checkpoint, dtype="int8")
    assert int8.device.type == "cpu" and "int8" in repr(int8)
    got = int8.predict(image, sentences)
    for a, b in zip(got, fp32):
        assert a.mask.shape == b.mask.shape == (50, 70)
        scale = max(1.0, float(np.abs(b.logits).max()))
        assert float(np.abs(a.logits - b.logits).max()) <= 0.05 * scale
        assert abs(a.score - b.score) <= 0.05
        union = (a.mask | b.mask).sum()
        assert union == 0 or (a.mask & b.mask).sum() / union >= 0.9


def test_int8_refuses_points_and_gpus(checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="runs on the CPU"):
        Segmenter.from_pretrained(checkpoint, dtype="int8", device="cuda")
    segmenter = Segmenter(DITSam.from_pretrained(checkpoint), dtype="INT8")
    with pytest.raises(ValueError, match="text prompts only"):
        segmenter.predict(np.zeros((20, 20, 3), dtype=np.uint8), "a", points=([5, 5], [1]))


def test_quantized_file_holds_integer_products(checkpoint: Path, tmp_path: Path) -> None:
    path = quantize_model(DITSam.from_pretrained(checkpoint), tmp_path / "m.onnx")
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "DynamicQuantizeLinear" in ops and ops & {"MatMulInteger", "DynamicQuantizeMatMul"}
