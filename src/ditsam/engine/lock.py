"""One trainer per run folder: a lock file naming its holder, held with ``flock`` while training runs.

``<run>/.ditsam-train.lock`` holds ``{"host", "pid", "started"}`` of the trainer that writes the folder.
The kernel releases a ``flock`` when its process dies, however it dies, so liveness is the lock itself,
not the PID in the file (a PID can be reused): a second trainer finds the lock held and is refused with
one line naming the holder; a lock file whose process is gone is taken over, saying whose it was.
A lock on a network file system holds as far as its ``flock`` does (NFSv4: across machines).
"""

from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import socket
from pathlib import Path

logger = logging.getLogger(__name__)

LOCK_FILE = ".ditsam-train.lock"


class RunFolderLockedError(ValueError):
    """Another live trainer writes this run folder. A ``ValueError``, so the command line prints one line."""


def _holder(text: str) -> str:
    """``PID 123 on host h (since ...)`` from a lock file's text, or what the text is when it is not ours."""
    try:
        record = json.loads(text)
        return f"PID {record['pid']} on host {record['host']} (since {record['started']})"
    except (ValueError, KeyError, TypeError):
        return "an unknown process (the lock file does not name it)"


class RunFolderLock:
    """The lock of the run folder ``run_dir``, taken by :meth:`acquire` and given back by :meth:`release`
    (or when the process ends)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._handle: int | None = None

    @property
    def held(self) -> bool:
        return self._handle is not None

    def acquire(self) -> None:
        """Take the lock. Raises :class:`RunFolderLockedError` naming the holder when a live process holds it;
        a lock file left by a process that is gone is taken over (logged)."""
        while True:
            handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                text = os.pread(handle, 4096, 0).decode("utf-8", "replace")
                os.close(handle)
                raise RunFolderLockedError(
                    f"run folder {self.path.parent} is in use by another trainer, {_holder(text)} (lock file "
                    f"{self.path}): wait for it to end or stop it, or train into another --run-dir"
                ) from None
            # The holder we waited on may have removed the file as it released it: lock the file that is there.
            if os.path.exists(self.path) and os.stat(self.path).st_ino == os.fstat(handle).st_ino:
                break
            os.close(handle)
        previous = os.pread(handle, 4096, 0).decode("utf-8", "replace").strip()
        if previous:
            logger.warning(
                "run folder %s: took over the lock left by %s, which is no longer running",
                self.path.parent,
                _holder(previous),
            )
        record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        os.ftruncate(handle, 0)
        os.pwrite(handle, json.dumps(record).encode("utf-8"), 0)
        self._handle = handle

    def release(self) -> None:
        """Give the lock back and remove the file (a clean end leaves nothing to take over)."""
        if self._handle is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._handle)
            self._handle = None
