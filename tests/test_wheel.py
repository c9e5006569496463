"""The built wheel, installed into a fresh virtual environment and run from outside the checkout: the
version, the packaged experiment configs and a tiny prediction prove that the package data travels with it.

The fresh environment sees the project environment's packages (torch, transformers, ...) through a ``.pth``
line, so nothing is downloaded; ditsam itself comes from the wheel alone (``PYTHONPATH`` is cleared and
the project environment's own ``.pth`` files, an editable install among them, are not run).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import ditsam

ROOT = Path(__file__).resolve().parents[1]
#: What the wheel is built from: a copy, so the build leaves no build/ or egg-info in the checkout, and no
#: stale build/lib of an earlier build can slip deleted modules into the wheel.
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "NOTICE", "src")
#: Seconds any one step (build, install, a command) may take before the test fails instead of hanging.
STEP_TIMEOUT_S = 180


def _run(command: list[str], *, cwd: Path, env: dict[str, str]) -> str:
    completed = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT_S)
    assert completed.returncode == 0, f"{command}:\n{completed.stdout[-2000:]}\n{completed.stderr[-3000:]}"
    return completed.stdout


def _fresh_venv(folder: Path, env: dict[str, str]) -> Path:
    """A venv (no pip: the project's pip installs into it) whose path ends with the project's packages."""
    _run([sys.executable, "-m", "venv", "--without-pip", str(folder)], cwd=folder.parent, env=env)
    python = folder / "bin" / "python"
    purelib = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=folder.parent, env=env
        ).strip()
    )
    # A plain path line: appended after the venv's own site-packages, its .pth files (editable installs) not run.
    (purelib / "project-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    return python


def _copy_sources(destination: Path) -> Path:
    destination.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, destination / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(ROOT / name, destination / name)
    return destination


def test_wheel_installs_and_runs_outside_the_checkout(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    dist = tmp_path / "dist"
    # The project environment's setuptools builds it (no isolated build environment to download).
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            str(_copy_sources(tmp_path / "source")),
        ],
        cwd=tmp_path,
        env=env,
    )
    (wheel,) = dist.glob("ditsam-*.whl")
    assert wheel.name.startswith(f"ditsam-{ditsam.__version__}-")
    python = _fresh_venv(tmp_path / "venv", env)
    _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        cwd=tmp_path,
        env=env,
    )
    bin_dir = python.parent
    work = tmp_path / "outside"
    work.mkdir()

    where = _run([str(python), "-c", "import ditsam; print(ditsam.__file__)"], cwd=work, env=env)
    assert Path(where.strip()).is_relative_to(tmp_path / "venv"), where
    assert _run([str(bin_dir / "ditsam"), "--version"], cwd=work, env=env).strip() == f"ditsam {ditsam.__version__}"
    listing = _run([str(bin_dir / "ditsam"), "train", "--list"], cwd=work, env=env)
    assert "refshapes/ldit" in listing and "refcoco/ldit" in listing
    # The shipped tiny SAM is inside the wheel, whole (its weights match the recorded SHA-256).
    shipped = "from ditsam.model.checkpoints import bundled_folder; print(bundled_folder('refshapes-sam'))"
    assert Path(_run([str(python), "-c", shipped], cwd=work, env=env).strip()).is_relative_to(tmp_path / "venv")

    _run([str(python), str(ROOT / "tests" / "make_tiny_model.py"), str(work)], cwd=work, env=env)
    from PIL import Image

    Image.new("RGB", (48, 32), (200, 30, 30)).save(work / "photo.png")
    _run(
        [
            str(bin_dir / "ditsam"),
            "predict",
            "--checkpoint",
            str(work / "model"),
            "--image",
            str(work / "photo.png"),
            "--text",
            "the red square",
            "--out",
            str(work / "predicted"),
            "--device",
            "cpu",
        ],
        cwd=work,
        env=env,
    )
    predictions = json.loads((work / "predicted" / "predictions.json").read_text())
    assert len(predictions) == 1 and predictions[0]["sentence"] == "the red square"
    assert predictions[0]["segmentation"]["size"] == [32, 48]  # COCO RLE at the image size
    licence_files = {path.name for path in (tmp_path / "venv").rglob("ditsam-*.dist-info/licenses/*")}
    assert licence_files == {"LICENSE", "NOTICE"}
