"""dtype="auto": bf16 autocast where the device does bf16 in hardware (a CPU's AMX-BF16 / AVX512-BF16 flags, a CUDA
GPU with bf16), float32 elsewhere; the default of Segmenter and of ditsam predict / serve / eval."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from ditsam.api import Segmenter
from ditsam.cli.main import build_parser
from ditsam.inference import devices

XEON_AMX = "flags\t\t: fpu vme sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
PLAIN_AVX512 = "flags\t\t: fpu vme sse avx2 avx512f avx512bw\n"


@pytest.fixture
def cpu_flags(tmp_path, monkeypatch):
    """Write a /proc/cpuinfo stand-in; the auto choice is forgotten before and after."""

    def use(text: str) -> None:
        path = tmp_path / "cpuinfo"
        path.write_text("processor\t: 0\n" + text)
        monkeypatch.setattr(devices, "_CPUINFO", str(path))
        devices.auto_dtype.cache_clear()

    yield use
    devices.auto_dtype.cache_clear()


def test_the_cpu_flags_decide(cpu_flags, caplog):
    cpu_flags(XEON_AMX)
    assert devices.cpu_bf16_flags() == ("amx_bf16", "avx512_bf16")
    with caplog.at_level(logging.INFO, logger="ditsam.inference.devices"):
        assert devices.resolve_dtype("auto", device=torch.device("cpu")) == torch.bfloat16
        assert devices.resolve_dtype("AUTO") == torch.bfloat16
    assert [r.getMessage() for r in caplog.records].count(
        "dtype='auto' on cpu: bf16 autocast (the CPU has amx_bf16 and avx512_bf16)"
    ) == 1, "said once"
    cpu_flags(PLAIN_AVX512)
    assert devices.cpu_bf16_flags() == () and devices.resolve_dtype("auto") is None
    assert devices.resolve_dtype("fp32") is None and devices.resolve_dtype("bf16") == torch.bfloat16


def test_no_cpuinfo_means_float32(cpu_flags, monkeypatch, tmp_path):
    monkeypatch.setattr(devices, "_CPUINFO", str(tmp_path / "missing"))
    devices.auto_dtype.cache_clear()
    assert devices.resolve_dtype("auto") is None
    assert devices.resolve_dtype("auto", device=torch.device("mps")) is None


def test_segmenter_defaults_to_auto_and_agrees_with_float32(checkpoint, cpu_flags):
    cpu_flags(XEON_AMX)
    auto = Segmenter.from_pretrained(checkpoint, device="cpu", threshold=0.5)
    assert auto.dtype == torch.bfloat16
    cpu_flags(PLAIN_AVX512)
    assert Segmenter.from_pretrained(checkpoint, device="cpu").dtype is None
    full = Segmenter.from_pretrained(checkpoint, device="cpu", dtype="fp32", threshold=0.5)
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    sentences = ["the red circle", "a small blue square", "the large star on the left"]
    for a, b in zip(auto.predict(image, sentences), full.predict(image, sentences)):
        assert a.logits.dtype == np.float32
        np.testing.assert_allclose(a.logits, b.logits, atol=0.15)


@pytest.mark.parametrize("command", ["predict", "serve", "eval"])
def test_the_commands_default_to_auto(command):
    required = {"predict": ["--checkpoint", "c", "--image", "a.png"], "serve": ["--checkpoint", "c"], "eval": ["c"]}
    args = build_parser().parse_args([command, *required[command]])
    assert args.dtype == "auto"


def test_eval_records_the_precision(checkpoint, refshapes_root, tiny_bert_dir, tmp_path, cpu_flags):
    import yaml

    from ditsam.engine.run_eval import evaluate_checkpoint
    from helpers import tiny_experiment

    cpu_flags(XEON_AMX)
    experiment = tmp_path / "e.yaml"
    experiment.write_text(yaml.safe_dump(tiny_experiment(refshapes_root, tiny_bert_dir).to_dict(), sort_keys=False))
    results, out = evaluate_checkpoint(
        checkpoint, data=str(experiment), splits=["val"], out=tmp_path / "e", device="cpu"
    )
    assert results["val"]["dtype"] == "bf16"
    assert json.loads((out / "results.json").read_text())["val"]["dtype"] == "bf16"
    results, _ = evaluate_checkpoint(
        checkpoint, data=str(experiment), splits=["val"], out=tmp_path / "f", device="cpu", dtype="fp32"
    )
    assert results["val"]["dtype"] == "no"
