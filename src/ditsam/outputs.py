"""Output folders and files that survive mistakes, kills and full disks.

Every command that writes results goes through these helpers, so that they all behave alike:

- :func:`prepare_output_folder`: the folder is created, proven writable with a probe file (a
  read-only folder, or a path that is a file, fails here with one sentence instead of a traceback
  later), and a folder that already holds earlier results is refused unless the user says whether
  to continue (``resume``) or to replace them (``overwrite``; :func:`remove_outputs` then deletes
  the command's own outputs and nothing else).
- :func:`write_text_atomically`: a file is written beside its target and renamed over it, so a
  kill leaves the old file or the new one, never half of one.
- :func:`describe_write_failure`: what to tell the user when a write fails, above all when the disk
  is full (``ENOSPC`` / ``EDQUOT``).

Nothing here imports torch: the command line uses it before any model is loaded.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Iterable

#: errno values that mean "no room left": the disk or the user's quota is full.
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_PROBE_NAME = ".ditsam-write-test"


class OutputFolderError(ValueError):
    """An output folder cannot be used: not writable, a file, or holding results not to be lost.

    A ``ValueError`` subclass, so the command line reports it as one line.
    """


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` is an OSError saying the disk (or quota) is full."""
    return isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS


def describe_write_failure(error: OSError, folder: Path) -> str:
    """A sentence on why writing into ``folder`` failed: the disk is full, or the OS's own reason."""
    if is_disk_full(error):
        return f"the disk holding {folder} is full ({error.strerror or 'no space left on device'})"
    return f"cannot write into {folder}: {error.strerror or error}"


def ensure_writable_folder(folder: str | os.PathLike, *, what: str) -> Path:
    """Create ``folder`` (and its parents) and prove it writable with a probe file.

    ``what`` names the folder in messages (``"--out"``, ``"run folder"``). Raises
    :class:`OutputFolderError` naming the folder when it is a file, cannot be created or is not
    writable (read-only file system, permissions, full disk).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"{what} {folder} is a file, not a folder: give a folder to write into")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / _PROBE_NAME
        probe.write_text("ok", encoding="utf-8")
        probe.unlink()
    except OSError as error:
        raise OutputFolderError(f"{what} {folder} is not writable: {describe_write_failure(error, folder)}") from error
    return folder


def refuse_earlier_results(
    folder: Path,
    *,
    what: str,
    holds_results: Iterable[str],
    resume: bool = False,
    overwrite: bool = False,
    resume_flag: str | None = "--resume",
) -> None:
    """Raise :class:`OutputFolderError` when ``folder`` holds earlier results and the user said
    neither ``resume`` nor ``overwrite``.

    ``holds_results``: names (relative to ``folder``) whose presence means earlier results are
    there. ``resume_flag``: the flag to suggest for continuing (None when the command cannot
    continue). Deleting for ``overwrite`` is the caller's job: only it knows which files it owns.
    """
    if resume and overwrite:
        raise OutputFolderError(f"give {resume_flag or '--resume'} or --overwrite, not both")
    found = sorted(name for name in holds_results if (folder / name).exists())
    if found and not resume and not overwrite:
        choices = f"pass {resume_flag} to continue it, " if resume_flag else "pass "
        raise OutputFolderError(
            f"{what} {folder} already holds results of an earlier run ({', '.join(found)}): {choices}"
            f"--overwrite to replace them, or choose another folder"
        )


def prepare_output_folder(
    folder: str | os.PathLike,
    *,
    what: str,
    holds_results: Iterable[str],
    resume: bool = False,
    overwrite: bool = False,
    resume_flag: str | None = "--resume",
) -> Path:
    """:func:`ensure_writable_folder`, then :func:`refuse_earlier_results`; returns the folder."""
    folder = ensure_writable_folder(folder, what=what)
    refuse_earlier_results(
        folder, what=what, holds_results=holds_results, resume=resume, overwrite=overwrite, resume_flag=resume_flag
    )
    return folder


def remove_outputs(folder: Path, names: Iterable[str]) -> list[str]:
    """Delete the outputs ``names`` (files or folders, relative to ``folder``) for ``--overwrite``;
    anything else in ``folder`` stays. Returns the names removed."""
    removed = []
    for name in names:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file renamed over it: a kill or a full disk
    leaves the previous file (or none) whole, never a truncated one. Raises OSError as ``open`` does."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
