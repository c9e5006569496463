"""benchmarks/finetune_memory.py --smoke: every fine-tuning mode runs one step in its own process and is recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_finetune_memory_smoke(tmp_path: Path) -> None:
    out = tmp_path / "finetune_memory_smoke.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "benchmarks/finetune_memory.py", "--smoke", "--cpu", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(out.read_text())
    assert record["smoke"] is True and "cpu_model" in record["machine"]
    assert set(record["parameters"]) == {"full", "frozen", "lora"}
    settings = {entry["mode"]: entry for entry in record["settings"]}
    assert set(settings) == {"full", "frozen", "lora"}
    counts = record["parameters"]
    for mode, entry in settings.items():
        assert "error" not in entry, entry
        assert entry["batch"] == 1 and entry["samples_per_s"] > 0 and entry["peak_rss_gib"] > 0
        assert entry["step_rss_increase_gib"] > 0
        # The meta-device count of parameters that get a gradient matches what the real step produced.
        assert entry["params_with_grad"] == counts[mode]["with_grad"], mode
    assert counts["frozen"]["with_grad"] < counts["lora"]["with_grad"] < counts["full"]["with_grad"]
    assert counts["lora"]["with_grad_by_part"]["lora"] > 0
