"""train.log_with: trackers through accelerate. TensorBoard (the run folder's, default) and mlflow's file store
(offline) get the scalars of metrics.jsonl at their steps; a tracker not installed stops training before it starts."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from ditsam.config import ConfigError
from ditsam.engine.config import load_experiment
from ditsam.engine.trackers import flat_config
from ditsam.engine.train import Trainer, train
from helpers import tiny_experiment


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _scalars(records: list[dict], key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in records if key in r]


def test_tensorboard_and_mlflow_get_the_metrics(refshapes_root, tiny_bert_dir, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    store = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3 keeps the file store behind this switch
    config = tiny_experiment(refshapes_root, tiny_bert_dir, max_steps=2, log_every_steps=1)
    config = config.with_overrides({"train.log_with": ["tensorboard", "mlflow"]})
    run = tmp_path / "run"
    train(config, run_dir=run, progress=False)
    records = _metrics(run)
    losses, miou = _scalars(records, "train/loss"), _scalars(records, "val/miou")
    assert len(losses) == 2 and len(miou) == 1

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert [(e.step, pytest.approx(e.value)) for e in events.Scalars("train/loss")] == losses
    assert [(e.step, pytest.approx(e.value)) for e in events.Scalars("val/miou")] == miou
    assert {"predictions/val", "predictions/testB"} <= set(events.Tags()["images"])

    client = MlflowClient(store)
    (experiment,) = [e for e in client.search_experiments() if e.name == "tiny"]  # the experiment's name
    (mlflow_run,) = client.search_runs([experiment.experiment_id])
    history = client.get_metric_history(mlflow_run.info.run_id, "train/loss")
    assert [(m.step, pytest.approx(m.value)) for m in history] == losses
    assert [m.value for m in client.get_metric_history(mlflow_run.info.run_id, "val/p_at_0.5")] == [
        pytest.approx(next(r for r in records if "val/p@0.5" in r)["val/p@0.5"])
    ]  # mlflow takes no "@" in a name
    assert mlflow_run.data.params["train.lr"] == str(config.train.lr)  # the flattened config, once
    assert mlflow_run.data.params["model.injection"] == "layerwise"


def test_no_tracker_keeps_metrics_jsonl_only(refshapes_root, tiny_bert_dir, tmp_path):
    config = tiny_experiment(refshapes_root, tiny_bert_dir, max_steps=1, eval_every_epochs=100, log_with=[])
    train(config, run_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "tensorboard").exists() and _metrics(tmp_path / "run")


def test_a_tracker_not_installed_stops_before_training(refshapes_root, tiny_bert_dir, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    config = tiny_experiment(refshapes_root, tiny_bert_dir, max_steps=1, log_with=["tensorboard", "wandb"])
    with pytest.raises(
        ConfigError, match=r"train.log_with names wandb, which is not installed: pip install 'ditsam\[wandb\]'"
    ):
        Trainer(config, run_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists(), "nothing was written"


def test_unknown_or_repeated_tracker_names_are_config_errors():
    with pytest.raises(
        ConfigError, match=r"train: log_with: unknown tracker\(s\) 'tensorbord'; known: tensorboard, wandb"
    ):
        load_experiment("refshapes/ldit", {"train.log_with": ["tensorbord"]})
    with pytest.raises(ConfigError, match=r"tracker\(s\) 'mlflow' named more than once"):
        load_experiment("refshapes/ldit", {"train.log_with": ["mlflow", "mlflow"]})
    assert load_experiment("refshapes/ldit").train.log_with == ("tensorboard",)


def test_flat_config_for_hyper_parameter_tables():
    flat = flat_config({"a": 1, "b": {"c": [1, 2], "d": None, "e": {"f": "x"}}, "g": True})
    assert flat == {"a": 1, "b.c": "[1, 2]", "b.d": "None", "b.e.f": "x", "g": True}
