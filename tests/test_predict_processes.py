"""``ditsam predict`` at dataset scale: several processes (gloo on the CPU), per-rank journals merged
into the one-process output, ``--resume`` across process counts, DataLoader workers, ``--dtype``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ditsam.cli.main import main
from ditsam.cli.predict_world import World
from helpers import launch_command

PAIRS = 9
NAMES = ("a.png", "b.jpg", "c.png", "broken.png")  # pair i shows NAMES[i % 4]: pairs 3 and 7 cannot be read


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(1)
    for name, (h, w) in {"a.png": (37, 53), "b.jpg": (64, 20), "c.png": (11, 90)}.items():
        Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(folder / name)
    (folder / "broken.png").write_text("not a png")
    path = folder / "pairs.jsonl"
    path.write_text("\n".join(json.dumps({"image": NAMES[i % 4], "text": f"shape {i}"}) for i in range(PAIRS)) + "\n")
    return path


@pytest.fixture(scope="module")
def one_process(checkpoint: Path, pairs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: the pairs predicted by one process (in this one), batch 2."""
    out = tmp_path_factory.mktemp("one") / "out"
    assert (
        main(
            ["predict", "--checkpoint", str(checkpoint), "--jsonl", str(pairs), "--out", str(out), "--batch-size", "2"]
        )
        == 1
    ), "two pairs show an unreadable image"
    return out


def _launch(checkpoint: Path, pairs: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """2 CPU processes (gloo) of ``ditsam predict``; ``--device cpu`` keeps them on the CPU anywhere, in fp32."""
    command = launch_command(
        2,
        "predict",
        "--checkpoint",
        str(checkpoint),
        "--jsonl",
        str(pairs),
        "--out",
        str(out),
        "--batch-size",
        "2",
        "--device",
        "cpu",
        "--dtype",
        "fp32",  # as the in-process reference: dtype auto would follow this machine's CPU flags
        *extra,
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=240)


def _records(out: Path) -> list[dict]:
    return json.loads((out / "predictions.json").read_text())


def _assert_same_output(out: Path, reference: Path) -> None:
    """The same records (scores to float noise: other batches, other threads) and the same mask files."""
    got, expected = _records(out), _records(reference)
    assert [r["sentence"] for r in got] == [r["sentence"] for r in expected]
    for a, b in zip(got, expected):
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
        assert {**a, "score": None} == {**b, "score": None}
        assert (out / a["mask_file"]).read_bytes() == (reference / b["mask_file"]).read_bytes()
        assert (out / a["overlay_file"]).is_file()
    assert sorted(p.name for p in (out / "masks").iterdir()) == sorted(p.name for p in (reference / "masks").iterdir())


def _journal_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_processes_write_what_one_process_writes(
    checkpoint: Path, pairs: Path, one_process: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    completed = _launch(checkpoint, pairs, out, "--workers", "1")
    assert completed.returncode != 0, "an unreadable image makes the exit status non-zero"
    _assert_same_output(out, one_process)
    # Pair i went to rank i % 2; each rank journaled its own, the unreadable pairs 3 and 7 (rank 1) nowhere.
    assert sorted(p.name for p in out.glob("predictions*.jsonl")) == [
        "predictions.rank0.jsonl",
        "predictions.rank1.jsonl",
    ]
    assert [r["sentence"] for r in _journal_lines(out / "predictions.rank0.jsonl")] == [
        f"shape {i}" for i in (0, 2, 4, 6, 8)
    ]
    assert [r["sentence"] for r in _journal_lines(out / "predictions.rank1.jsonl")] == ["shape 1", "shape 5"]
    # Rank 0 reports for every rank, once: the image rank 1 could not read, and the summary.
    assert completed.stdout.count("1 image(s) could not be read") == 1, completed.stdout
    assert "broken.png" in completed.stdout and "7 prediction(s) for 9 pair(s)" in completed.stdout
    assert "(2 process(es))" in completed.stdout


def _killed_run(one_process: Path, out: Path, journals: dict[str, list[int]]) -> None:
    """``out`` as runs of other process counts left it when killed: ``journals`` maps a journal name to
    the pairs it holds (copied, with their mask and overlay files, from the one-process run)."""
    records = {r["sentence"]: r for r in _records(one_process)}
    for folder in ("masks", "overlays"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    for name, indices in journals.items():
        lines = []
        for index in indices:
            record = records[f"shape {index}"]
            for key in ("mask_file", "overlay_file"):
                shutil.copy(one_process / record[key], out / record[key])
            lines.append(json.dumps(record) + "\n")
        (out / name).write_text("".join(lines))


def test_two_processes_resume_what_three_and_one_left(
    checkpoint: Path, pairs: Path, one_process: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    _killed_run(
        one_process, out, {"predictions.jsonl": [5], "predictions.rank0.jsonl": [0, 2], "predictions.rank2.jsonl": [1]}
    )
    with (out / "predictions.rank1.jsonl").open("w") as handle:
        handle.write('{"id": 4, "image": "cut short by the ki')  # rank 1 was killed mid-line
    refused = _launch(checkpoint, pairs, out)
    assert refused.returncode != 0
    lines = [line for line in refused.stderr.splitlines() if line.startswith("ditsam predict: error:")]
    assert len(lines) == 1 and "already holds results" in lines[0] and "--resume" in lines[0], refused.stderr[-3000:]
    assert not (out / "predictions.json").exists()

    completed = _launch(checkpoint, pairs, out, "--resume")
    assert completed.returncode != 0, "pairs 3 and 7 still show an unreadable image"
    _assert_same_output(out, one_process)
    # Still to do: 3, 4, 6, 7, 8 -> rank 0 took 3, 6, 8 and rank 1 took 4, 7; nothing finished was redone.
    assert [r["id"] for r in _journal_lines(out / "predictions.rank0.jsonl")] == [0, 2, 6, 8]
    assert [r["id"] for r in _journal_lines(out / "predictions.rank1.jsonl")] == [4]
    assert [r["id"] for r in _journal_lines(out / "predictions.rank2.jsonl")] == [1]
    assert [r["id"] for r in _journal_lines(out / "predictions.jsonl")] == [5]


def test_one_process_resumes_rank_journals_and_overwrite_removes_them(
    checkpoint: Path, pairs: Path, one_process: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ditsam.api import Segmenter

    out = tmp_path / "out"
    _killed_run(one_process, out, {"predictions.rank0.jsonl": [0, 2, 4], "predictions.rank1.jsonl": [1]})
    real_predict, predicted = Segmenter.predict, []

    def counting(self, image, text, **kwargs):
        predicted.extend(text)
        return real_predict(self, image, text, **kwargs)

    monkeypatch.setattr(Segmenter, "predict", counting)
    base = ["predict", "--checkpoint", str(checkpoint), "--jsonl", str(pairs), "--out", str(out), "--batch-size", "2"]
    assert main([*base, "--resume", "--workers", "0"]) == 1
    assert predicted == ["shape 5", "shape 6", "shape 8"], "pairs in any rank's journal are not predicted again"
    assert [r["id"] for r in _journal_lines(out / "predictions.jsonl")] == [5, 6, 8]
    _assert_same_output(out, one_process)

    assert main([*base, "--overwrite", "--workers", "2"]) == 1
    assert sorted(p.name for p in out.glob("predictions*.jsonl")) == ["predictions.jsonl"], "old rank journals are gone"
    _assert_same_output(out, one_process)


def test_world_shares_by_rank_and_checks_world_size(monkeypatch: pytest.MonkeyPatch) -> None:
    items = list(range(7))
    shares = [World(rank=rank, size=3).share(items) for rank in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]
    one = World()
    assert one.share(items) == items and one.broadcast("x") == "x" and one.gather(5) == [5]
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two'"):
        World.from_environment(cpu=True)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert World.from_environment(cpu=True) == World()


def test_workers_must_not_be_negative(
    checkpoint: Path, pairs: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(checkpoint),
                "--jsonl",
                str(pairs),
                "--out",
                str(tmp_path / "o"),
                "--workers",
                "-1",
            ]
        )
        == 2
    )
    assert "--workers must be >= 0" in capsys.readouterr().err


def test_int8_predicts_on_the_cpu_and_refuses_a_gpu(
    checkpoint: Path, pairs: Path, one_process: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    base = ["predict", "--checkpoint", str(checkpoint), "--jsonl", str(pairs), "--dtype", "int8", "--no-overlays"]
    assert main([*base, "--out", str(tmp_path / "gpu"), "--device", "cuda"]) == 2
    assert "runs on the CPU" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "out")]) == 1
    got, expected = _records(tmp_path / "out"), _records(one_process)
    assert [r["sentence"] for r in got] == [r["sentence"] for r in expected]
    for a, b in zip(got, expected):
        assert abs(a["score"] - b["score"]) <= 0.05


def test_predictions_missing_from_the_journals_are_one_line(
    checkpoint: Path, pairs: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ditsam.cli.predict

    # As rank 0 sees it when the other processes wrote into a folder of their own node, not a shared one.
    monkeypatch.setattr(ditsam.cli.predict, "read_journals", lambda out: {})
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(checkpoint), "--jsonl", str(pairs), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "7 prediction(s) made in this run are not in the journals" in error and "every process sees" in error
    assert not (out / "predictions.json").exists()
