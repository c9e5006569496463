"""Stopping a training run cleanly when a scheduler preempts it.

SLURM, Kubernetes and most schedulers stop a job with SIGTERM (SLURM's ``--signal`` can send SIGUSR1 some
time before the end); Ctrl-C is SIGINT. While :class:`StopSignals` is active the first of these only sets
a flag: the trainer finishes the optimiser step it is in, all processes agree to stop after the same step,
``checkpoints/last`` is written (atomically), and :class:`TrainingStopped` ends the run; the command exits
with :data:`PREEMPTED_EXIT_STATUS`, on which a job script can requeue, and ``--resume`` continues to the
same weights as an uninterrupted run. A second stop signal acts as it would without us
(SIGINT: KeyboardInterrupt; SIGTERM: the process ends at once).
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)

#: The exit status of a run stopped by a signal after writing its checkpoint: EX_TEMPFAIL of sysexits.h,
#: "try again later" -- requeue and continue with --resume.
PREEMPTED_EXIT_STATUS = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
#: Test hook: seconds to sleep after every optimiser step, so that a test can signal a run before it ends.
#: Unset (the normal case): no pause.
PAUSE_PER_STEP_ENV = "DITSAM_TEST_PAUSE_PER_STEP"


class TrainingStopped(Exception):
    """Training stopped at a signal; ``checkpoints/last`` holds the step it stopped after."""


class StopSignals:
    """While entered (``with StopSignals() as stop``, or between :meth:`install` and :meth:`restore`), a stop signal sets :attr:`received` instead of ending
    the process. Outside the main thread, where Python cannot install handlers, it does nothing."""

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        self.install()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.restore()

    def install(self) -> None:
        """Catch the stop signals from now on (in the main thread; elsewhere Python cannot)."""
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)

    def restore(self) -> None:
        """Put the handlers that were there before back."""
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self.received is not None:
            self.restore()
            signal.raise_signal(number)
            return
        self.received = signal.Signals(number)
        logger.warning(
            "%s received: finishing this step, writing checkpoints/last, then stopping (a second signal stops at once)",
            self.received.name,
        )
