"""Generalized RIS: does the sentence refer to anything in the image?

A sentence may name no object ("the dog" in a picture without one; gRefCOCO). :class:`PresenceHead`
reads the mask decoder's IoU token -- which has attended to every prompt token (the words) and to
the image -- and gives one logit per sentence: > 0 means something is referred. It is built only
when ``DITSamConfig.no_target_head`` is on, so other models and their checkpoints are unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from ditsam.model.sam.mask_decoder import MLP

# Layers of the head's MLP (SAM's IoU head uses 3 on the same token).
PRESENCE_HEAD_DEPTH = 2
# Probability of "something is referred" below which a sentence counts as naming nothing.
PRESENCE_THRESHOLD = 0.5


class PresenceHead(nn.Module):
    """(B, C) IoU-token output -> (B,) presence logits."""

    def __init__(self, *, embed_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.mlp = MLP(input_dim=embed_dim, hidden_dim=hidden_dim, output_dim=1, num_layers=PRESENCE_HEAD_DEPTH)

    def forward(self, iou_token: torch.Tensor) -> torch.Tensor:
        return self.mlp(iou_token).squeeze(-1)


def no_target_from_logits(presence_logits: torch.Tensor) -> torch.Tensor:
    """(B,) presence logits -> (B,) bool, True where the model says nothing is referred."""
    return torch.sigmoid(presence_logits.float()) < PRESENCE_THRESHOLD
