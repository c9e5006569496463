"""examples/quickstart.ipynb runs from top to bottom (nbclient, a fresh kernel) on a tiny model instead of a
released one: the parameters cell is replaced, as papermill would, and nothing is downloaded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"
SRC = Path(__file__).resolve().parents[1] / "src"
CELL_TIMEOUT_S = 300


def test_the_notebook_is_stored_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)
    assert sum("parameters" in cell.metadata.get("tags", []) for cell in code) == 1


def test_the_notebook_runs_on_a_tiny_model(checkpoint, tiny_bert_dir, tmp_path, monkeypatch):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    parameters = next(cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", []))
    parameters.source = "\n".join(
        [
            f"MODEL = {str(checkpoint)!r}",
            "PHOTO = None",
            f"TEXT_MODEL = {str(tiny_bert_dir)!r}",
            'SENTENCES = ["the red circle", "the blue square"]',
            'FINETUNE_OVERRIDES = {"train.lora_rank": 2, "train.lora_alpha": 4.0, "train.mixed_precision": "no"}',
            f"WORKDIR = {str(tmp_path / 'quickstart')!r}",
        ]
    )
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nbclient.NotebookClient(
        notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    errors = [output for cell in notebook.cells for output in cell.get("outputs", []) if output.output_type == "error"]
    assert not errors
    images = [
        output for cell in notebook.cells for output in cell.get("outputs", []) if "image/png" in output.get("data", {})
    ]
    assert len(images) == 3, "one overlay, the several-sentence row, before / after fine-tuning"
    scores = json.loads((tmp_path / "quickstart" / "run" / "results.json").read_text())
    assert "val" in scores and (tmp_path / "quickstart" / "run" / "checkpoints" / "best").is_dir()
