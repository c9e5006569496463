"""The int8 model is built once per (weights, config, export options) and reused; a damaged entry is rebuilt,
never trusted; `ditsam export-onnx --quantize int8` writes it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from ditsam import Segmenter  # noqa: E402
from ditsam.cli.main import main  # noqa: E402
from ditsam.int8 import int8_cache_key as cache_key  # noqa: E402
from ditsam.int8_cache import COMPLETE_MARKER, MODEL_FILE  # noqa: E402
from ditsam.model.dit import DITSam  # noqa: E402

IMAGE = np.random.default_rng(0).integers(0, 255, size=(30, 40, 3), dtype=np.uint8)


@pytest.fixture()
def builds(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every quantisation run (the int8 cache calls ditsam.int8.quantize_model to build an entry)."""
    import ditsam.int8

    made: list[Path] = []
    real = ditsam.int8.quantize_model

    def counting(model, path, **kwargs):
        made.append(Path(path))
        return real(model, path, **kwargs)

    monkeypatch.setattr(ditsam.int8, "quantize_model", counting)
    return made


def test_the_key_follows_weights_config_and_options(checkpoint: Path):
    model = DITSam.from_pretrained(checkpoint)
    key = cache_key(model)
    assert key == cache_key(DITSam.from_pretrained(checkpoint)) and len(key) == 64  # content, not identity
    assert cache_key(model, per_channel=True) != key
    with torch.no_grad():
        model.text_proj.bias[0] += 1e-3
    assert cache_key(model) != key
    other = DITSam.from_pretrained(checkpoint)
    other.config.multimask_output = True  # the same weights, another graph
    assert cache_key(other) != key


def test_built_once_then_reused_and_damage_is_rebuilt(checkpoint: Path, tmp_path: Path, builds, caplog):
    cache = tmp_path / "cache"
    first = Segmenter.from_pretrained(checkpoint, dtype="int8", int8_cache=cache)
    expected = first.predict(IMAGE, "the red circle")
    entry = cache / cache_key(first.model)
    assert len(builds) == 1 and (entry / MODEL_FILE).is_file()
    marker = json.loads((entry / COMPLETE_MARKER).read_text())
    assert set(marker["files"]) == {MODEL_FILE} and marker["options"]["per_channel"] is False

    second = Segmenter.from_pretrained(checkpoint, dtype="int8", int8_cache=cache)
    assert len(builds) == 1, "the second segmenter loads the cached model"
    np.testing.assert_array_equal(second.predict(IMAGE, "the red circle").logits, expected.logits)

    model_file = entry / MODEL_FILE
    model_file.write_bytes(model_file.read_bytes()[:1000])  # a truncated copy
    with caplog.at_level(logging.WARNING, logger="ditsam.int8_cache"):
        third = Segmenter.from_pretrained(checkpoint, dtype="int8", int8_cache=cache)
    assert len(builds) == 2 and f"cache entry {entry} is damaged" in caplog.text
    assert "model_int8.onnx differ from the sha256 recorded" in caplog.text
    np.testing.assert_array_equal(third.predict(IMAGE, "the red circle").logits, expected.logits)

    (entry / COMPLETE_MARKER).write_text("{not json")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ditsam.int8_cache"):
        Segmenter.from_pretrained(checkpoint, dtype="int8", int8_cache=cache)
    assert len(builds) == 3 and "complete.json cannot be read" in caplog.text
    assert sorted(p.name for p in cache.iterdir()) == [entry.name, f"{entry.name}.lock"]  # no temporary left


def test_no_cache_quantises_every_time(checkpoint: Path, tmp_path: Path, builds):
    Segmenter.from_pretrained(checkpoint, dtype="int8", int8_cache=False)
    Segmenter.from_pretrained(checkpoint, dtype="int8", int8_cache=False)
    assert len(builds) == 2


def test_export_onnx_quantize_writes_the_cached_int8_model(checkpoint: Path, tmp_path: Path, builds, capsys):
    cache, out = tmp_path / "cache", tmp_path / "model_int8.onnx"
    args = ["export-onnx", "--checkpoint", str(checkpoint), "--out", str(out), "--quantize", "int8"]
    assert main([*args, "--int8-cache", str(cache)]) == 0
    assert f"wrote {out} (int8; cached as" in capsys.readouterr().out
    key = cache_key(DITSam.from_pretrained(checkpoint))
    assert out.read_bytes() == (cache / key / MODEL_FILE).read_bytes() and len(builds) == 1
    segmenter = Segmenter.from_pretrained(checkpoint, dtype="int8", int8_cache=cache)
    assert len(builds) == 1, "the segmenter reuses what export-onnx built"
    with pytest.raises(ValueError, match="multimask=True needs the PyTorch model"):  # the graph has one mask
        segmenter.predict(IMAGE, "the red circle", multimask=True)
    assert main([*args, "--mask-dtype", "bool"]) == 2
    assert "--quantize int8 writes the int8 model dtype='int8' runs" in capsys.readouterr().err
    assert main([*args[:-2], "--int8-cache", str(cache)]) == 2
    assert "--int8-cache applies with --quantize int8" in capsys.readouterr().err
