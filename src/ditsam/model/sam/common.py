"""Small building blocks shared by SAM's encoder and decoder (parameter names as in SAM)."""

from __future__ import annotations

import torch
from torch import nn


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a (B, C, H, W) tensor."""

    def __init__(self, num_channels: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class MLPBlock(nn.Module):
    """Two-layer MLP with an activation in between: (..., dim) -> (..., dim)."""

    def __init__(self, *, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


def padding_to_additive_mask(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Turn a boolean key mask (B, K), True = attend, into an additive mask (B, 1, 1, K).

    Masked keys get the dtype's most negative finite value rather than -inf so that a row whose
    keys are all masked yields a uniform softmax instead of NaN.
    """
    additive = torch.zeros(keep.shape, dtype=dtype, device=keep.device)
    additive = additive.masked_fill(~keep, torch.finfo(dtype).min)
    return additive[:, None, None, :]
