"""Training losses: the paper's mask loss (BCE, optional Dice) and the gRIS presence loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, *, dice_weight: float = 0.0) -> torch.Tensor:
    """Binary cross-entropy on mask logits over the padded canvas (the paper's loss), plus
    ``dice_weight`` times a soft Dice loss: (B,1,S,S) x (B,1,S,S) -> scalar."""
    logits, target = logits.float(), target.float()
    loss = F.binary_cross_entropy_with_logits(logits, target)
    if dice_weight:
        probabilities = torch.sigmoid(logits).flatten(1)
        target = target.flatten(1)
        overlap = (probabilities * target).sum(1)
        dice = 1 - (2 * overlap + 1) / (probabilities.sum(1) + target.sum(1) + 1)
        loss = loss + dice_weight * dice.mean()
    return loss


def presence_loss(presence_logits: torch.Tensor, no_target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the (B,) presence logits against "something is referred" (not ``no_target``)."""
    return F.binary_cross_entropy_with_logits(presence_logits.float(), (~no_target).float())
