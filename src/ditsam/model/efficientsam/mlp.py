"""EfficientSAM's MLP: hidden layers each followed by the activation, then a linear output layer."""

from __future__ import annotations

import torch
from torch import nn


class ActivatedMLP(nn.Module):
    """``num_layers`` (Linear, activation) pairs to ``hidden_dim``, then ``fc`` to ``output_dim``:
    (..., input_dim) -> (..., output_dim). The names (``layers.i.0``, ``fc``) are EfficientSAM's ``MLPBlock``'s."""

    def __init__(
        self, *, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int, act: type[nn.Module] = nn.GELU
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"an ActivatedMLP needs num_layers >= 1, got {num_layers}")
        widths = [input_dim] + [hidden_dim] * num_layers
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(n_in, n_out), act()) for n_in, n_out in zip(widths[:-1], widths[1:], strict=True)
        )
        self.fc = nn.Linear(hidden_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.fc(x)
