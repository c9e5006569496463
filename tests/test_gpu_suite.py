"""benchmarks/gpu_suite.py --smoke: every section runs on the CPU and is recorded, with neither
pycocotools nor an installed ditsam (the GPU machines have neither); and the model, the Segmenter and
the engine's training step import and run without pycocotools."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Run in a fresh interpreter: any import of pycocotools fails, as on a machine without it.
BLOCK_PYCOCOTOOLS = """
import importlib.abc, sys

class _NoPycocotools(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "pycocotools" or name.startswith("pycocotools."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None

sys.meta_path.insert(0, _NoPycocotools())
"""

RUN_SUITE = (
    BLOCK_PYCOCOTOOLS
    + """
import runpy
script = sys.argv[1]
sys.path.insert(0, str(__import__("pathlib").Path(script).parent))
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""
)

SEGMENT_AND_STEP = (
    BLOCK_PYCOCOTOOLS
    + """
import numpy as np, torch
from accelerate import Accelerator
from ditsam import Segmenter
from ditsam.engine.config import TrainConfig
from ditsam.engine.step import MicroBatch, TrainingStep, build_adam
from ditsam.engine.losses import segmentation_loss
from ditsam.model.dit import DITSam

model = DITSam.from_pretrained(sys.argv[1])
result = Segmenter(model, device="cpu").predict(np.zeros((40, 60, 3), dtype=np.uint8), "the red circle")
assert result.mask.shape == (40, 60)
model.train()
accelerator = Accelerator(cpu=True)
optimizer = build_adam(model.parameters(), TrainConfig(), device=accelerator.device)
step = TrainingStep(accelerator=accelerator, model=model, optimizer=optimizer,
                    loss_fn=lambda output, micro: segmentation_loss(output.logits, micro.masks))
size = model.config.image_size
result = step([MicroBatch(torch.randn(2, 3, size, size), torch.zeros(2, 1, size, size), {"text": model.tokenize(["a", "the star"])})])
assert bool(result.finite.all())
assert "pycocotools" not in sys.modules
print("ok")
"""
)


def _env() -> dict[str, str]:
    # PYTHONPATH=src only: the checkout's source, as on the GPU machines where ditsam is not installed.
    return dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


def test_gpu_suite_smoke_runs_every_section_without_pycocotools(tmp_path: Path) -> None:
    # A generous budget: the section time boxes scale with it, so a loaded CI machine does not time out.
    command = [
        sys.executable,
        "-c",
        RUN_SUITE,
        str(ROOT / "benchmarks" / "gpu_suite.py"),
        "--smoke",
        "--cpu",
        "--budget",
        "300",
        "--out-dir",
        str(tmp_path),
    ]
    result = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "gpu_cpu_smoke.json").read_text())
    sections = record["sections"]
    assert list(sections) == [
        "environment",
        "latency",
        "agreement",
        "text_cost",
        "attention",
        "throughput",
        "backbones",
        "training",
        "compile",
        "large",
    ]
    failed = {
        name: (entry["status"], entry.get("error")) for name, entry in sections.items() if entry["status"] != "ok"
    }
    assert not failed, failed
    environment = sections["environment"]
    assert environment["pycocotools_loaded"] is False
    assert Path(environment["ditsam_source"]) == ROOT / "src" / "ditsam"
    latency = sections["latency"]
    assert {"model_fp32_b1", "encoder_fp32_b1", "model_bf16_b1", "encoder_bf16_b1"} <= set(latency)
    # Same weights: the two text-padding forms agree to fp32 rounding, bf16 stays close.
    agreement = sections["agreement"]
    assert agreement["padding_mask_vs_folded_fp32"]["max_abs_diff"] <= 1e-4 * max(
        1.0, agreement["padding_mask_vs_folded_fp32"]["reference_max_abs"]
    )
    assert agreement["bf16_vs_fp32"]["mask_iou"] > 0.5
    assert set(sections["text_cost"]["bf16_b1"]["cost_pct"]) == {"e2e", "layerwise"}
    for mode in ("folded", "mask"):
        attention = sections["attention"][mode]
        assert sum(attention["encoder_ops"].values()) >= 2  # one SDPA call per ViT block
        assert isinstance(attention["encoder_ms_by_backend"]["MATH"], float)
    assert sections["throughput"]["largest_batch_run"] == 8
    # SAM and EfficientSAM side by side, the whole Segmenter.predict with dtype="auto" (float32 on this CPU
    # unless it does bf16 in hardware).
    backbones = sections["backbones"]
    assert set(backbones) >= {"tiny_sam", "tiny_efficientsam"}
    for entry in (backbones["tiny_sam"], backbones["tiny_efficientsam"]):
        assert entry["predict_auto"]["median_ms"] > 0 and entry["bf16_b4"]["images_per_s"] > 0
        assert entry["auto_dtype"] in ("float32", "bfloat16")
    assert backbones["tiny_efficientsam"]["predict_speedup_vs_first"] > 0
    training = sections["training"]
    assert set(training) >= {"b2_plain", "b2_checkpointing"}
    for entry in (training["b2_plain"], training["b2_checkpointing"], sections["large"]["tiny_wide"]["training"]):
        assert entry["samples_per_s"] > 0 and entry["flops_per_step"] > 0
    assert "bf16_b1" in sections["compile"]["default"]
    assert set(record["goals"]) == {
        "batch1_bf16_full_model_ms",
        "batch64_images_per_s",
        "training_mfu_pct",
        "text_tokens_cost_pct",
    }
    table = (tmp_path / "gpu_cpu_smoke.md").read_text()
    assert "| goal | value | target | ratio | met |" in table and "| training |" in table


def test_segmenter_and_training_step_need_no_pycocotools(checkpoint: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SEGMENT_AND_STEP, str(checkpoint)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
