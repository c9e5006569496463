"""Downloads: official SAM checkpoints by name (``sam_vit_b``, ``sam_vit_l``, ``sam_vit_h``) and the resumable
download behind the authors' released DIT checkpoints (:func:`download_resumable`,
:mod:`ditsam.model.checkpoints.released`).

``train.init_checkpoint=sam_vit_b`` starts training from Meta's released weights without a manual
download: :func:`fetch_sam_checkpoint` puts the file into torch's hub cache (``$TORCH_HOME/hub/checkpoints``,
where ``torch.hub.load_state_dict_from_url`` keeps its files too) and reuses it afterwards. The download is
verified as torch.hub verifies its files: the SHA-256 of the file must start with the hex digits in its name
(``sam_vit_b_01ec64.pth`` -> ``01ec64``); a file that does not match is discarded, nothing is left in the
cache. The base URL can be changed with the environment variable ``DITSAM_SAM_BASE_URL`` (a mirror, or a
local server in the tests); ``HF_HUB_OFFLINE=1`` allows the cache only, as for every other download.
Nothing is downloaded at import time.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from pathlib import Path
from urllib.parse import urlparse

from ditsam.model.checkpoints.report import CheckpointError

logger = logging.getLogger(__name__)

#: Name -> file name of the official checkpoints (segment-anything's README); the digits are a SHA-256 prefix.
SAM_CHECKPOINTS: dict[str, str] = {
    "sam_vit_b": "sam_vit_b_01ec64.pth",
    "sam_vit_l": "sam_vit_l_0b3195.pth",
    "sam_vit_h": "sam_vit_h_4b8939.pth",
}
#: Where Meta publishes them.
SAM_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
#: Environment variable that replaces :data:`SAM_BASE_URL` (a mirror; a local server in tests).
BASE_URL_ENV = "DITSAM_SAM_BASE_URL"
#: Environment variable that forbids downloads (the Hugging Face ecosystem's switch, honoured here too).
OFFLINE_ENV = "HF_HUB_OFFLINE"
#: Sub-folder of torch's hub directory that holds downloaded weights (torch.hub's own layout).
CACHE_SUBDIR = "checkpoints"

#: Suffix of a download in progress: a later call continues it with an HTTP Range request.
PARTIAL_SUFFIX = ".part"
#: The answer to a Range beyond the file's end: the partial file is discarded and the download starts again.
HTTP_RANGE_NOT_SATISFIABLE = 416
#: Hosts whose links go through gdown (Google Drive's confirmation page for large files).
GOOGLE_DRIVE_HOSTS = frozenset({"drive.google.com", "docs.google.com", "drive.usercontent.google.com"})

_HASH_IN_NAME = re.compile(r"_([0-9a-f]{6,8})\.pth$")
_TRUE = {"1", "on", "yes", "true"}


class DownloadError(CheckpointError):
    """A file could not be downloaded; the message names the URL."""


class SamDownloadError(DownloadError):
    """An official SAM checkpoint could not be fetched or failed its hash check; the message names the URL."""


def is_sam_name(value: str) -> bool:
    """True for ``sam_vit_b``, ``sam_vit_l`` and ``sam_vit_h``."""
    return value in SAM_CHECKPOINTS


def sam_cache_dir() -> Path:
    """torch's hub checkpoint folder (``torch.hub.get_dir()/checkpoints``)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / CACHE_SUBDIR


def sam_checkpoint_url(name: str) -> str:
    """The URL of checkpoint ``name``: the base URL (``DITSAM_SAM_BASE_URL`` or Meta's) + its file name."""
    filename = _filename(name)
    base = os.environ.get(BASE_URL_ENV) or SAM_BASE_URL
    return base.rstrip("/") + "/" + filename


def hash_prefix_of(filename: str) -> str:
    """The SHA-256 prefix a checkpoint's name carries (``sam_vit_b_01ec64.pth`` -> ``01ec64``)."""
    match = _HASH_IN_NAME.search(filename)
    if match is None:
        raise ValueError(f"{filename} carries no hash prefix (expected NAME_<6-8 hex digits>.pth)")
    return match.group(1)


def _filename(name: str) -> str:
    if name not in SAM_CHECKPOINTS:
        raise ValueError(f"{name!r} is not an official SAM checkpoint name; known: {', '.join(SAM_CHECKPOINTS)}")
    return SAM_CHECKPOINTS[name]


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` forbids downloads (``1``, ``on``, ``yes``, ``true``)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in _TRUE


def fetch_sam_checkpoint(name: str, *, cache_dir: str | Path | None = None, progress: bool = True) -> Path:
    """The local path of official SAM checkpoint ``name``, downloaded into the cache when not there yet.

    ``cache_dir``: another folder than torch's hub checkpoint folder. ``progress``: a progress bar on stderr.
    Raises ValueError for an unknown name, FileNotFoundError when the file is not cached and ``HF_HUB_OFFLINE=1``,
    :class:`SamDownloadError` when the download fails or the file's SHA-256 does not start with the prefix in
    its name (the file is then discarded).
    """
    import torch.hub

    filename = _filename(name)
    cache = Path(cache_dir) if cache_dir is not None else sam_cache_dir()
    target = cache / filename
    if target.is_file():
        logger.info("%s: using the cached %s", name, target)
        return target
    url = sam_checkpoint_url(name)
    if is_offline():
        raise FileNotFoundError(
            f"{name}: {target} is not in the cache and {OFFLINE_ENV}=1 forbids downloading it from {url}; "
            f"download {filename} yourself and give its path"
        )
    prefix = hash_prefix_of(filename)
    cache.mkdir(parents=True, exist_ok=True)
    logger.info("%s: downloading %s to %s", name, url, target)
    try:
        torch.hub.download_url_to_file(url, str(target), hash_prefix=prefix, progress=progress)
    except RuntimeError as error:
        if "hash" not in str(error):
            raise
        raise SamDownloadError(
            f"{name}: the file downloaded from {url} is not {filename}: its SHA-256 does not start with {prefix} "
            f"({error}); it was discarded, nothing was written to {cache}"
        ) from error
    except OSError as error:  # urllib's URLError / HTTPError, refused connections, a full disk
        raise cannot_download_error(
            SamDownloadError, name, url, error, filename=filename, cache=cache, base_url_env=BASE_URL_ENV
        ) from error
    return target


def cannot_download_error(
    kind: type[DownloadError], name: str, url: str, error: OSError, *, filename: str, cache: Path, base_url_env: str
) -> DownloadError:
    """A ``kind`` error, to raise from ``error``, for official checkpoint ``name`` whose ``url`` could not be
    read: what failed and the ways round it (``filename`` put into ``cache`` by hand, or a mirror)."""
    reason = getattr(error, "reason", None) or error  # urllib's URLError keeps the cause in .reason
    return kind(
        f"{name}: cannot download {url} ({reason}); put {filename} into {cache} yourself, give its path, or "
        f"set {base_url_env} to a mirror"
    )


def is_google_drive(url: str) -> bool:
    """True for a Google Drive link (``https://drive.google.com/...``)."""
    return (urlparse(url).hostname or "") in GOOGLE_DRIVE_HOSTS


def download_resumable(url: str, target: Path, *, progress: bool = True) -> Path:
    """Download ``url`` to ``target`` through ``target.part``, renamed to ``target`` only once complete.

    A ``.part`` left by an interrupted call is continued with an HTTP Range request (huggingface_hub's
    ``http_get``, which starts again when a server ignores the range); a Google Drive link goes through gdown,
    which answers Drive's confirmation page for large files and resumes its own partial file. ``progress``: a
    progress bar on stderr. Raises :class:`DownloadError` naming the URL (the partial file is kept, so running
    again continues it), FileNotFoundError when ``HF_HUB_OFFLINE=1``.
    """
    if is_offline():
        raise FileNotFoundError(f"{OFFLINE_ENV}=1 forbids downloading {url} to {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + PARTIAL_SUFFIX)
    try:
        if is_google_drive(url):
            _download_drive(url, target, progress=progress)
        else:
            _download_http(url, partial, progress=progress)
            partial.replace(target)
    except (OSError, ValueError) as error:
        kept = f"; the partial file {partial} is kept: run again to continue" if partial.is_file() else ""
        raise DownloadError(f"cannot download {url} ({type(error).__name__}: {error}){kept}") from error
    return target


def _download_http(url: str, partial: Path, *, progress: bool) -> None:
    import httpx2  # huggingface_hub's HTTP client: its transport errors (refused, reset, timed out)
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.file_download import http_get
    from tqdm.auto import tqdm

    done = partial.stat().st_size if partial.is_file() else 0
    if done:
        logger.info("continuing %s from byte %d (%s)", url, done, partial)
    bar = functools.partial(tqdm, disable=not progress)  # vanilla tqdm: huggingface_hub leaves it as configured
    try:
        with partial.open("ab") as out:
            http_get(
                url, out, resume_size=done, displayed_filename=partial.name.removesuffix(PARTIAL_SUFFIX), tqdm_class=bar
            )  # type: ignore[arg-type]
    except HfHubHTTPError as error:
        status = getattr(error.response, "status_code", None)
        if done and status == HTTP_RANGE_NOT_SATISFIABLE:  # the partial file is not a prefix of this one
            logger.warning("%s: %s does not continue it; downloading it again", url, partial)
            partial.unlink()
            _download_http(url, partial, progress=progress)
            return
        raise OSError(str(error).splitlines()[0]) from error
    except httpx2.HTTPError as error:
        raise OSError(str(error) or type(error).__name__) from error


def _download_drive(url: str, target: Path, *, progress: bool) -> None:
    try:
        import gdown
    except ImportError as error:
        raise OSError(f"a Google Drive link needs gdown: pip install 'ditsam[released]' ({error})") from error
    if gdown.download(url=url, output=str(target), quiet=not progress, resume=True) is None:
        raise OSError("gdown could not fetch the file (is it shared publicly?)")
