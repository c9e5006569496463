"""Training runs that survive mistakes, kills and full disks (issue 11): run folders are never replaced
unasked, interrupted checkpoint writes are recovered, resumed logs do not repeat steps, and every
failure is one sentence. Tiny model, a few generated RefShapes images, CPU."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from ditsam.cli.main import main
from ditsam.config import ConfigError
from ditsam.data import DataError
from ditsam.engine.checkpoint import COMPLETE_MARKER, PAUSE_BETWEEN_RENAMES_ENV, recover_checkpoints
from ditsam.engine.run_folder import RunFolderError
from ditsam.engine.text_encoder import resolve_text_encoder
from ditsam.engine.train import NonFiniteLossError, Trainer, train
from helpers import tiny_experiment

SRC = Path(__file__).resolve().parents[1] / "src"
KILL_WAIT_S = 120  # longest wait for the subprocess to reach the point where it is killed


def _steps(run: Path) -> list[int]:
    """The steps of the training-loss records of metrics.jsonl, in file order."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in records if "train/loss" in r]


def _state(checkpoint: Path) -> dict:
    """The training progress a checkpoint copy holds."""
    return torch.load(checkpoint / "training_state.pt", weights_only=True)["progress"]


def _state_step(checkpoint: Path) -> int:
    return int(_state(checkpoint)["global_step"])


def _yaml(config, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return path


def _one_line_error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("ditsam ")]
    assert len(lines) == 1, err
    return lines[0]


# ---------------------------------------------------------------------------------------------------
# Run folders are never replaced unasked
# ---------------------------------------------------------------------------------------------------
def test_run_folder_with_checkpoints_needs_resume_or_overwrite(refshapes_root, tiny_bert_dir, tmp_path, capsys):
    config = tiny_experiment(refshapes_root, tiny_bert_dir, max_steps=1, eval_every_epochs=100, log_every_steps=1)
    run = tmp_path / "run"
    train(config, run_dir=run, progress=False)
    weights = (run / "checkpoints/last/model.safetensors").read_bytes()
    (run / "notes.txt").write_text("mine")

    with pytest.raises(RunFolderError, match=r"already holds results .*checkpoints/last.*--resume.*--overwrite"):
        train(config, run_dir=run, progress=False)
    assert main(["train", "--run-dir", str(run), str(_yaml(config, tmp_path / "tiny.yaml"))]) == 2
    assert "--overwrite" in _one_line_error(capsys)
    assert (run / "checkpoints/last/model.safetensors").read_bytes() == weights, "the refused run changed nothing"
    with pytest.raises(RunFolderError, match="not both"):
        train(config, run_dir=run, resume=True, overwrite=True, progress=False)

    train(config.with_overrides({"train.seed": 1}), run_dir=run, overwrite=True, progress=False)
    assert _steps(run) == [1], "--overwrite starts a fresh log"
    assert (run / "checkpoints/last/model.safetensors").read_bytes() != weights
    assert (run / "notes.txt").read_text() == "mine", "--overwrite deletes only what training writes"


@pytest.mark.parametrize("kind", ["file", "read-only"])
def test_unusable_run_folder_is_one_line(refshapes_root, tiny_bert_dir, tmp_path, capsys, kind):
    if kind == "file":
        run = tmp_path / "a-file"
        run.write_text("x")
    else:
        if sys.platform != "linux":
            pytest.skip("uses Linux /sys, where nobody (root included) can create a folder")
        run = Path("/sys/ditsam-test-run")
    config = tiny_experiment(refshapes_root, tiny_bert_dir, max_steps=1)
    assert main(["train", "--run-dir", str(run), str(_yaml(config, tmp_path / "tiny.yaml"))]) == 2
    assert str(run) in _one_line_error(capsys)


def test_demo_refuses_to_replace_an_earlier_demo(tmp_path, capsys):
    (tmp_path / "results.md").write_text("an hour of work")
    assert main(["demo", "--out", str(tmp_path), "--data", str(tmp_path / "data")]) == 2
    line = _one_line_error(capsys)
    assert "results.md" in line and "--overwrite" in line and "make demo DEMO_ARGS=--overwrite" in line
    assert (tmp_path / "results.md").read_text() == "an hour of work"


# ---------------------------------------------------------------------------------------------------
# Kills and interrupted checkpoint writes
# ---------------------------------------------------------------------------------------------------
def test_kill_between_the_two_renames_then_resume(refshapes_root, tiny_bert_dir, tmp_path):
    """SIGKILL while ``last`` is renamed away and its replacement not yet in place: no ``last`` on disk,
    two complete copies. The resume takes the newer one, and the run ends as an uninterrupted one."""
    config = tiny_experiment(
        refshapes_root, tiny_bert_dir, max_steps=4, save_every_steps=1, log_every_steps=1, eval_every_epochs=100
    )
    run = tmp_path / "run"
    env = {**os.environ, PAUSE_BETWEEN_RENAMES_ENV: "600", "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    log = tmp_path / "train.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ditsam.cli.main",
                "train",
                "--run-dir",
                str(run),
                str(_yaml(config, tmp_path / "t.yaml")),
            ],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    checkpoints = run / "checkpoints"
    try:
        deadline = time.monotonic() + KILL_WAIT_S
        while not list(checkpoints.glob(".last.old-*")):
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the run never reached its second checkpoint"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)  # between the renames: `last` is gone, both copies are complete
    finally:
        process.kill()
        process.wait()
    assert not (checkpoints / "last").exists()
    assert list(checkpoints.glob(".last.tmp-*")) and list(checkpoints.glob(".last.old-*"))
    assert _steps(run) == [1, 2]

    resumed = Trainer(config, run_dir=run, resume=True, progress=False)
    assert resumed.progress.global_step == 2, "the newest complete copy (step 2) is resumed, not the older one"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last"], "interrupted copies are cleaned up"
    resumed.fit()
    assert _steps(run) == [1, 2, 3, 4]
    assert _state_step(checkpoints / "last") == 4


def test_recovery_keeps_the_newest_complete_copy(tmp_path):
    def copy(name: str, written_ns: int | None) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "weights").write_text(name)
        if written_ns is not None:
            (folder / COMPLETE_MARKER).write_text(json.dumps({"written_ns": written_ns}))
        return folder

    copy("last", 10)
    copy(".last.tmp-41", None)  # cut off mid-write: no marker
    copy(".best.old-7", 10)
    copy(".best.tmp-7", 20)  # killed between the renames
    copy(".other.old-3", 5)  # a lone finished copy
    actions = recover_checkpoints(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "last", "other"]
    assert (tmp_path / "last/weights").read_text() == "last"
    assert (tmp_path / "best/weights").read_text() == ".best.tmp-7"
    assert (tmp_path / "other/weights").read_text() == ".other.old-3"
    assert any("restored" in a and "best" in a for a in actions)
    copy(".last.tmp-42", 30)  # complete, but killed before the first rename: newer than `last`
    recover_checkpoints(tmp_path)
    assert (tmp_path / "last/weights").read_text() == ".last.tmp-42"
    assert not list(tmp_path.glob(".*"))


def test_resumed_run_does_not_repeat_metrics_records(refshapes_root, tiny_bert_dir, tmp_path, monkeypatch):
    config = tiny_experiment(refshapes_root, tiny_bert_dir, max_steps=6, log_every_steps=1, eval_every_epochs=100)
    run = tmp_path / "run"
    trainer = Trainer(config, run_dir=run, progress=False)
    assert trainer.steps_per_epoch == 3  # "last" is saved at the end of each epoch: step 3
    real_step = Trainer._optimizer_step

    def dies_at_step_six(self, group):
        if self.progress.global_step == 5:
            raise KeyboardInterrupt  # as a kill: steps 4 and 5 are logged, the checkpoint holds step 3
        return real_step(self, group)

    monkeypatch.setattr(Trainer, "_optimizer_step", dies_at_step_six)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    monkeypatch.undo()
    assert _steps(run) == [1, 2, 3, 4, 5] and _state_step(run / "checkpoints/last") == 3
    Trainer(config, run_dir=run, resume=True, progress=False).fit()
    assert _steps(run) == [1, 2, 3, 4, 5, 6]


def test_checkpoints_count_training_time_over_every_resume(refshapes_root, tiny_bert_dir, tmp_path, monkeypatch):
    from ditsam.engine.stopping import PAUSE_PER_STEP_ENV

    pause = 0.2  # seconds a step at least, so each session's three steps take >= 0.6 s
    monkeypatch.setenv(PAUSE_PER_STEP_ENV, str(pause))
    run = tmp_path / "run"
    config = tiny_experiment(refshapes_root, tiny_bert_dir, max_steps=3, eval_every_epochs=100)
    Trainer(config, run_dir=run, progress=False).fit()
    first = _state(run / "checkpoints/last")["train_seconds"]
    assert first >= 3 * pause
    more = tiny_experiment(refshapes_root, tiny_bert_dir, max_steps=6, eval_every_epochs=100)
    Trainer(more, run_dir=run, resume=True, progress=False).fit()
    assert _state(run / "checkpoints/last")["train_seconds"] >= first + 3 * pause, "the resume adds to the total"


# ---------------------------------------------------------------------------------------------------
# Full disk, changed architecture, NaN loss
# ---------------------------------------------------------------------------------------------------
def test_full_disk_says_so_and_keeps_the_previous_checkpoint(
    refshapes_root, tiny_bert_dir, tmp_path, monkeypatch, capsys
):
    import ditsam.engine.run_folder as run_folder_module

    config = tiny_experiment(refshapes_root, tiny_bert_dir, max_steps=3, save_every_steps=1, eval_every_epochs=100)
    real_save = run_folder_module.save_training_state
    calls = {"n": 0}

    def fills_the_disk(directory, state):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(directory / "training_state.pt"))
        real_save(directory, state)

    monkeypatch.setattr(run_folder_module, "save_training_state", fills_the_disk)
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), str(_yaml(config, tmp_path / "t.yaml"))]) == 2
    line = _one_line_error(capsys)
    last = run / "checkpoints" / "last"
    assert "is full" in line and str(last) in line and "previous checkpoint" in line and "intact" in line, line
    assert "--resume" in line
    assert _state_step(last) == 1, "the previous checkpoint is untouched"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last"], "no half-written copy is left"


def test_resume_with_a_changed_architecture_is_one_sentence(refshapes_root, tiny_bert_dir, tmp_path):
    config = tiny_experiment(refshapes_root, tiny_bert_dir, max_steps=1, eval_every_epochs=100)
    train(config, run_dir=tmp_path / "run", progress=False)
    deeper = config.with_overrides({"model.depth": 3, "model.global_attn_indexes": [2], "train.max_steps": 2})
    with pytest.raises(ConfigError, match=r"cannot resume .*model\.depth: 2 in the checkpoint, 3 now.*--overwrite"):
        Trainer(deeper, run_dir=tmp_path / "run", resume=True, progress=False)
    # A setting that changes neither the weights nor what trains may change.
    Trainer(
        config.with_overrides({"model.gradient_checkpointing": True, "train.max_steps": 2}),
        run_dir=tmp_path / "run",
        resume=True,
        progress=False,
    )


def test_nan_loss_right_after_init_checkpoint_claims_no_checkpoint(
    refshapes_root, tiny_bert_dir, tmp_path, monkeypatch, capsys
):
    import ditsam.engine.losses as losses_module

    start = tiny_experiment(refshapes_root, tiny_bert_dir, max_steps=1, eval_every_epochs=100)
    train(start, run_dir=tmp_path / "start", progress=False)
    init = tmp_path / "start" / "checkpoints" / "last"
    config = start.with_overrides({"train.init_checkpoint": str(init), "train.max_steps": 2})
    monkeypatch.setattr(losses_module, "mask_loss", lambda logits, iou, target, **kwargs: logits.sum() * float("nan"))
    with pytest.raises(NonFiniteLossError) as raised:
        train(config, run_dir=tmp_path / "run", progress=False)
    message = str(raised.value)
    assert "first step" in message and f"train.init_checkpoint={init}" in message
    assert "no checkpoint has been written yet" in message and "kept" not in message
    assert main(["train", "--run-dir", str(tmp_path / "run2"), str(_yaml(config, tmp_path / "t.yaml"))]) == 2
    assert "no checkpoint has been written yet" in _one_line_error(capsys)


# ---------------------------------------------------------------------------------------------------
# Bad data found before the first step
# ---------------------------------------------------------------------------------------------------
@pytest.fixture
def broken_refer(refshapes_root: Path, tmp_path: Path) -> tuple[Path, list[int]]:
    """A copy of the RefShapes data in the REFER layout with one training image missing and one
    training annotation moved outside its image; returns the root and the two bad ref ids."""
    root = tmp_path / "refer"
    shutil.copytree(refshapes_root, root, ignore=shutil.ignore_patterns("tiny_bert"))
    refs = pickle.loads((root / "refshapes" / "refs(unc).p").read_bytes())
    instances = json.loads((root / "refshapes" / "instances.json").read_text())
    images = {image["id"]: image for image in instances["images"]}
    annotations = {ann["id"]: ann for ann in instances["annotations"]}
    train_refs = [ref for ref in refs if ref["split"] == "train"]
    missing = train_refs[0]
    image_of = lambda ref: images[annotations[ref["ann_id"]]["image_id"]]  # noqa: E731
    (root / "images" / image_of(missing)["file_name"]).unlink()
    outside = next(ref for ref in train_refs if image_of(ref)["id"] != image_of(missing)["id"])
    width = image_of(outside)["width"]
    annotations[outside["ann_id"]]["segmentation"] = [[width + 5, 1, width + 20, 1, width + 20, 9]]
    (root / "refshapes" / "instances.json").write_text(json.dumps(instances))
    bad = [ref["ref_id"] for ref in train_refs if image_of(ref)["id"] == image_of(missing)["id"]] + [outside["ref_id"]]
    return root, bad


def _refer_experiment(root: Path, tiny_bert_dir: Path, **train):
    return tiny_experiment(root, tiny_bert_dir, eval_every_epochs=100, **train).with_overrides(
        {
            "data.format": "refer",
            "data.root": str(root),
            "data.dataset": "refshapes",
            "data.split_by": "unc",
            "data.image_dir": str(root / "images"),
            "data.eval_splits": ["val"],
        }
    )


def test_bad_data_is_reported_at_once_before_the_first_step(broken_refer, tiny_bert_dir, tmp_path, capsys):
    root, bad = broken_refer
    config = _refer_experiment(root, tiny_bert_dir, max_steps=1)
    run = tmp_path / "run"
    with pytest.raises(DataError) as raised:
        train(config, run_dir=run, progress=False)
    message = str(raised.value)
    assert f"{len(bad)} bad record(s)" in message and "--skip-bad-data" in message and "nothing was trained" in message
    for ref_id in bad:
        assert f"refs(unc).p: ref {ref_id} (train)" in message
    assert "image file not found" in message and "lies outside its" in message
    assert not (run / "checkpoints").exists()
    assert len((run / "bad_records.txt").read_text().splitlines()) == len(bad)

    argv = [
        "data",
        "validate",
        "--format",
        "refer",
        "--root",
        str(root),
        "--dataset",
        "refshapes",
        "--split-by",
        "unc",
        "--image-dir",
        str(root / "images"),
    ]
    assert main(argv) == 1
    printed = capsys.readouterr().out
    assert all(f"ref {ref_id} (train)" in printed for ref_id in bad) and f"{len(bad)} bad record(s)" in printed
    assert main([*argv, "--split", "val"]) == 0 and "OK" in capsys.readouterr().out


def test_skip_bad_data_trains_on_the_rest(broken_refer, tiny_bert_dir, tmp_path, caplog):
    root, bad = broken_refer
    config = _refer_experiment(root, tiny_bert_dir, max_steps=1, batch_size=2, micro_batch_size=2)
    with caplog.at_level("WARNING", logger="ditsam"):
        trainer = Trainer(config, run_dir=tmp_path / "run", skip_bad_data=True, progress=False)
    assert f"dropped {len(bad)} bad record(s) of split train (training)" in caplog.text
    assert all(obj.ref_id not in bad for obj in trainer.train_set.base._objects)
    trainer.fit()
    assert (tmp_path / "run" / "checkpoints" / "last").is_dir()


def test_generated_text_encoder_on_custom_data(tiny_bert_dir, tmp_path):
    """A tiny config (text model "generated:refshapes") on data.format=custom: the vocabulary comes
    from the training sentences, written into the run folder."""
    (tmp_path / "img").mkdir()
    lines = []
    for index in range(4):
        Image.fromarray(np.full((24, 32, 3), 50 * index, np.uint8)).save(tmp_path / "img" / f"{index}.png")
        lines.append(
            {
                "image": f"img/{index}.png",
                "sentence": f"the zebra number {index}",
                "segmentation": [[2, 2, 20, 2, 20, 15]],
                "split": "val" if index == 3 else "train",
            }
        )
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(line) for line in lines))
    config = tiny_experiment(tmp_path, tiny_bert_dir, max_steps=1, eval_every_epochs=100).with_overrides(
        {
            "data.format": "custom",
            "data.root": str(data),
            "data.eval_splits": ["val"],
            "model.text.name_or_path": "generated:refshapes",
        }
    )
    final, encoder = resolve_text_encoder(config, run_dir=tmp_path / "run")
    assert final.model.text.name_or_path == str(tmp_path / "run" / "tiny_bert") and encoder is not None
    assert not (tmp_path / "run").exists(), "resolving the config writes nothing"
    train(config, run_dir=tmp_path / "run", progress=False)
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert written == final.to_dict(), "the run folder holds the config the run was prepared with"
    vocabulary = (tmp_path / "run" / "tiny_bert" / "vocab.txt").read_text().split()
    assert "zebra" in vocabulary and "circle" in vocabulary
    saved = json.loads((tmp_path / "run" / "checkpoints" / "last" / "text_encoder" / "tokenizer.json").read_text())
    assert "zebra" in saved["model"]["vocab"], "the checkpoint carries the generated vocabulary"
