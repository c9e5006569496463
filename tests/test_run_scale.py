"""The road at scale (issue 19): several processes starting into a new run folder, preemption by a signal,
damaged checkpoint copies, the run-folder lock, and an error on one process ending all of them. Tiny model,
a few generated RefShapes images, CPU (gloo), launched as users launch: torchrun and accelerate launch."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

from ditsam.cli.main import main
from ditsam.engine.checkpoint import COMPLETE_MARKER, TRAINING_STATE_FILE, checkpoint_problem
from ditsam.engine.lock import LOCK_FILE, RunFolderLock, RunFolderLockedError
from ditsam.engine.stopping import PAUSE_PER_STEP_ENV, PREEMPTED_EXIT_STATUS, TrainingStopped
from ditsam.engine.train import Trainer
from ditsam.model.checkpoints import CheckpointError
from helpers import free_port, launch_command, tiny_experiment

SRC = Path(__file__).resolve().parents[1] / "src"
LAUNCH_TIMEOUT_S = 240  # one launch of a tiny run, with slack for a loaded machine
ALL_RANKS_END_S = 60  # an error on one rank ends every rank within this


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", **extra}


def _torchrun(processes: int, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(processes),
        "--master_port",
        str(free_port()),
        "-m",
        "ditsam.cli.main",
        *args,
    ]


def _experiment_file(tmp_path: Path, refshapes_root: Path, bert: Path, **train) -> Path:
    config = tiny_experiment(refshapes_root, bert, eval_every_epochs=100, log_every_steps=1, **train)
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return path


def _run(command: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, env=_env(**env), timeout=LAUNCH_TIMEOUT_S)


def _last(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last" / TRAINING_STATE_FILE, weights_only=True)


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def _error_lines(stderr: str, text: str) -> list[str]:
    """The ``ditsam train: ...`` lines holding ``text`` (a progress bar without its newline may stand before one)."""
    return [line for line in stderr.splitlines() if re.search(rf"(^|\]|\s)ditsam train: .*{re.escape(text)}", line)]


# ---------------------------------------------------------------------------------------------------
# Several processes start into a new folder
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_processes_start_into_a_new_run_folder(refshapes_root, tiny_bert_dir, tmp_path, launcher):
    """Repeated, with each way of naming the folder: rank 1 used to check the folder before rank 0 had made it,
    and on a machine without CUDA both processes trained alone into the same folder."""
    experiment = _experiment_file(tmp_path, refshapes_root, tiny_bert_dir, max_steps=2)
    for attempt in range(2):
        run = tmp_path / f"new{attempt}" / "run"
        # The first attempt writes the default run folder, <output_dir>/<name>, which no process has made yet.
        where = (f"output_dir={run.parent}",) if attempt == 0 else ()
        args = ("train", *(() if where else ("--run-dir", str(run.parent / "tiny"))), str(experiment), *where)
        run = run.parent / "tiny"
        command = _torchrun(2, *args) if launcher == "torchrun" else launch_command(2, *args)
        completed = _run(command)
        assert completed.returncode == 0, completed.stderr[-3000:]
        assert "did not join" not in completed.stderr
        assert json.loads((run / "results.json").read_text())["val"]["miou"] >= 0
        assert not (run / LOCK_FILE).exists(), "a clean end gives the lock back"
        assert "training on 2 processes" in completed.stderr, "the two processes joined one group"
    assert _last(run)["progress"]["global_step"] == 2


def test_resume_with_another_number_of_processes(refshapes_root, tiny_bert_dir, tmp_path):
    experiment = _experiment_file(tmp_path, refshapes_root, tiny_bert_dir, max_steps=2)
    run = tmp_path / "run"
    completed = _run(_torchrun(2, "train", "--run-dir", str(run), str(experiment)))
    assert completed.returncode == 0, completed.stderr[-3000:]
    completed = _run(
        [
            sys.executable,
            "-m",
            "ditsam.cli.main",
            "train",
            "--resume",
            "--run-dir",
            str(run),
            str(experiment),
            "train.max_steps=4",
        ]
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "resumed from" in completed.stderr and _last(run)["progress"]["global_step"] == 4


def test_eval_and_predict_with_two_processes_into_new_folders(refshapes_root, tiny_bert_dir, checkpoint, tmp_path):
    from PIL import Image

    experiment = _experiment_file(tmp_path, refshapes_root, tiny_bert_dir)

    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "a.png")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps({"image": str(tmp_path / "a.png"), "text": f"the red {w}"}) + "\n"
            for w in ("square", "circle", "star")
        )
    )
    scores = tmp_path / "new" / "scores"
    completed = _run(_torchrun(2, "eval", str(checkpoint), "--data", str(experiment), "--out", str(scores)))
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert json.loads((scores / "results.json").read_text())["val"]["processes"] == 2
    out = tmp_path / "new" / "labels"
    completed = _run(
        _torchrun(
            2,
            "predict",
            "--checkpoint",
            str(checkpoint),
            "--jsonl",
            str(pairs),
            "--out",
            str(out),
            "--no-overlays",
            "--workers",
            "0",
        )
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert len(json.loads((out / "predictions.json").read_text())) == 3
    assert sorted(p.name for p in out.glob("predictions.rank*.jsonl")) == [
        "predictions.rank0.jsonl",
        "predictions.rank1.jsonl",
    ]


# ---------------------------------------------------------------------------------------------------
# Preemption
# ---------------------------------------------------------------------------------------------------
def test_sigterm_finishes_the_step_writes_last_and_resumes_bit_exact(
    refshapes_root, tiny_bert_dir, tmp_path, monkeypatch
):
    config = tiny_experiment(refshapes_root, tiny_bert_dir, max_steps=7, log_every_steps=1, eval_every_epochs=100)
    straight = tmp_path / "straight"
    Trainer(config, run_dir=straight, progress=False).fit()

    real_step = Trainer._optimizer_step

    def signalled_during_step_five(self, group):
        if self.progress.global_step == 4:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-step: the step still finishes
        return real_step(self, group)

    stopped = tmp_path / "stopped"
    monkeypatch.setattr(Trainer, "_optimizer_step", signalled_during_step_five)
    with pytest.raises(TrainingStopped, match=r"stopped after step 5 \(SIGTERM\).*--resume"):
        Trainer(config, run_dir=stopped, progress=False).fit()
    monkeypatch.undo()
    assert _last(stopped)["progress"]["global_step"] == 5
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, "the handlers are put back"
    Trainer(config, run_dir=stopped, resume=True, progress=False).fit()
    assert _same_weights(_last(stopped)["model"], _last(straight)["model"])
    assert _same_weights(_last(stopped)["ema"], _last(straight)["ema"])


def test_a_signal_to_one_rank_stops_both_after_the_same_step(refshapes_root, tiny_bert_dir, tmp_path):
    experiment = _experiment_file(tmp_path, refshapes_root, tiny_bert_dir, max_steps=6)
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    completed = _run(_torchrun(2, "train", "--run-dir", str(straight), str(experiment)))
    assert completed.returncode == 0, completed.stderr[-3000:]

    log = tmp_path / "stopped.log"
    with log.open("w") as output:
        launcher = subprocess.Popen(
            _torchrun(2, "train", "--run-dir", str(stopped), str(experiment)),
            env=_env(**{PAUSE_PER_STEP_ENV: "0.5"}),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        metrics = stopped / "metrics.jsonl"
        while not (metrics.is_file() and metrics.read_text().count("train/loss") >= 2):
            assert launcher.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the run never reached step 2"
            time.sleep(0.05)
        os.kill(_rank_pid(launcher.pid, rank=1), signal.SIGUSR1)
        launcher.wait(timeout=LAUNCH_TIMEOUT_S)
    finally:
        launcher.kill()
    text = log.read_text()
    assert f"exitcode  : {PREEMPTED_EXIT_STATUS}" in text, text[-3000:]
    assert len(_error_lines(text, "stopped after step")) == 1, "printed once, by rank 0"
    step = _last(stopped)["progress"]["global_step"]
    assert 2 <= step < 6 and f"stopped after step {step} (a stop signal to another process)" in text

    completed = _run(_torchrun(2, "train", "--resume", "--run-dir", str(stopped), str(experiment)))
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert _same_weights(_last(stopped)["model"], _last(straight)["model"])


def _rank_pid(launcher_pid: int, *, rank: int) -> int:
    """The PID of the worker process of ``rank`` under the torchrun process ``launcher_pid`` (Linux /proc)."""
    for child in Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text().split():
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return int(child)
    raise AssertionError(f"no worker of rank {rank} under {launcher_pid}")


# ---------------------------------------------------------------------------------------------------
# Damaged checkpoint copies
# ---------------------------------------------------------------------------------------------------
@pytest.fixture
def run_with_two_copies(refshapes_root, tiny_bert_dir, tmp_path):
    """A finished run whose ``best`` (step 3, end of epoch 1) is older than ``last`` (step 6)."""
    config = tiny_experiment(refshapes_root, tiny_bert_dir, max_steps=6, eval_every_epochs=1)
    run = tmp_path / "run"
    Trainer(config, run_dir=run, progress=False).fit()
    steps = {
        name: torch.load(run / "checkpoints" / name / TRAINING_STATE_FILE, weights_only=True)["progress"]["global_step"]
        for name in ("last", "best")
    }
    assert steps["last"] == 6 and steps["best"] in (3, 6)
    return config, run


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_resume_falls_back_to_the_newest_copy_that_loads(run_with_two_copies, caplog):
    config, run = run_with_two_copies
    last = run / "checkpoints" / "last"
    _truncate(last / TRAINING_STATE_FILE)
    assert checkpoint_problem(last) == (
        f"{last / TRAINING_STATE_FILE} differs from the sha256 in {COMPLETE_MARKER} "
        f"(truncated or changed since it was written)"
    )
    with caplog.at_level("WARNING"):
        trainer = Trainer(config.with_overrides({"train.max_steps": 8}), run_dir=run, resume=True, progress=False)
    best_step = torch.load(run / "checkpoints/best" / TRAINING_STATE_FILE, weights_only=True)["progress"]["global_step"]
    assert trainer.progress.global_step == best_step
    assert str(last / TRAINING_STATE_FILE) in caplog.text and "resuming from" in caplog.text
    trainer.close()


def test_resume_refuses_when_no_copy_loads_naming_each_file(run_with_two_copies, capsys, tmp_path):
    config, run = run_with_two_copies
    (run / "checkpoints/last" / "model.safetensors").unlink()
    marker = run / "checkpoints/best" / COMPLETE_MARKER
    marker.write_text("{not json")
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    assert main(["train", "--resume", "--run-dir", str(run), str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = next(line for line in err.splitlines() if line.startswith("ditsam train: error"))
    assert "no checkpoint" in line and "model.safetensors is missing" in line and str(marker) in line, line


def test_a_copy_written_before_digests_is_still_judged_by_loading(run_with_two_copies):
    config, run = run_with_two_copies
    for name in ("last", "best"):
        marker = run / "checkpoints" / name / COMPLETE_MARKER
        marker.write_text(json.dumps({"written_ns": json.loads(marker.read_text())["written_ns"]}))
    _truncate(run / "checkpoints/last" / TRAINING_STATE_FILE)
    trainer = Trainer(config.with_overrides({"train.max_steps": 8}), run_dir=run, resume=True, progress=False)
    assert trainer.progress.global_step <= 6  # from best: last did not load
    trainer.close()
    _truncate(run / "checkpoints/best" / TRAINING_STATE_FILE)
    with pytest.raises(CheckpointError, match=r"does not load \(truncated or corrupted\)"):
        Trainer(config, run_dir=run, resume=True, progress=False)


@pytest.mark.parametrize("command", ["eval", "predict", "convert"])
def test_commands_name_the_damaged_file(run_with_two_copies, tmp_path, capsys, command):
    from PIL import Image

    _, run = run_with_two_copies
    weights = run / "checkpoints/best" / "model.safetensors"
    _truncate(weights)
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    argv = {
        "eval": ["eval", str(run / "checkpoints/best"), "--out", str(tmp_path / "e")],
        "predict": [
            "predict",
            "--checkpoint",
            str(run / "checkpoints/best"),
            "--image",
            str(tmp_path / "a.png"),
            "--text",
            "the red square",
            "--out",
            str(tmp_path / "p"),
        ],
        "convert": ["convert", str(run / "checkpoints/best"), str(tmp_path / "c")],
    }[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(weights) in err, err[-2000:]


# ---------------------------------------------------------------------------------------------------
# The lock
# ---------------------------------------------------------------------------------------------------
_HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from ditsam.engine.lock import RunFolderLock
    RunFolderLock(Path(sys.argv[1])).acquire()
    print("held", flush=True)
    time.sleep(600)
""")


def test_a_second_trainer_is_refused_and_a_stale_lock_taken_over(refshapes_root, tiny_bert_dir, tmp_path, caplog):
    config = tiny_experiment(refshapes_root, tiny_bert_dir, max_steps=1, eval_every_epochs=100)
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run)], env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(
            RunFolderLockedError, match=rf"in use by another trainer, PID {holder.pid} on host .*--run-dir"
        ):
            Trainer(config, run_dir=run, progress=False)
        assert not (run / "checkpoints").exists(), "refused before anything is written"
    finally:
        holder.kill()
        holder.wait()
    assert (run / LOCK_FILE).is_file(), "a killed holder leaves its lock file"
    with caplog.at_level("WARNING"):
        Trainer(config, run_dir=run, progress=False).fit()
    assert f"took over the lock left by PID {holder.pid}" in caplog.text
    assert not (run / LOCK_FILE).exists()


def test_the_lock_refuses_a_second_holder_in_one_process(tmp_path):
    first = RunFolderLock(tmp_path)
    first.acquire()
    with pytest.raises(RunFolderLockedError, match=f"PID {os.getpid()}"):
        RunFolderLock(tmp_path).acquire()
    first.release()
    (tmp_path / LOCK_FILE).write_text("garbage")  # not ours, nobody holds it
    second = RunFolderLock(tmp_path)
    second.acquire()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    second.release()


# ---------------------------------------------------------------------------------------------------
# An error on one rank ends every rank, printed once
# ---------------------------------------------------------------------------------------------------
_FAULTY_RUN = textwrap.dedent("""
    import os, sys
    import ditsam.engine.train as train
    from ditsam.cli.main import main
    from ditsam.data import DataError

    where, failing = sys.argv[1], int(sys.argv[2])
    if int(os.environ["RANK"]) == failing:
        if where == "data":
            def check_data(*args, **kwargs):
                raise DataError("boom: a record rank %d cannot read" % failing)
            train.check_data = check_data
        else:
            real = train.Trainer._optimizer_step
            def step(self, group):
                if self.progress.global_step == 1:
                    raise ValueError("boom: a step rank %d cannot take" % failing)
                return real(self, group)
            train.Trainer._optimizer_step = step
    sys.exit(main(sys.argv[3:]))
""")


@pytest.mark.parametrize(("where", "failing"), [("data", 0), ("data", 1), ("step", 1)])
def test_an_error_on_one_rank_ends_every_rank_printed_once(refshapes_root, tiny_bert_dir, tmp_path, where, failing):
    experiment = _experiment_file(tmp_path, refshapes_root, tiny_bert_dir, max_steps=6)
    script = tmp_path / "faulty.py"
    script.write_text(_FAULTY_RUN)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        str(script),
        where,
        str(failing),
        "train",
        "--run-dir",
        str(tmp_path / "run"),
        str(experiment),
    ]
    began = time.monotonic()
    completed = _run(command)
    seconds = time.monotonic() - began
    assert completed.returncode != 0
    assert len(_error_lines(completed.stderr, "boom")) == 1, completed.stderr[-3000:]
    assert "Traceback" not in "\n".join(line for line in completed.stderr.splitlines() if "[rank" in line)
    assert seconds < ALL_RANKS_END_S, f"the run took {seconds:.0f} s to end"
