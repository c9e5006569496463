"""What :meth:`ditsam.api.Segmenter.predict` returns: one mask at the image's own size."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class SegmentationResult:
    """One prediction at the original image resolution.

    mask: bool (H, W); score: the model's predicted IoU of that mask (float); logits: float32 (H, W),
    ``sigmoid(logits) > threshold`` gives ``mask`` when something is referred. present: False when the
    sentence names nothing in the image: a model with a no-target head (generalized RIS,
    ``config.no_target_head``) says so, and ``mask`` is then empty (``logits`` stay the decoder's, for
    inspection); for a model without the head, an empty mask is its "nothing" (as GRES scoring reads it).
    presence: that head's probability that something is referred (None: the model has no such head).
    A sentence naming several objects gives one mask covering all of them.
    """

    mask: np.ndarray
    score: float
    logits: np.ndarray
    present: bool = True
    presence: float | None = None

    @property
    def area(self) -> int:
        """Foreground pixels of :attr:`mask`."""
        return int(self.mask.sum())

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """COCO box (x, y, w, h) around :attr:`mask`; (0, 0, 0, 0) for an empty mask."""
        ys = np.flatnonzero(self.mask.any(axis=1))
        xs = np.flatnonzero(self.mask.any(axis=0))
        if len(xs) == 0:
            return (0, 0, 0, 0)
        return (int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1))
