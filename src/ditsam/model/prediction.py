"""From a :class:`~ditsam.model.dit.DITSamOutput` to a prediction: the one rule that
:class:`ditsam.api.Segmenter`, ``ditsam eval`` and the evaluation during training all apply.

- Which mask: with one mask per sentence (M = 1) mask 0; with SAM's three (``multimask_output``)
  the one with the highest predicted IoU, per sentence, as SAM does.
- The score: the predicted IoU of that mask.
- Nothing referred: a model with a no-target head says so where its presence probability is below
  :data:`~ditsam.model.presence.PRESENCE_THRESHOLD`; for a model without the head an empty mask is
  its "nothing" (as the GRES metrics read it).
- Foreground: ``sigmoid(logit) > threshold`` (strictly; the paper's threshold is
  :data:`ditsam.defaults.MASK_THRESHOLD`).

Where the threshold is applied (on the model's canvas, or after the logits are restored to the
original image) is the caller's protocol; what is thresholded, and how, is decided here.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch

from ditsam.model.presence import no_target_from_logits

if TYPE_CHECKING:
    from ditsam.model.dit import DITSamOutput


@dataclasses.dataclass
class Prediction:
    """The chosen mask of every sentence of a batch.

    logits: (B, S, S) float32 canvas logits of the chosen mask; score: (B,) float32, its predicted
    IoU; mask_index: (B,) long, which of the M masks was chosen; presence: (B,) float32 probability
    that something is referred, and no_target: (B,) bool, True where the head says nothing is
    (both None for a model without a no-target head).
    """

    logits: torch.Tensor
    score: torch.Tensor
    mask_index: torch.Tensor
    presence: torch.Tensor | None = None
    no_target: torch.Tensor | None = None


def choose_prediction(output: "DITSamOutput") -> Prediction:
    """``output`` (logits (B, M, S, S), iou_predictions (B, M), presence_logits (B,) or None) ->
    :class:`Prediction` (see the module docstring). Raises ValueError naming the field whose shape
    does not fit."""
    logits, iou, presence_logits = output.logits, output.iou_predictions, output.presence_logits
    if logits.ndim != 4:
        raise ValueError(f"logits must be (B, M, S, S), got shape {tuple(logits.shape)}")
    batch, masks = logits.shape[:2]
    if tuple(iou.shape) != (batch, masks):
        raise ValueError(
            f"iou_predictions must be ({batch}, {masks}) for logits {tuple(logits.shape)}, got {tuple(iou.shape)}"
        )
    if presence_logits is not None and tuple(presence_logits.shape) != (batch,):
        raise ValueError(f"presence_logits must be ({batch},), got {tuple(presence_logits.shape)}")
    iou = iou.float()
    best = iou.argmax(dim=1) if masks > 1 else torch.zeros(batch, dtype=torch.long, device=iou.device)
    rows = torch.arange(batch, device=logits.device)
    presence = None if presence_logits is None else torch.sigmoid(presence_logits.float())
    return Prediction(
        logits=logits[rows, best].float(),
        score=iou[rows, best],
        mask_index=best,
        presence=presence,
        no_target=None if presence_logits is None else no_target_from_logits(presence_logits),
    )


def foreground(logits: torch.Tensor, *, threshold: float) -> torch.Tensor:
    """Mask logits of any shape -> bool of the same shape: ``sigmoid(logits) > threshold``."""
    return torch.sigmoid(logits.float()) > threshold


def final_mask(logits: torch.Tensor, *, threshold: float, no_target: bool | None) -> tuple[torch.Tensor, bool]:
    """One sentence's (H, W) logits (at whatever resolution the caller scores) -> (bool (H, W) mask,
    present): the mask is empty where the no-target head flagged the sentence (``no_target`` True);
    ``no_target`` None (no head) makes an empty mask the model's "nothing"."""
    if no_target:
        return torch.zeros_like(logits, dtype=torch.bool), False
    mask = foreground(logits, threshold=threshold)
    return mask, no_target is not None or bool(mask.any())
