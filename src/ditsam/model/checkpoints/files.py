"""Reading checkpoint files: ``torch.load`` (weights only, memory-mapped) or safetensors, then unwrapping.

Files are always read on the CPU with ``weights_only=True`` (tensors saved on ``cuda:0`` load on a
CPU-only machine; an optimizer state that is dropped is never paged in) or with safetensors: a
checkpoint that needs arbitrary Python objects is refused, never unpickled.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ditsam.model.checkpoints.keys import StateDict
from ditsam.model.checkpoints.report import CheckpointError

logger = logging.getLogger(__name__)

# Where a wrapped checkpoint keeps its weights, EMA copies first.
_EMA_KEYS = ("ema_state_dict", "state_dict_ema", "model_ema", "ema_model", "ema")
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "weights")


def _weights_only_cause(error: Exception) -> str:
    """The informative line(s) of torch's long weights_only error."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [
        line
        for line in lines
        if not line.startswith(("Weights only load failed", "Check the documentation", "Please file an issue"))
    ]
    return " ".join(useful) or (lines[0] if lines else type(error).__name__)


def _torch_load(path: Path) -> Any:
    """``torch.load`` on the CPU, weights only; zip-format files are memory-mapped, so tensors nobody reads
    (the Adam state of a training checkpoint, ~2/3 of the authors' files) are never paged in."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as error:
        cause = _weights_only_cause(error)
        if "GLOBAL" in cause.upper() and "unsupported" in cause.lower():
            raise CheckpointError(
                f"{path}: refused to load: the file holds Python objects that torch.load(weights_only=True) will "
                f"not unpickle, since that could run arbitrary code ({cause}). Save only tensors, e.g. "
                f"torch.save(model.state_dict(), path)"
            ) from error
        raise CheckpointError(
            f"{path} is not a readable torch checkpoint (corrupted or not a torch file): {cause}"
        ) from error
    except Exception as error:  # zip, EOF and storage errors of a damaged or foreign file
        raise CheckpointError(
            f"{path} is not a readable torch checkpoint (truncated, corrupted or not a torch file): "
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        ) from error


def safetensors_load(path: Path) -> StateDict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as error:  # safetensors raises its own SafetensorError for damaged headers / data
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupted): {error}") from error


def _is_state_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _unwrap(obj: object, path: Path, *, depth: int = 0) -> tuple[StateDict, str | None]:
    """The state dict inside a checkpoint object, and the wrapper key it was found under (None: top level)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a state dict (a mapping of parameter names to tensors)"
        )
    if _is_state_dict(obj):
        return dict(obj), None
    if depth < 2:
        for key in (*_EMA_KEYS, *_WRAPPER_KEYS):
            if isinstance(obj.get(key), Mapping):
                try:
                    inner, inner_key = _unwrap(obj[key], path, depth=depth + 1)
                except CheckpointError:
                    continue
                return inner, key if inner_key is None else f"{key}.{inner_key}"
    if not obj:
        raise CheckpointError(f"{path} holds an empty dict, not a state dict")
    tensors = [k for k, v in obj.items() if isinstance(v, torch.Tensor)]
    if tensors:
        bad = next(k for k, v in obj.items() if not isinstance(v, torch.Tensor))
        raise CheckpointError(
            f"{path} is not a dict of tensors: entry {bad!r} is a {type(obj[bad]).__name__} "
            f"({len(tensors)} of {len(obj)} entries are tensors)"
        )
    keys = ", ".join(repr(k) for k in list(obj)[:10])
    raise CheckpointError(
        f"{path} holds a dict without a state dict (keys {keys}); expected parameter name -> tensor entries, "
        f"or such a dict under one of {', '.join(repr(k) for k in (*_EMA_KEYS, *_WRAPPER_KEYS))}"
    )


def read_checkpoint_file(path: str | Path) -> tuple[StateDict, str | None]:
    """Tensors of a ``.pth/.pt/.bin`` (``torch.load``, weights only) or ``.safetensors`` file.

    Wrapped checkpoints (``{"state_dict": sd, "optimizer": ...}``, ``{"model": sd}``, EMA copies, which are
    preferred) are unwrapped. Returns the state dict and the wrapper key used (None when the file is a
    plain state dict). Raises FileNotFoundError / IsADirectoryError, or :class:`CheckpointError` for a file
    that cannot be read, refuses weights_only loading, or holds no state dict.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint file {path} does not exist")
    if path.is_dir():
        raise IsADirectoryError(
            f"{path} is a folder, not a checkpoint file (a ditsam folder loads with DITSam.from_pretrained "
            f"or load_checkpoint)"
        )
    if path.suffix == ".safetensors":
        return _unwrap(safetensors_load(path), path)
    state_dict, wrapper = _unwrap(_torch_load(path), path)
    if wrapper is not None:
        logger.info("%s: using the state dict stored under %r", path, wrapper)
    return state_dict, wrapper


def strip_module_prefix(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Remove the ``module.`` prefix that DDP / DataParallel put on every key."""
    stripped: StateDict = {}
    for key, value in state_dict.items():
        name = key
        while name.startswith("module."):
            name = name[len("module.") :]
        if name in stripped:
            raise CheckpointError(f"key {key!r} collides with another key once the 'module.' prefix is removed")
        stripped[name] = value
    return stripped
