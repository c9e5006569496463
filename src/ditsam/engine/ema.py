"""Exponential moving average of a model's weights (used for evaluation and saved checkpoints)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """Keeps ``shadow``, a frozen copy of the model whose floating-point parameters and buffers
    follow ``shadow = decay * shadow + (1 - decay) * model`` after each optimiser step.

    Buffers are averaged too (SAM's positional-encoding matrix is a buffer, never trained, so it
    stays equal); integer buffers are copied.
    """

    def __init__(self, model: nn.Module, *, decay: float) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        current = model.state_dict()
        for name, shadow_value in self.shadow.state_dict().items():
            value = current[name].detach()
            if shadow_value.is_floating_point():
                shadow_value.lerp_(value.to(shadow_value.dtype), 1.0 - self.decay)
            else:
                shadow_value.copy_(value)
