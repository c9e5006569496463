"""Official EfficientSAM checkpoints by name: ``efficientsam_ti`` (``efficient_sam_vitt.pt``) and ``efficientsam_s``
(``efficient_sam_vits.pt``), for ``train.init_checkpoint`` as SAM's by name
(:mod:`ditsam.model.checkpoints.download`).

The files are published in the ``weights/`` folder of GitHub yformer/EfficientSAM (its README's "Download"
links); the S file only as ``efficient_sam_vits.pt.zip`` (GitHub's 100 MB limit), which is unpacked here.
:func:`fetch_efficientsam_checkpoint` downloads into torch's hub cache (``$TORCH_HOME/hub/checkpoints``, beside
SAM's files) once and reuses the file afterwards. ``DITSAM_EFFICIENTSAM_BASE_URL`` replaces the base URL (a
mirror; a local server in the tests); ``HF_HUB_OFFLINE=1`` allows the cache only.

Checks: the authors publish no hashes and their file names carry none (SAM's do), so no download can be
checked against a known digest offline. What can be checked is: the file is a torch checkpoint holding an
EfficientSAM state dict (else it is discarded, nothing is cached), and -- trust on first use, as for the
released DIT files -- its SHA-256 is recorded in ``<file>.sha256`` and every later use is checked against
it (a changed file is refused, named). Nothing is downloaded at import time.
"""

from __future__ import annotations

import logging
import os
import shutil
import zipfile
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from ditsam.model.checkpoints.download import (
    OFFLINE_ENV,
    DownloadError,
    cannot_download_error,
    is_offline,
    sam_cache_dir,
)
from ditsam.model.checkpoints.files import read_checkpoint_file
from ditsam.model.checkpoints.formats import Format, detect_format
from ditsam.model.checkpoints.report import CheckpointError

logger = logging.getLogger(__name__)


class EfficientSamFile(NamedTuple):
    """One official file: the checkpoint's name, and the name it is published under (a zip of it, or itself)."""

    filename: str
    published: str


#: Name -> the official file (yformer/EfficientSAM README, "Model"; build_efficient_sam.py's file names).
EFFICIENTSAM_CHECKPOINTS: dict[str, EfficientSamFile] = {
    "efficientsam_ti": EfficientSamFile("efficient_sam_vitt.pt", "efficient_sam_vitt.pt"),
    "efficientsam_s": EfficientSamFile("efficient_sam_vits.pt", "efficient_sam_vits.pt.zip"),
}
#: Where the authors publish them (the README's links, as raw files rather than GitHub's viewer pages).
EFFICIENTSAM_BASE_URL = "https://github.com/yformer/EfficientSAM/raw/main/weights/"
#: Environment variable that replaces :data:`EFFICIENTSAM_BASE_URL`.
EFFICIENTSAM_BASE_URL_ENV = "DITSAM_EFFICIENTSAM_BASE_URL"
#: Suffix of the file recording a cached checkpoint's SHA-256 (first download's; later uses are checked).
DIGEST_SUFFIX = ".sha256"
#: Folder, inside the cache, where a download is unpacked and checked before it is moved into place.
STAGING_PREFIX = ".staging-"
#: Members of a zip written by macOS's archiver that are not the file.
_MACOS_METADATA = "__MACOSX/"


class EfficientSamDownloadError(DownloadError):
    """An official EfficientSAM checkpoint could not be fetched or is not one; the message names the URL."""


def is_efficientsam_name(value: object) -> bool:
    """True for ``efficientsam_ti`` and ``efficientsam_s``."""
    return isinstance(value, str) and value in EFFICIENTSAM_CHECKPOINTS


def _file(name: str) -> EfficientSamFile:
    if name not in EFFICIENTSAM_CHECKPOINTS:
        known = ", ".join(EFFICIENTSAM_CHECKPOINTS)
        raise ValueError(f"{name!r} is not an official EfficientSAM checkpoint name; known: {known}")
    return EFFICIENTSAM_CHECKPOINTS[name]


def efficientsam_checkpoint_url(name: str) -> str:
    """The URL of ``name``: the base URL (``DITSAM_EFFICIENTSAM_BASE_URL`` or the authors') + its published name."""
    base = os.environ.get(EFFICIENTSAM_BASE_URL_ENV) or EFFICIENTSAM_BASE_URL
    return base.rstrip("/") + "/" + _file(name).published


def _sha256(path: Path) -> str:
    from huggingface_hub.utils.sha import sha_fileobj

    with path.open("rb") as handle:
        return sha_fileobj(handle).hex()


def _checked_cached(name: str, target: Path) -> Path:
    """``target`` after comparing its SHA-256 with the recorded one (recording it when none is)."""
    record = target.with_name(target.name + DIGEST_SUFFIX)
    digest = _sha256(target)
    if not record.is_file():
        logger.info("%s: recording the SHA-256 of %s (%s...) in %s", name, target, digest[:12], record)
        record.write_text(digest + "\n", encoding="utf-8")
        return target
    expected = record.read_text(encoding="utf-8").strip()
    if digest != expected:
        raise CheckpointError(
            f"{name}: {target} has changed since it was cached (SHA-256 {digest[:12]}..., recorded {expected[:12]}... "
            f"in {record}); refusing it: delete both files to download it again"
        )
    return target


def _unpack(name: str, archive: Path, filename: str, url: str) -> Path:
    """The one member of ``archive`` named ``filename``, written beside it."""
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = [
                member
                for member in bundle.namelist()
                if PurePosixPath(member).name == filename and not member.startswith(_MACOS_METADATA)
            ]
            if len(members) != 1:
                listing = ", ".join(bundle.namelist()[:8]) or "nothing"
                raise EfficientSamDownloadError(
                    f"{name}: {url} should be a zip holding one {filename}; it holds {listing}; discarded"
                )
            unpacked = archive.with_name(filename)
            with bundle.open(members[0]) as source, unpacked.open("wb") as out:
                shutil.copyfileobj(source, out)
    except zipfile.BadZipFile as error:
        raise EfficientSamDownloadError(f"{name}: {url} is not a zip file ({error}); discarded") from error
    archive.unlink()
    return unpacked


def _check_contents(name: str, path: Path, url: str) -> None:
    try:
        state_dict, _ = read_checkpoint_file(path)
    except CheckpointError as error:
        raise EfficientSamDownloadError(f"{name}: the file from {url} does not load ({error}); discarded") from error
    kind = detect_format(state_dict)
    if kind is not Format.EFFICIENTSAM:
        raise EfficientSamDownloadError(
            f"{name}: the file from {url} holds {kind.value if kind else 'an unknown'} weights, not an EfficientSAM "
            f"state dict; discarded"
        )


def fetch_efficientsam_checkpoint(name: str, *, cache_dir: str | Path | None = None, progress: bool = True) -> Path:
    """The local path of official EfficientSAM checkpoint ``name``, downloaded into the cache on first use.

    ``cache_dir``: another folder than torch's hub checkpoint folder. ``progress``: a progress bar on stderr.
    Raises ValueError for an unknown name, FileNotFoundError when the file is not cached and ``HF_HUB_OFFLINE=1``,
    :class:`EfficientSamDownloadError` when the download fails or is not an EfficientSAM checkpoint (nothing is
    then left in the cache), :class:`CheckpointError` for a cached file whose SHA-256 changed.
    """
    import torch.hub

    entry = _file(name)
    cache = Path(cache_dir) if cache_dir is not None else sam_cache_dir()
    target = cache / entry.filename
    if target.is_file():
        logger.info("%s: using the cached %s", name, target)
        return _checked_cached(name, target)
    url = efficientsam_checkpoint_url(name)
    if is_offline():
        raise FileNotFoundError(
            f"{name}: {target} is not in the cache and {OFFLINE_ENV}=1 forbids downloading it from {url}; "
            f"download {entry.published} yourself and give the path of {entry.filename}"
        )
    staging = cache / f"{STAGING_PREFIX}{name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        downloaded = staging / entry.published
        logger.info("%s: downloading %s to %s", name, url, target)
        try:
            torch.hub.download_url_to_file(url, str(downloaded), progress=progress)
        except OSError as error:  # urllib's URLError / HTTPError, refused connections, a full disk
            raise cannot_download_error(
                EfficientSamDownloadError,
                name,
                url,
                error,
                filename=entry.filename,
                cache=cache,
                base_url_env=EFFICIENTSAM_BASE_URL_ENV,
            ) from error
        if entry.published != entry.filename:
            downloaded = _unpack(name, downloaded, entry.filename, url)
        _check_contents(name, downloaded, url)
        record = staging / (entry.filename + DIGEST_SUFFIX)
        record.write_text(_sha256(downloaded) + "\n", encoding="utf-8")
        record.replace(target.with_name(record.name))
        downloaded.replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
