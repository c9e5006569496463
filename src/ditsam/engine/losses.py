"""Training losses: the paper's mask loss (BCE, optional Dice), SAM's multimask recipe (the best of
the masks, the IoU head on all of them) and the gRIS presence loss; :func:`training_loss` combines them as an
experiment's config asks."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ditsam.defaults import MASK_THRESHOLD
from ditsam.model.prediction import foreground

if TYPE_CHECKING:
    from ditsam.engine.config import ExperimentConfig
    from ditsam.engine.step import MicroBatch
    from ditsam.model.dit import DITSamOutput

# IoU of an empty prediction with an empty target (DESIGN 2: such a sample scores 1).
EMPTY_IOU = 1.0
# Added to the Dice numerator and denominator: an empty target with an empty prediction costs 0.
DICE_SMOOTHING = 1


def soft_dice_loss(probabilities: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice over the last axis: (..., N) x (..., N) -> (...)."""
    overlap = (probabilities * target).sum(-1)
    return 1 - (2 * overlap + DICE_SMOOTHING) / (probabilities.sum(-1) + target.sum(-1) + DICE_SMOOTHING)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, *, dice_weight: float = 0.0) -> torch.Tensor:
    """Binary cross-entropy on mask logits over the padded canvas (the paper's loss), plus
    ``dice_weight`` times a soft Dice loss: (B,1,S,S) x (B,1,S,S) -> scalar."""
    logits, target = logits.float(), target.float()
    loss = F.binary_cross_entropy_with_logits(logits, target)
    if dice_weight:
        loss = loss + dice_weight * soft_dice_loss(torch.sigmoid(logits).flatten(1), target.flatten(1)).mean()
    return loss


def per_mask_segmentation_loss(logits: torch.Tensor, target: torch.Tensor, *, dice_weight: float = 0.0) -> torch.Tensor:
    """:func:`segmentation_loss` of every mask against the sample's target: (B,M,S,S) x (B,1,S,S) -> (B,M)."""
    logits, target = logits.float().flatten(2), target.float().flatten(2).expand(-1, logits.shape[1], -1)
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(2)
    if dice_weight:
        loss = loss + dice_weight * soft_dice_loss(torch.sigmoid(logits), target)
    return loss


def mask_iou(logits: torch.Tensor, target: torch.Tensor, *, threshold: float) -> torch.Tensor:
    """IoU of every thresholded mask (the rule of :func:`~ditsam.model.prediction.foreground`) with the
    target, no gradient: (B,M,S,S) x (B,1,S,S) -> (B,M); an empty mask of an empty target scores 1."""
    with torch.no_grad():
        predicted = foreground(logits, threshold=threshold).flatten(2)
        truth = (target > 0.5).flatten(2)
        intersection = (predicted & truth).sum(2).float()
        union = (predicted | truth).sum(2).float()
        return torch.where(union > 0, intersection / union.clamp(min=1), torch.full_like(union, EMPTY_IOU))


def iou_head_loss(
    iou_predictions: torch.Tensor, logits: torch.Tensor, target: torch.Tensor, *, threshold: float
) -> torch.Tensor:
    """SAM's IoU-head loss: mean squared error of the (B,M) predicted IoUs against the actual IoU of each
    of the (B,M,S,S) masks with the (B,1,S,S) target (:func:`mask_iou`) -> scalar."""
    return F.mse_loss(iou_predictions.float(), mask_iou(logits, target, threshold=threshold))


def mask_loss(
    logits: torch.Tensor,
    iou_predictions: torch.Tensor,
    target: torch.Tensor,
    *,
    dice_weight: float = 0.0,
    iou_weight: float = 0.0,
    threshold: float = MASK_THRESHOLD,
) -> torch.Tensor:
    """The mask decoder's training loss: (B,M,S,S) logits, (B,M) predicted IoUs, (B,1,S,S) target -> scalar.

    One mask (M = 1): :func:`segmentation_loss`, bit for bit. Several (multimask output, SAM's recipe):
    per sample the smallest of the masks' losses, so only the best mask learns that target. Plus
    ``iou_weight`` times :func:`iou_head_loss` (masks thresholded at ``threshold``) when it is not 0.
    """
    if logits.shape[1] == 1:
        loss = segmentation_loss(logits, target, dice_weight=dice_weight)
    else:
        loss = per_mask_segmentation_loss(logits, target, dice_weight=dice_weight).min(dim=1).values.mean()
    if iou_weight:
        loss = loss + iou_weight * iou_head_loss(iou_predictions, logits, target, threshold=threshold)
    return loss


def presence_loss(presence_logits: torch.Tensor, no_target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the (B,) presence logits against "something is referred" (not ``no_target``)."""
    return F.binary_cross_entropy_with_logits(presence_logits.float(), (~no_target).float())


def training_loss(output: DITSamOutput, micro: MicroBatch, *, config: ExperimentConfig) -> torch.Tensor:
    """The loss a training step minimises for ``config``: :func:`mask_loss` (the IoU head trained when the model
    outputs several masks, or ``train.iou_loss_single_mask``), plus the presence loss of a gRIS model.

    No-target samples keep their (empty) mask target: the decoder learns to draw nothing."""
    train = config.train
    iou_head = config.model.multimask_output or train.iou_loss_single_mask
    loss = mask_loss(
        output.logits,
        output.iou_predictions,
        micro.masks,
        dice_weight=train.dice_weight,
        iou_weight=train.iou_loss_weight if iou_head else 0.0,
        threshold=train.threshold,
    )
    if output.presence_logits is not None:
        loss = loss + train.no_target_loss_weight * presence_loss(output.presence_logits, micro.no_target)
    return loss
