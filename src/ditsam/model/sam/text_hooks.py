"""The interface between SAM's image encoder and a text injection, and the injection that does nothing.

:class:`~ditsam.model.sam.image_encoder.ImageEncoderViT` calls three hooks of its injection module
(``B`` batch, ``L`` text length, ``D`` text width, ``T`` text tokens in the ViT, ``C`` ViT width):

- ``initial_tokens(features (B,L,D), mask (B,L), embed_dim=C)`` -> text tokens (B,T,C) placed before
  the image tokens, and their additive key mask (B,1,1,T);
- ``enter_block(i, tokens (B,T,C), features)`` -> the text tokens block ``i`` sees;
- ``leave_block(i, image (B,H,W,C), features, mask)`` -> image tokens after block ``i``.

The variants live in :mod:`ditsam.model.inject`; this module sits below both, so the encoder needs
nothing from above ``model/sam``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class TextInjection(Protocol):
    """What the image encoder calls; every injection is also an ``nn.Module`` (its parameters train)."""

    def initial_tokens(
        self, features: torch.Tensor, mask: torch.Tensor, *, embed_dim: int
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def enter_block(self, index: int, tokens: torch.Tensor, features: torch.Tensor) -> torch.Tensor: ...

    def leave_block(
        self, index: int, image: torch.Tensor, features: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor: ...


class NoInjection(nn.Module):
    """No text in the image encoder: no tokens (``T = 0``), blocks untouched -- SAM's encoder exactly."""

    def initial_tokens(
        self, features: torch.Tensor, mask: torch.Tensor, *, embed_dim: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch = features.shape[0]
        return features.new_zeros(batch, 0, embed_dim), features.new_zeros(batch, 1, 1, 0)

    def enter_block(self, index: int, tokens: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return tokens

    def leave_block(self, index: int, image: torch.Tensor, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return image
