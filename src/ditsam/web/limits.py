"""Bounds on the web demo's work: how many requests may wait (Gradio's queue, see
:func:`ditsam.serve.build_app`) and how long one may take (:class:`TimeLimit`).

A Python thread cannot be stopped from outside, so a request past its limit is answered at once
while the model finishes it in the background, on the one model thread: the next request waits for
that thread within its own limit, and the model never runs two requests at a time.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
from typing import Callable, TypeVar

logger = logging.getLogger("ditsam.serve")

#: Requests that may wait for the model (beyond the one it runs); more are answered "busy".
DEFAULT_MAX_QUEUE = 16
#: Seconds one request may take, waiting for the model thread included, before it is answered with a message.
DEFAULT_REQUEST_TIMEOUT_S = 60.0

T = TypeVar("T")


class RequestTimeout(Exception):
    """A request ran past its time limit (the model may still be busy with it)."""


class TimeLimit:
    """Runs calls one at a time on a model thread of its own, each answered within ``seconds``."""

    def __init__(self, *, seconds: float) -> None:
        if not (math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"request time limit must be a positive number of seconds, got {seconds}")
        self.seconds = seconds
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ditsam-model")

    def call(self, function: Callable[[], T]) -> T:
        """``function()``'s result, or :class:`RequestTimeout` after :attr:`seconds`."""
        future = self._executor.submit(function)
        try:
            return future.result(timeout=self.seconds)
        except concurrent.futures.TimeoutError:
            started = not future.cancel()  # a call still waiting for the model thread is dropped
            logger.warning(
                "a request took more than %g s (--request-timeout) and was answered with a message%s",
                self.seconds,
                "; the model finishes it in the background" if started else "",
            )
            raise RequestTimeout(f"no answer within {self.seconds:g} s") from None
