"""Exported models built once per model and reused: ``Segmenter(dtype="int8")`` and ``ditsam export-onnx
--quantize int8`` take the int8 model, ``Segmenter(dtype="openvino")`` the float32 export, from a cache folder
instead of exporting (and quantising) again (about a minute for ViT-B, in every process).

The cache is keyed by what the exported model is made of (:func:`cache_key`): the sha256 of every weight (names,
dtypes, shapes and bytes, whatever file or Hub id they came from), the model config, and the export options and
software versions that shape the quantised graph. A change to any of them is another key, so a cache entry is
never stale. Layout, in :func:`default_cache_dir` (``$DITSAM_INT8_CACHE``, else
``$TORCH_HOME/hub/ditsam-int8``)::

    <key>/model_int8.onnx      the quantised model (plus any external-data file of a model over 2 GB);
                               model.onnx for the float32 export of dtype="openvino"
    <key>/complete.json        written last: the sha256 of every file of the entry, and what the key holds
    <key>.lock                 one process builds an entry while the others wait for it (filelock)

An entry is built in a temporary folder renamed into place, so a kill leaves none or a whole one. An entry
whose files do not match their recorded sha256 (a truncated copy, a garbled disk), or that ONNX Runtime cannot
load, is never trusted: a warning names it and it is built again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, TypeVar

if TYPE_CHECKING:
    from ditsam.model.dit import DITSam

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: Environment variable naming the cache folder.
CACHE_ENV = "DITSAM_INT8_CACHE"
#: The cache folder under torch's hub folder ($TORCH_HOME/hub) when the variable is unset.
CACHE_SUBDIR = "ditsam-int8"
MODEL_FILE = "model_int8.onnx"
#: Written last into an entry: its presence means every other file is complete.
COMPLETE_MARKER = "complete.json"
#: Bump when the key's recipe or the entry layout changes: older entries then stop matching.
CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """``$DITSAM_INT8_CACHE``, else ``$TORCH_HOME/hub/ditsam-int8`` (``~/.cache/torch/hub/ditsam-int8``)."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured)
    import torch

    return Path(torch.hub.get_dir()) / CACHE_SUBDIR


def cache_key(model: "DITSam", options: Mapping[str, Any]) -> str:
    """Hex sha256 of the model's weights (every tensor of its state dict: name, dtype, shape, bytes), its config
    and the export ``options`` (what else shapes the built file: :func:`ditsam.int8.int8_options`): the name of
    its cache entry."""
    import torch

    digest = hashlib.sha256()
    header = {"cache_format": CACHE_FORMAT, "config": model.config.to_dict(), "options": dict(options)}
    digest.update(json.dumps(header, sort_keys=True, default=str).encode("utf-8"))
    for name, tensor in sorted(model.state_dict().items()):
        values = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"\n{name} {values.dtype} {tuple(tensor.shape)}\n".encode("utf-8"))
        digest.update(memoryview(values.view(torch.uint8).numpy()))  # the raw bytes, any dtype (bf16 included)
    return digest.hexdigest()


def entry_problem(folder: Path, file_name: str = MODEL_FILE) -> str | None:
    """Why the cache entry ``folder`` (holding ``file_name``) cannot be used (``"missing"`` when there is none),
    or None when every file recorded in its marker is there with its sha256."""
    from ditsam.engine.checkpoint import file_digests

    marker = folder / COMPLETE_MARKER
    if not folder.is_dir():
        return "missing"
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))["files"]
    except FileNotFoundError:
        return f"{marker.name} is missing (an interrupted build)"
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"{marker.name} cannot be read ({type(error).__name__}: {error})"
    found = file_digests(folder)
    if file_name not in recorded or recorded != found:
        changed = sorted(name for name in set(recorded) | set(found) if recorded.get(name) != found.get(name))
        return f"file(s) {', '.join(changed) or file_name} differ from the sha256 recorded when it was built"
    return None


def cached_model(
    model: "DITSam",
    *,
    options: Mapping[str, Any],
    build: Callable[[Path], Any],
    cache_dir: str | os.PathLike | None = None,
    check: Callable[[Path], Any] | None = None,
    file_name: str = MODEL_FILE,
) -> Path:
    """The file ``file_name`` (default :data:`MODEL_FILE`) of ``model``'s entry in the cache
    (:func:`default_cache_dir` unless ``cache_dir``), keyed by :func:`cache_key` (``options``: what else shapes
    the file); ``build(path)`` writes it there first when no whole entry exists. ``check(path)`` (e.g. loading it into ONNX Runtime) runs on a
    cached file: if it raises, the entry is rebuilt with a warning. Raises OSError when the cache folder cannot
    be written, and whatever ``build`` raises. (:func:`ditsam.int8.cached_int8_model` is the int8 model's.)"""
    from filelock import FileLock

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = cache_key(model, options)
    folder = root / key
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{key}.lock")):  # processes started together build one entry, once
        problem = entry_problem(folder, file_name)
        if problem is None and check is not None:
            try:
                check(folder / file_name)
            except Exception as error:  # whatever ONNX Runtime / OpenVINO raise for a file they cannot use
                problem = f"it cannot be loaded ({type(error).__name__}: {error})"
        if problem is None:
            logger.info("exported model from the cache: %s", folder / file_name)
            return folder / file_name
        if problem != "missing":
            logger.warning("cache entry %s is damaged: %s; building it again", folder, problem)
        _build(folder, build=build, options=options, file_name=file_name)
    return folder / file_name


def load_cached(
    model: "DITSam",
    *,
    options: Mapping[str, Any],
    build: Callable[[Path], Any],
    load: Callable[[Path], T],
    cache: str | os.PathLike | bool | None,
    file_name: str = MODEL_FILE,
) -> T:
    """``load(path)`` of ``model``'s exported file: from the cache (``cache`` None or True: the default folder, a
    path: that folder), built there once by :func:`cached_model` (a cached file ``load`` cannot read is rebuilt);
    ``cache=False``: built into a temporary folder and loaded from it, every time (the loaded model must not need
    the file afterwards)."""
    import tempfile

    if cache is False:
        with tempfile.TemporaryDirectory(prefix="ditsam-export-") as folder:
            path = Path(folder) / file_name
            build(path)
            return load(path)
    loaded: list[T] = []
    path = cached_model(
        model,
        options=options,
        build=build,
        cache_dir=None if cache is None or cache is True else cache,
        check=lambda cached: loaded.append(load(cached)),
        file_name=file_name,
    )
    return loaded[-1] if loaded else load(path)


def _build(folder: Path, *, build: Callable[[Path], Any], options: Mapping[str, Any], file_name: str) -> None:
    """``build`` the file into a temporary folder beside ``folder``, record its files' sha256, rename it into
    place (a damaged entry there is deleted first)."""
    from ditsam.engine.checkpoint import file_digests
    from ditsam.outputs import write_text_atomically

    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        logger.info("building the exported model once (cached in %s)", folder)
        tmp.mkdir(parents=True)
        build(tmp / file_name)
        marker = {"files": file_digests(tmp), "options": dict(options)}
        write_text_atomically(tmp / COMPLETE_MARKER, json.dumps(marker, indent=1))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
