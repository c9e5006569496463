"""Training and evaluation end to end on a few generated RefShapes images, CPU, tiny model."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from ditsam.config import ConfigError
from ditsam.engine.run_folder import RunFolderError
from ditsam.engine.train import NonFiniteLossError, Trainer, train
from ditsam.versions import software_versions
from helpers import evaluation_by_process_count, tiny_experiment


def test_two_steps_then_eval_writes_a_complete_run(refshapes_root, tiny_bert_dir, tmp_path):
    config = tiny_experiment(refshapes_root, tiny_bert_dir, max_steps=2)
    results = train(config, run_dir=tmp_path / "run", progress=False)
    assert set(results) == {"val", "testB"}
    for metrics in results.values():
        assert 0.0 <= metrics["miou"] <= 100.0 and set(metrics) >= {"oiou", "p@0.5", "p@0.9"}
    run = tmp_path / "run"
    for path in [
        "config.yaml",
        "metrics.jsonl",
        "results.json",
        "results.md",
        "checkpoints/last/model.safetensors",
        "checkpoints/last/training_state.pt",
        "checkpoints/best/config.json",
    ]:
        assert (run / path).exists(), path
    assert list((run / "predictions").glob("*.png"))
    assert list((run / "tensorboard").iterdir())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("val/miou" in r for r in records)
    assert not list(run.glob("checkpoints/.*")), "no temporary checkpoint folders are left behind"
    assert json.loads((run / "versions.json").read_text()) == software_versions()
    assert json.loads((run / "checkpoints" / "best" / "config.json").read_text())["versions"] == software_versions()

    from ditsam.engine.run_eval import evaluate_checkpoint

    again, out = evaluate_checkpoint(run / "checkpoints" / "last", splits=["val", "testB"], dump_masks="rle")
    for split in ("val", "testB"):
        assert again[split]["miou"] == pytest.approx(results[split]["miou"])
    assert (out / "results.json").exists() and (out / "masks_val.rle.json").exists()
    written = json.loads((out / "results.json").read_text())["val"]
    assert written["protocol"] == "exact" and written["versions"] == software_versions()
    reference, ref_out = evaluate_checkpoint(
        run / "checkpoints" / "last", splits=["val"], protocol="reference", out=tmp_path / "reference", num_pictures=0
    )
    assert json.loads((ref_out / "results.json").read_text())["val"]["protocol"] == "reference"
    assert reference["val"]["count"] == again["val"]["count"]


def test_resume_gives_the_same_weights(refshapes_root, tiny_bert_dir, tmp_path):
    straight = Trainer(
        tiny_experiment(refshapes_root, tiny_bert_dir, max_steps=4, eval_every_epochs=100),
        run_dir=tmp_path / "straight",
        progress=False,
    )
    straight.fit()
    Trainer(
        tiny_experiment(refshapes_root, tiny_bert_dir, max_steps=2, eval_every_epochs=100),
        run_dir=tmp_path / "split",
        progress=False,
    ).fit()
    resumed = Trainer(
        tiny_experiment(refshapes_root, tiny_bert_dir, max_steps=4, eval_every_epochs=100),
        run_dir=tmp_path / "split",
        resume=True,
        progress=False,
    )
    assert resumed.progress.global_step == 2
    resumed.fit()
    assert resumed.progress.global_step == 4
    a, b = straight.unwrapped.state_dict(), resumed.unwrapped.state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    for name, value in straight.ema.shadow.state_dict().items():
        torch.testing.assert_close(value, resumed.ema.shadow.state_dict()[name], rtol=0, atol=0, msg=name)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(refshapes_root, tiny_bert_dir, tmp_path, monkeypatch):
    config = tiny_experiment(refshapes_root, tiny_bert_dir, max_steps=4, save_every_steps=1, eval_every_epochs=100)
    trainer = Trainer(config, run_dir=tmp_path / "run", progress=False)
    import ditsam.engine.losses as losses_module

    calls = {"n": 0}
    real_loss = losses_module.mask_loss

    def poisoned(logits, iou, target, **kwargs):
        calls["n"] += 1
        loss = real_loss(logits, iou, target, **kwargs)
        return loss * float("nan") if calls["n"] > 4 else loss

    monkeypatch.setattr(losses_module, "mask_loss", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"step 2 .*ref_ids"):
        trainer.fit()
    state = torch.load(tmp_path / "run/checkpoints/last/training_state.pt", weights_only=True)
    assert state["progress"]["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_bad_inputs(refshapes_root, tiny_bert_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        config = tiny_experiment(refshapes_root, tiny_bert_dir).with_overrides(
            {"data.format": "refer", "data.root": str(tmp_path / "does-not-exist")}
        )
        Trainer(config, run_dir=tmp_path / "r1", progress=False)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(RunFolderError, match="not writable"):
        Trainer(tiny_experiment(refshapes_root, tiny_bert_dir), run_dir=blocker / "run", progress=False)
    with pytest.raises(ConfigError, match="multiple of train.micro_batch_size"):
        Trainer(tiny_experiment(refshapes_root, tiny_bert_dir, batch_size=5), run_dir=tmp_path / "r2", progress=False)
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        Trainer(tiny_experiment(refshapes_root, tiny_bert_dir), run_dir=tmp_path / "r3", resume=True, progress=False)


def test_cli_unknown_experiment_is_one_clear_line(capsys):
    from ditsam.cli.main import main

    assert main(["train", "refshapes/nope"]) == 2
    error = capsys.readouterr().err
    assert "unknown experiment 'refshapes/nope'" in error and "Traceback" not in error


@pytest.mark.skipif(sys.platform != "linux", reason="gloo CPU launch tested on Linux")
def test_two_process_evaluation_matches_one_process(refshapes_root, tiny_bert_dir, tmp_path):
    config = tiny_experiment(refshapes_root, tiny_bert_dir, max_steps=1, eval_every_epochs=100)
    train(config, run_dir=tmp_path / "run", progress=False)
    evaluation_by_process_count(tmp_path / "run" / "checkpoints" / "last", tmp_path)


def test_mix_training_step_runs(refshapes_root, tiny_bert_dir, tmp_path):
    config = tiny_experiment(
        refshapes_root, tiny_bert_dir, max_steps=3, prompt_mix=[0.0, 0.5, 0.5], eval_every_epochs=100
    )
    results = train(config, run_dir=tmp_path / "run", progress=False)
    assert set(results) == {"val", "testB"}


def test_cli_lists_experiments_and_asks_for_one(capsys):
    from ditsam.cli.main import main

    assert main(["train", "--list"]) == 0
    listed = capsys.readouterr().out.split()
    assert "refshapes/ldit" in listed and "refcoco/ldit_vith" in listed
    assert main(["train"]) == 2
    assert "which experiment" in capsys.readouterr().err
