"""Exponential moving average of a model's weights (used for evaluation and saved checkpoints)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """Keeps ``shadow``, a frozen copy of the model whose floating-point parameters and buffers
    follow ``shadow = decay * shadow + (1 - decay) * model`` after each optimiser step.

    Buffers are averaged too (SAM's positional-encoding matrix is a buffer, never trained, so it
    stays equal); integer buffers are copied. With ``warmup`` the decay used at update ``n`` is
    ``min(decay, (1 + n) / (10 + n))``, so that short runs are not dominated by the initial weights
    (0.9997 is reached after ~30k updates; the reference code uses the fixed decay: warmup=False).
    """

    def __init__(self, model: nn.Module, *, decay: float, warmup: bool = True) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.updates = 0
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    @property
    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay
        self.updates += 1
        current = model.state_dict()
        shadows, values = [], []
        for name, shadow_value in self.shadow.state_dict().items():
            value = current[name].detach()
            if shadow_value.is_floating_point():
                shadows.append(shadow_value)
                values.append(value.to(shadow_value.dtype))
            else:
                shadow_value.copy_(value)
        if shadows:
            # One multi-tensor kernel per device and dtype on a GPU instead of one small kernel per tensor.
            torch._foreach_lerp_(shadows, values, 1.0 - decay)
