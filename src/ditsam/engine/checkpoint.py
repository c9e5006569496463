"""Run-folder checkpoints, written atomically: a temporary folder renamed over the old one.

A checkpoint folder is a loadable ditsam model (config.json + model.safetensors + text_encoder/,
holding the EMA weights when EMA is on) plus ``training_state.pt`` (raw weights, optimiser, EMA,
counters and RNG states) for ``--resume``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

TRAINING_STATE_FILE = "training_state.pt"


def write_atomically(target: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_dir)`` and move the result to ``target``; on failure ``target`` is untouched."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def save_training_state(directory: Path, state: dict[str, Any]) -> None:
    torch.save(state, directory / TRAINING_STATE_FILE)


def load_training_state(directory: Path) -> dict[str, Any]:
    path = Path(directory) / TRAINING_STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: {path} does not exist (no resumable checkpoint in this run folder)")
    # The optimiser state holds plain tensors and numbers; RNG states are tensors too.
    return torch.load(path, map_location="cpu", weights_only=True)
