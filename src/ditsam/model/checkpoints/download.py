"""Official SAM checkpoints by name: ``sam_vit_b``, ``sam_vit_l``, ``sam_vit_h``.

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

import logging
import os
import re
from pathlib import Path

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

_HASH_IN_NAME = re.compile(r"_([0-9a-f]{6,8})\.pth$")
_TRUE = {"1", "on", "yes", "true"}


class SamDownloadError(CheckpointError):
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


def _offline() -> bool:
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
    if _offline():
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
        reason = getattr(error, "reason", None) or error
        raise SamDownloadError(
            f"{name}: cannot download {url} ({reason}); put {filename} into {cache} yourself, give its path, or "
            f"set {BASE_URL_ENV} to a mirror"
        ) from error
    return target
