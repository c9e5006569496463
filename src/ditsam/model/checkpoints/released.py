"""The authors' released DIT checkpoints by name: ``dit-refcoco``, ``dit-refcoco+``, ``dit-refcocog``,
``dit-grefcoco``.

:data:`RELEASED_CHECKPOINTS` is the one table of what is known of each: the authors' published scores, the
file's source link and name, the data it was trained on and the licence note. :func:`released_folder` turns a
name into a ``save_pretrained`` folder in the cache, once: the first use downloads the authors' file
(:func:`~ditsam.model.checkpoints.download.download_resumable`: a progress bar, an interrupted download
continued), records its SHA-256 and has the caller convert it; every later use checks the recorded SHA-256 of
the files it reads (a changed file is refused, named) and loads the folder with no network.

The cache follows torch.hub's layout, beside the SAM checkpoints: ``$TORCH_HOME/hub/checkpoints/ditsam/<name>/``
(``~/.cache/torch/hub/checkpoints/ditsam/<name>/`` by default) holds the authors' file, the converted folder
``model/`` and ``sha256.json``. ``DITSAM_CHECKPOINT_MIRROR=<base URL>`` fetches ``<base>/<name>.pth``
instead of the source link; ``HF_HUB_OFFLINE=1`` uses the cache only. Nothing happens at import time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType

from ditsam.digest import file_sha256
from ditsam.model.checkpoints.download import OFFLINE_ENV, DownloadError, download_resumable, is_offline, sam_cache_dir
from ditsam.model.checkpoints.report import CheckpointError

logger = logging.getLogger(__name__)

#: Environment variable whose base URL replaces every source link: ``<base>/<name>.pth``.
MIRROR_ENV = "DITSAM_CHECKPOINT_MIRROR"
#: Sub-folder of torch's hub checkpoint folder that holds the released DIT checkpoints.
CACHE_SUBDIR = "ditsam"
#: The converted ``save_pretrained`` folder inside a name's cache folder.
FOLDER_NAME = "model"
#: The SHA-256 of every cached file of a name, recorded when the file was written.
MANIFEST_FILE = "sha256.json"
#: A conversion in progress (renamed to :data:`FOLDER_NAME` once written and recorded).
STAGING_NAME = ".model.tmp"
#: Held while a name is downloaded or converted, so that processes started together do it once.
LOCK_FILE = ".lock"
#: What the authors state about the licence of their weights (nothing, as far as their repository shows).
NO_LICENCE = (
    "The authors (GitHub wysnzzzz/DIT) state no licence for their released weights; SAM's weights inside them "
    "are Apache-2.0, BERT's Apache-2.0. Ask the authors before redistributing them."
)


@dataclasses.dataclass(frozen=True)
class ReleasedCheckpoint:
    """One released checkpoint. ``url`` / ``sha256`` / ``scores`` are None where not recorded yet: a name
    without ``url`` downloads only from the mirror (:data:`MIRROR_ENV`); without ``sha256`` the first
    download's SHA-256 is recorded and trusted (later uses are checked against it)."""

    name: str
    #: Training data, as a model card names it (``refcoco``, ...).
    dataset: str
    #: ``ditsam eval --data`` experiment and overrides that score it as the authors did.
    eval_args: str
    #: The file's name as published; the cached copy keeps it.
    filename: str
    url: str | None
    sha256: str | None
    #: ``{split: {metric: value}}``, the authors' published numbers (the paper, arXiv 2404.00650, and their README).
    scores: Mapping[str, Mapping[str, float]] | None
    licence: str = NO_LICENCE
    #: How the text enters the ViT in the authors' released file (their L-DIT).
    injection: str = "layerwise"


#: The authors' README (GitHub wysnzzzz/DIT, "Model Weights") gives one number per split and does not name the
#: metric; recorded as it is published, under this key.
PUBLISHED_SCORE = "published"
_DRIVE_FILE = "https://drive.google.com/file/d/{id}/view?usp=sharing"


def _entry(
    name: str, dataset: str, eval_args: str, *, drive_id: str, scores: Mapping[str, float]
) -> ReleasedCheckpoint:
    # The files' hashes are not published: the first download's SHA-256 is recorded and later uses are checked.
    return ReleasedCheckpoint(
        name=name,
        dataset=dataset,
        eval_args=eval_args,
        filename=f"{name}.pth",
        url=_DRIVE_FILE.format(id=drive_id),
        sha256=None,
        scores={split: {PUBLISHED_SCORE: value} for split, value in scores.items()},
    )


#: Name -> what is known of the authors' released checkpoint (the one table; README's numbers come from it).
RELEASED_CHECKPOINTS: Mapping[str, ReleasedCheckpoint] = MappingProxyType(
    {
        entry.name: entry
        for entry in (
            _entry(
                "dit-refcoco",
                "refcoco",
                "--data refcoco/ldit",
                drive_id="11gVgwnWI8c0m54gZFJIEcyYMzN7u9lmF",
                scores={"val": 76.2, "testA": 77.85, "testB": 73.53},
            ),
            _entry(
                "dit-refcoco+",
                "refcoco+",
                "--data refcoco/ldit data.dataset=refcoco+",
                drive_id="1T3jYiR9BLDJxvThYulySrDv0S2qonq1Z",
                scores={"val": 65.94, "testA": 69.78, "testB": 58.89},
            ),
            _entry(
                "dit-refcocog",
                "refcocog",
                "--data refcoco/ldit data.dataset=refcocog data.split_by=umd data.eval_splits=[val,test]",
                drive_id="1HObuOQLv97NB3eD2X4ss2XsBlAifTc_L",
                scores={"val": 67.4, "test": 68.07},
            ),
            _entry(
                "dit-grefcoco",
                "grefcoco",
                "--data grefcoco/ldit",
                drive_id="1v9dcxKwOQM8i2NKXi4YfITJ9ZO00XVur",
                scores={"val": 63.76, "testA": 67.19, "testB": 61.85},
            ),
        )
    }
)


def is_released_name(value: object) -> bool:
    """True for a name of :data:`RELEASED_CHECKPOINTS` (``dit-refcoco``, ...)."""
    return isinstance(value, str) and value in RELEASED_CHECKPOINTS


def released_checkpoint(name: str) -> ReleasedCheckpoint:
    """The table's entry of ``name``; ValueError naming the known names for anything else."""
    if name not in RELEASED_CHECKPOINTS:
        raise ValueError(f"{name!r} is not a released DIT checkpoint name; known: {', '.join(RELEASED_CHECKPOINTS)}")
    return RELEASED_CHECKPOINTS[name]


def released_url(name: str) -> str:
    """Where ``name`` is downloaded from: ``$DITSAM_CHECKPOINT_MIRROR/<name>.pth``, else the source link."""
    entry = released_checkpoint(name)
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        return f"{mirror.rstrip('/')}/{name}.pth"
    if entry.url is None:
        raise DownloadError(
            f"{name}: ditsam does not record the authors' source link of this file yet; set {MIRROR_ENV}=<base URL> "
            f"(serving {name}.pth), or download the authors' file yourself and give its path"
        )
    return entry.url


def released_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """The folder holding every released name: ``cache_dir``, else ``$TORCH_HOME/hub/checkpoints/ditsam``."""
    return Path(cache_dir) if cache_dir is not None else sam_cache_dir() / CACHE_SUBDIR


@dataclasses.dataclass(frozen=True)
class _Cache:
    """One name's cache folder: the authors' file, the converted folder and the recorded SHA-256s."""

    name: str
    root: Path

    @property
    def file(self) -> Path:
        return self.root / released_checkpoint(self.name).filename

    @property
    def folder(self) -> Path:
        return self.root / FOLDER_NAME

    def recorded(self) -> dict[str, str]:
        path = self.root / MANIFEST_FILE
        if not path.is_file():
            return {}
        try:
            files = json.loads(path.read_text(encoding="utf-8"))["files"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise CheckpointError(
                f"{path} is not a ditsam manifest ({error}): delete {self.root} to start again"
            ) from error
        return dict(files)

    def record(self, digests: Mapping[str, str]) -> None:
        files = {**self.recorded(), **digests}
        staging = self.root / (MANIFEST_FILE + ".tmp")
        staging.write_text(json.dumps({"name": self.name, "files": files}, indent=2, sort_keys=True), encoding="utf-8")
        staging.replace(self.root / MANIFEST_FILE)

    def verify(self, path: Path) -> None:
        """Refuse ``path`` when its SHA-256 is not the recorded one."""
        relative = path.relative_to(self.root).as_posix()
        expected = self.recorded().get(relative)
        if expected is None:
            raise CheckpointError(
                f"{self.name}: {path} has no recorded SHA-256 in {self.root / MANIFEST_FILE}; "
                f"delete {self.root} to download it again"
            )
        actual = file_sha256(path)
        if actual != expected:
            raise CheckpointError(
                f"{self.name}: {path} has changed since it was cached (SHA-256 {actual[:12]}..., recorded "
                f"{expected[:12]}...); refusing it: delete {self.root} to download it again"
            )

    def folder_files(self) -> list[Path]:
        return sorted(p for p in self.folder.rglob("*") if p.is_file())

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        from filelock import FileLock

        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root / LOCK_FILE)):
            yield


def _cache(name: str, cache_dir: str | Path | None) -> _Cache:
    released_checkpoint(name)  # an unknown name fails here, naming the known ones
    return _Cache(name, released_cache_dir(cache_dir) / name)


def _fetch(cache: _Cache, *, progress: bool) -> Path:
    """The authors' file of ``cache.name``, downloaded once (SHA-256 recorded), checked on every later use."""
    if cache.file.is_file():
        cache.verify(cache.file)
        return cache.file
    if is_offline():
        raise FileNotFoundError(
            f"{cache.name}: the released checkpoint is not in the cache {cache.root} and {OFFLINE_ENV}=1 forbids "
            f"downloading it; run once online, or give the path of the authors' file"
        )
    url = released_url(cache.name)
    logger.info("%s: downloading %s to %s", cache.name, url, cache.file)
    download_resumable(url, cache.file, progress=progress)
    digest = file_sha256(cache.file)
    expected = released_checkpoint(cache.name).sha256
    if expected is not None and digest != expected:
        cache.file.unlink()
        raise DownloadError(
            f"{cache.name}: the file downloaded from {url} has SHA-256 {digest}, not the published "
            f"{expected}; it was discarded"
        )
    cache.record({cache.file.name: digest})
    return cache.file


def fetch_released_file(name: str, *, cache_dir: str | Path | None = None, progress: bool = True) -> Path:
    """The local, checked copy of the authors' file of ``name`` (downloaded on first use; see the module
    docstring). Raises ValueError for an unknown name, FileNotFoundError offline with nothing cached,
    :class:`~ditsam.model.checkpoints.download.DownloadError` when the download fails,
    :class:`~ditsam.model.checkpoints.CheckpointError` for a cached file whose SHA-256 changed."""
    cache = _cache(name, cache_dir)
    with cache.lock():
        return _fetch(cache, progress=progress)


def released_folder(
    name: str, *, convert: Callable[[Path, Path], None], cache_dir: str | Path | None = None, progress: bool = True
) -> Path:
    """The cached ``save_pretrained`` folder of ``name``; on first use the authors' file is fetched
    (:func:`fetch_released_file`) and ``convert(file, folder)`` writes the folder, whose files' SHA-256 are
    then recorded. Later uses check those files and return the folder (no network, no conversion)."""
    cache = _cache(name, cache_dir)
    with cache.lock():
        if cache.folder.is_dir():
            for path in cache.folder_files():
                cache.verify(path)
            return cache.folder
        source = _fetch(cache, progress=progress)
        staging = cache.root / STAGING_NAME
        shutil.rmtree(staging, ignore_errors=True)  # what an interrupted conversion left
        logger.info("%s: converting %s once into %s", name, source, cache.folder)
        convert(source, staging)
        cache.record(
            {
                f"{FOLDER_NAME}/{p.relative_to(staging).as_posix()}": file_sha256(p)
                for p in sorted(staging.rglob("*"))
                if p.is_file()
            }
        )
        staging.replace(cache.folder)
    return cache.folder
