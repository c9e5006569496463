"""The Hugging Face Hub and local paths: resolving a model source to a local path (a folder or file as it is,
a Hub id ``owner/name`` or ``owner/name/path/file.pth`` fetched into the Hub cache, an official SAM checkpoint
by name for ``train.init_checkpoint``) and uploading a model (:func:`push_to_hub`).
:mod:`ditsam.model.checkpoints.load` loads what these resolve."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from ditsam.model.checkpoints.bundled import bundled_folder, is_bundled_name
from ditsam.model.checkpoints.ditsam_folder import CONFIG_FILE, save_pretrained
from ditsam.model.checkpoints.download import fetch_sam_checkpoint, is_sam_name
from ditsam.model.checkpoints.efficientsam_download import fetch_efficientsam_checkpoint, is_efficientsam_name
from ditsam.model.checkpoints.loadable import LoadableModel
from ditsam.model.checkpoints.released import fetch_released_file, is_released_name
from ditsam.model.checkpoints.report import CheckpointError

logger = logging.getLogger(__name__)

#: File endings of torch checkpoints that load without a config (the authors' files are ``.pth``).
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin")

_HUB_PART = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_HUB_REPO = re.compile(rf"({_HUB_PART}/{_HUB_PART})")
_HUB_FILE = re.compile(rf"({_HUB_PART}/{_HUB_PART})/((?:[^/\\]+/)*[^/\\]+)")


@dataclasses.dataclass(frozen=True)
class ResolvedSource:
    """A source as a local ``path`` (a folder or a checkpoint file); ``repo_id`` / ``revision`` when it came
    from the Hugging Face Hub (``path`` then lies in the Hub cache: never write there)."""

    path: Path
    repo_id: str | None = None
    revision: str | None = None
    #: The released checkpoint name (``dit-refcoco``, ...) ``path`` is the converted folder of.
    released: str | None = None

    def __str__(self) -> str:
        if self.released is not None:
            return f"{self.released} ({self.path})"
        if self.repo_id is None:
            return str(self.path)
        return f"{self.repo_id}@{self.revision or 'main'} ({self.path})"


def hub_reference(source: str) -> tuple[str, str | None] | None:
    """``(repo_id, filename)`` when ``source`` reads as a Hub id: ``owner/name`` (filename None) or
    ``owner/name/path/to/file.pth`` (a checkpoint file in that repo); None for anything else."""
    if source.startswith(("/", ".", "~")) or "\\" in source:
        return None
    if _HUB_REPO.fullmatch(source):
        return source, None
    match = _HUB_FILE.fullmatch(source)
    if match and source.lower().endswith(CHECKPOINT_SUFFIXES):
        return match.group(1), match.group(2)
    return None


def _hub_failure(
    source: str, revision: str | None, cache_dir: str | Path | None, error: Exception, *, local_files_only: bool = False
) -> FileNotFoundError:
    """The one-line error for a Hub id that could not be resolved, naming the id and why."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    cache = cache_dir or constants.HF_HUB_CACHE
    if isinstance(error, HFValidationError):
        reason = f"it is not a valid Hub repo id ({error})"
    elif isinstance(error, RevisionNotFoundError):
        reason = f"the repository has no revision {revision!r} (branch, tag or commit)"
    elif isinstance(error, GatedRepoError):
        reason = "the repository is gated: accept its terms on the Hub, then log in (hf auth login)"
    elif isinstance(error, RepositoryNotFoundError):
        reason = "the Hub has no such repository (or it is private: log in with hf auth login)"
    elif isinstance(error, LocalEntryNotFoundError):
        if local_files_only:
            reason = f"it is not in the Hub cache {cache} and local_files_only=True forbids downloading it"
        elif getattr(constants, "HF_HUB_OFFLINE", False):
            reason = f"it is not in the Hub cache {cache} and HF_HUB_OFFLINE=1 forbids downloading it"
        else:
            reason = f"the Hub cannot be reached and it is not in the Hub cache {cache}"
    elif isinstance(error, EntryNotFoundError):
        reason = "the repository has no such file"
    else:
        reason = f"{type(error).__name__}: {error}"
    at = f" at revision {revision!r}" if revision else ""
    return FileNotFoundError(
        f"cannot load Hugging Face Hub id {source!r}{at}: {reason}; no local folder or file has that name either"
    )


def _snapshot_entry(folder: Path, repo_id: str) -> Path:
    """What a downloaded repo holds: the folder itself (a ditsam ``config.json``) or its one checkpoint file."""
    if (folder / CONFIG_FILE).is_file():
        return folder
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in CHECKPOINT_SUFFIXES)
    if len(files) == 1:
        return files[0]
    listing = ", ".join(sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())[:10])
    if not files:
        raise CheckpointError(
            f"Hub repo {repo_id} ({folder}) holds neither a ditsam {CONFIG_FILE} nor a checkpoint file "
            f"({', '.join(CHECKPOINT_SUFFIXES)}); its files: {listing or 'none'}"
        )
    names = ", ".join(p.relative_to(folder).as_posix() for p in files)
    raise CheckpointError(f"Hub repo {repo_id} holds several checkpoint files ({names}): name one as {repo_id}/FILE")


def _from_hub(
    source: str,
    repo_id: str,
    filename: str | None,
    *,
    revision: str | None,
    cache_dir: str | Path | None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
) -> Path:
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, HFValidationError

    # The keywords huggingface_hub users type, passed on as they are.
    options = dict(
        revision=revision,
        cache_dir=cache_dir,
        token=token,
        local_files_only=local_files_only,
        force_download=force_download,
    )
    try:
        if filename is not None:
            return Path(hf_hub_download(repo_id, filename, **options))
        folder = Path(snapshot_download(repo_id, **options))
    except (HfHubHTTPError, EntryNotFoundError, HFValidationError, OSError) as error:
        raise _hub_failure(source, revision, cache_dir, error, local_files_only=local_files_only) from error
    return _snapshot_entry(folder, repo_id)


def resolve_source(
    source: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
) -> ResolvedSource:
    """A local folder or file as it is; a model shipped with ditsam by name (``refshapes-sam``,
    :mod:`~ditsam.model.checkpoints.bundled`) as its folder; otherwise a string that reads as a Hub id (:func:`hub_reference`)
    fetched into the Hub cache (``cache_dir``: another cache folder; ``token``, ``local_files_only`` and
    ``force_download`` as huggingface_hub takes them). A ``Path`` is always local.

    Raises FileNotFoundError naming the source when it is neither a local path nor a resolvable Hub id,
    ValueError for ``revision=`` with a local path.
    """
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"a model source is a folder, a file or a Hub id string, got {type(source).__name__}")
    path = Path(source).expanduser()
    if path.exists():
        if revision is not None:
            raise ValueError(f"revision={revision!r} only applies to a Hugging Face Hub id; {path} is a local path")
        return ResolvedSource(path=path)
    if is_bundled_name(source):
        if revision is not None:
            raise ValueError(f"revision={revision!r} only applies to a Hugging Face Hub id, not to {source!r}")
        return ResolvedSource(path=bundled_folder(str(source)))
    hub = hub_reference(source) if isinstance(source, str) else None
    if hub is None:
        raise FileNotFoundError(
            f"no ditsam checkpoint folder or file at {path} (a model source is a save_pretrained folder, a "
            f"checkpoint file or a Hugging Face Hub id owner/name)"
        )
    repo_id, filename = hub
    local = _from_hub(
        source,
        repo_id,
        filename,
        revision=revision,
        cache_dir=cache_dir,
        token=token,
        local_files_only=local_files_only,
        force_download=force_download,
    )
    logger.info("%s resolved to %s", source, local)
    return ResolvedSource(path=local, repo_id=repo_id, revision=revision)


def resolve_init_checkpoint(
    source: str | os.PathLike[str], *, revision: str | None = None, cache_dir: str | Path | None = None
) -> Path:
    """What ``train.init_checkpoint`` names, as a local file or folder that
    :func:`~ditsam.model.checkpoints.load_checkpoint` reads: an official SAM checkpoint by name (``sam_vit_b``,
    ``sam_vit_l``, ``sam_vit_h``: fetched into torch's hub cache, :mod:`ditsam.model.checkpoints.download`), official
    EfficientSAM by name (``efficientsam_ti``, ``efficientsam_s``: :mod:`~ditsam.model.checkpoints.efficientsam_download`), the
    authors' released DIT file by name (``dit-refcoco``, ...: the checked authors' file, which ``load_checkpoint``
    reads with the reference behaviour, :mod:`ditsam.model.checkpoints.released`), a local file or folder, or a
    Hub id (:func:`resolve_source`; ``revision`` and ``cache_dir`` apply to it).
    A local path of the same name as a SAM / EfficientSAM checkpoint or a released name wins over the name."""
    if isinstance(source, str) and not Path(source).exists():
        if is_sam_name(source):
            return fetch_sam_checkpoint(source)
        if is_efficientsam_name(source):
            return fetch_efficientsam_checkpoint(source)
        if is_released_name(source):
            return fetch_released_file(source)
    return resolve_source(source, revision=revision, cache_dir=cache_dir).path


def push_to_hub(
    model: LoadableModel,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str,
    create_pr: bool = False,
    metrics: Mapping[str, Mapping[str, object]] | None = None,
    training_data: str | Sequence[str] | None = None,
    base_model: str | None = None,
) -> str:
    """Upload ``model`` to the Hub repo ``repo_id`` as a :func:`save_pretrained` folder written to a temporary
    directory; the arguments are :meth:`DITSam.push_to_hub <ditsam.model.dit.DITSam.push_to_hub>`'s. Returns
    the URL of the commit (or pull request)."""
    import tempfile

    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision is not None and not create_pr:
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
    with tempfile.TemporaryDirectory(prefix="ditsam-push-") as folder:
        save_pretrained(
            model, folder, metrics=metrics, training_data=training_data, base_model=base_model, model_id=repo_id
        )
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            repo_type="model",
            revision=revision,
            commit_message=commit_message,
            create_pr=create_pr,
        )
    url = getattr(commit, "pr_url", None) or getattr(commit, "commit_url", None) or str(commit)
    logger.info("uploaded %s to %s", type(model).__name__, url)
    return url
