"""Run-folder checkpoints, written atomically: a temporary folder renamed over the old one.

A checkpoint folder is a loadable ditsam model (config.json + model.safetensors + text_encoder/,
holding the EMA weights when EMA is on) plus ``training_state.pt`` (raw weights, optimiser, EMA,
counters and RNG states) for ``--resume``.

Writing ``checkpoints/last`` goes through two renames (``last`` -> ``.last.old-PID``, then
``.last.tmp-PID`` -> ``last``), so a kill between them leaves no ``last`` but two complete
copies. Every finished copy carries :data:`COMPLETE_MARKER`, written after all its files, and
:func:`recover_checkpoints` (run when training starts) puts the newest complete copy back in
place and deletes what interrupted writes left behind. One trainer writes a run folder at a time
(:mod:`ditsam.engine.lock`).

The marker records the sha256 of every file of the copy: a copy damaged later (a truncated transfer
between machines, a garbled disk) is told apart from a complete one before it is loaded
(:func:`checkpoint_problem`), and ``--resume`` falls back to the newest copy that is whole
(:func:`load_newest_training_state`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from ditsam.digest import file_sha256

if TYPE_CHECKING:
    from ditsam.engine.ema import EMA

logger = logging.getLogger(__name__)

TRAINING_STATE_FILE = "training_state.pt"
#: Written last into every checkpoint folder: its presence means every other file is complete.
COMPLETE_MARKER = "complete.json"
#: Test hook: seconds to sleep between the two renames of a write that replaces a checkpoint, so that
#: a test can kill the process exactly there. Unset (the normal case): no pause.
PAUSE_BETWEEN_RENAMES_ENV = "DITSAM_TEST_PAUSE_BETWEEN_RENAMES"
# ".last.tmp-1234" / ".best.old-99": the folders of a write in progress (or of an interrupted one).
_PENDING = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)$")
# Rank of a pending ".old" folder written before checkpoints carried the marker: complete, but older
# than anything that carries one.
_UNMARKED_RANK = -1


def _pending_path(target: Path, kind: str) -> Path:
    return target.with_name(f".{target.name}.{kind}-{os.getpid()}")


def write_atomically(target: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_dir)`` and move the result to ``target``; on failure ``target`` is untouched.

    A kill at any point leaves ``target`` or a complete pending copy that :func:`recover_checkpoints`
    restores. Raises what ``write`` raises (an OSError for a full disk), after removing the
    temporary folder.
    """
    target = Path(target)
    tmp, old = _pending_path(target, "tmp"), _pending_path(target, "old")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        write(tmp)
        marker = {"written_ns": time.time_ns(), "sha256": file_digests(tmp)}
        (tmp / COMPLETE_MARKER).write_text(json.dumps(marker, indent=1), encoding="utf-8")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replacing = target.exists()
    if replacing:
        target.rename(old)
        pause = os.environ.get(PAUSE_BETWEEN_RENAMES_ENV)
        if pause:
            time.sleep(float(pause))
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def file_digests(folder: Path) -> dict[str, str]:
    """``{relative posix path: sha256}`` of every file below ``folder`` but the marker."""
    return {
        path.relative_to(folder).as_posix(): file_sha256(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != COMPLETE_MARKER
    }


def checkpoint_problem(folder: Path) -> str | None:
    """Why the checkpoint copy ``folder`` is not whole, in one line naming the file; None when its marker is
    there and every file it lists has the recorded sha256. (A copy written before the marker listed files
    is judged by its marker alone: whether it loads is then found out when it is read.)"""
    marker = folder / COMPLETE_MARKER
    if not marker.is_file():
        return f"{marker} is missing (the copy was cut off while it was written, or moved without it)"
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))
        digests = recorded.get("sha256", {})
        if not isinstance(digests, dict):
            raise TypeError("sha256 is not a mapping")
    except (OSError, UnicodeDecodeError, ValueError, TypeError, AttributeError) as error:
        return f"{marker} does not read ({error})"
    for name, expected in digests.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing (listed in {COMPLETE_MARKER})"
        if file_sha256(path) != expected:
            return f"{path} differs from the sha256 in {COMPLETE_MARKER} (truncated or changed since it was written)"
    return None


def _rank(folder: Path) -> int:
    """When a complete copy was written (ns); :data:`_UNMARKED_RANK` for one without the marker."""
    try:
        return int(json.loads((folder / COMPLETE_MARKER).read_text(encoding="utf-8"))["written_ns"])
    except (OSError, ValueError, KeyError, TypeError):
        return _UNMARKED_RANK


def recover_checkpoints(folder: Path) -> list[str]:
    """Finish what interrupted :func:`write_atomically` calls left in ``folder`` (``<run>/checkpoints``).

    For each checkpoint name with pending ``.NAME.tmp-PID`` / ``.NAME.old-PID`` folders, the newest
    complete copy among them and ``NAME`` itself becomes ``NAME``; every other pending folder is
    deleted (a ``tmp`` without the marker was cut off mid-write). Returns one line per action, for
    the log. Call it only while no other process writes ``folder``.
    """
    folder = Path(folder)
    groups: dict[str, list[Path]] = {}
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            match = _PENDING.match(path.name)
            if match and path.is_dir():
                groups.setdefault(match["name"], []).append(path)
    actions = []
    for name, pending in groups.items():
        target = folder / name
        # A pending "old" folder was a finished target; a "tmp" one only once its marker is written.
        complete = [p for p in pending if _PENDING.match(p.name)["kind"] == "old" or _rank(p) != _UNMARKED_RANK]
        candidates = complete + ([target] if target.is_dir() else [])
        newest = max(candidates, key=_rank, default=None)
        if newest is not None and newest != target:
            if target.exists():
                displaced = _pending_path(target, "old")
                shutil.rmtree(displaced, ignore_errors=True)
                target.rename(displaced)
                pending.append(displaced)
            newest.rename(target)
            actions.append(f"restored {target} from {newest.name}, the newest complete copy an interrupted write left")
        for path in pending:
            if path.exists() and path != newest:
                shutil.rmtree(path, ignore_errors=True)
                actions.append(f"removed {path.name}, left by an interrupted checkpoint write")
    for action in actions:
        logger.info("%s", action)
    return actions


def capture_training_state(
    *, progress: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, ema: EMA | None
) -> dict[str, Any]:
    """Everything ``--resume`` needs to continue as if never stopped: the counters (``progress``), the raw
    weights, the optimiser, the EMA weights and update count, the CPU (and CUDA) random states."""
    state = {
        "progress": progress,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
    }
    if ema is not None:
        state["ema"] = ema.shadow.state_dict()
        state["ema_updates"] = ema.updates
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state()
    return state


def restore_training_state(
    state: dict[str, Any], *, model: nn.Module, optimizer: torch.optim.Optimizer, ema: EMA | None
) -> None:
    """Load a :func:`capture_training_state` back into the parts and the random states (the CUDA one when
    both the state and this machine have it); the caller restores the counters from ``state["progress"]``."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if ema is not None:
        ema.shadow.load_state_dict(state["ema"])
        ema.updates = int(state["ema_updates"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_rng"])


def save_training_state(directory: Path, state: dict[str, Any]) -> None:
    torch.save(state, directory / TRAINING_STATE_FILE)


def load_training_state(directory: Path) -> dict[str, Any]:
    """The training state saved in the checkpoint copy ``directory``. Raises FileNotFoundError when it has
    none, CheckpointError naming the file when it does not load."""
    from ditsam.model.checkpoints import CheckpointError

    path = Path(directory) / TRAINING_STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: {path} does not exist (no resumable checkpoint in this run folder)")
    try:
        # The optimiser state holds plain tensors and numbers; RNG states are tensors too.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # zip, EOF, pickle and storage errors of a damaged file
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise CheckpointError(
            f"{path} does not load (truncated or corrupted): {type(error).__name__}: {first_line}"
        ) from error
    if not isinstance(state, dict) or not {"progress", "model", "optimizer"} <= set(state):
        raise CheckpointError(f"{path} is not a ditsam training state (no progress / model / optimizer entries)")
    return state


def load_newest_training_state(folder: Path, names: tuple[str, ...]) -> tuple[Path, dict[str, Any]]:
    """The newest of the checkpoint copies ``folder/NAME`` (``names``: ``last``, ``best``) that is whole and
    loads, with its training state. Each copy passed over is logged in one line naming the file, and so is
    the fallback; raises CheckpointError listing every copy's problem when none loads, FileNotFoundError
    when there is no copy at all."""
    from ditsam.model.checkpoints import CheckpointError

    copies = sorted((folder / name for name in names if (folder / name).is_dir()), key=_rank, reverse=True)
    if not copies:
        raise FileNotFoundError(f"cannot resume: {folder} holds no checkpoint ({', '.join(names)})")
    problems: list[str] = []
    for copy in copies:
        problem = checkpoint_problem(copy)
        if problem is None:
            try:
                state = load_training_state(copy)
            except (FileNotFoundError, CheckpointError) as error:
                problem = str(error)
        if problem is not None:
            logger.warning("cannot resume from %s: %s", copy, problem)
            problems.append(problem)
            continue
        if problems:
            logger.warning(
                "resuming from %s instead (step %s), the newest copy that loads",
                copy,
                state["progress"].get("global_step"),
            )
        return copy, state
    raise CheckpointError(f"cannot resume: no checkpoint in {folder} loads ({'; '.join(problems)})")
