"""How text enters SAM's ViT: one small class per DIT variant.

Each class implements :class:`~ditsam.model.sam.text_hooks.TextInjection`, the three hooks the
image encoder calls (``initial_tokens``, ``enter_block``, ``leave_block``; shapes there).
:data:`INJECTIONS` at the end maps every ``config.injection`` name to its builder;
:func:`build_injection` looks it up. Adding a variant: a class here, an entry in :data:`INJECTIONS`,
its name in :data:`~ditsam.model.config.Injection` (a test checks the two agree).

Variants (paper names):

- :class:`NoInjection`: SAM's default; text only reaches the decoder. ``T = 0``.
- :class:`EndToEndInjection` (E-DIT): ``F_t W_0 + b_0`` enters before block 0 and runs through every
  block; with ``refine_per_layer`` (frozen backbone) a linear map refreshes the text tokens before
  each later block.
- :class:`LayerwiseInjection` (L-DIT): before every block the text positions are *replaced* by
  ``F_t W_i + b_i`` (zero-initialised, dropout), discarding what the previous block wrote there.
- :class:`CrossAttentionInjection` (Table 3): after every block the image tokens cross-attend to the
  projected text (optionally followed by an FFN), through a zero-initialised residual branch.

Both token variants can append ``static_tokens`` learnable tokens after the text (Table 2,
"dynamic + static"); they are carried through the blocks, never replaced. The variants' knobs are
:class:`~ditsam.model.config.InjectionConfig` (``config.injection_options``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ditsam.model.config import DITSamConfig
from ditsam.model.sam.common import MLPBlock, padding_to_additive_mask
from ditsam.model.sam.text_hooks import NoInjection, TextInjection

__all__ = [
    "INJECTIONS",
    "CrossAttentionInjection",
    "EndToEndInjection",
    "LayerwiseInjection",
    "TokenInjection",
    "build_injection",
]


class ProjectText(nn.Module):
    """Writes ``dropout(F_t W + b)`` at the text positions, ignoring what was there: (B,L,D) -> (B,L,C).
    (Dropout after the projection, as the reference code does.)"""

    def __init__(self, *, text_dim: int, embed_dim: int, dropout: float = 0.0, zero_init: bool = False) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(text_dim, embed_dim)
        if zero_init:
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    def forward(self, tokens: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(features))


class KeepText(nn.Module):
    """Leaves the text tokens as the previous block wrote them."""

    def forward(self, tokens: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return tokens


class RefineText(nn.Module):
    """Linear map of the text tokens between frozen blocks, initialised to the identity: (B,L,C) -> (B,L,C)."""

    def __init__(self, *, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(embed_dim, embed_dim)
        nn.init.eye_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, tokens: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.proj(tokens)


class TokenInjection(NoInjection):
    """Text as extra tokens in front of the image tokens; ``writers[i]`` sets them before block ``i``."""

    def __init__(self, *, writers: list[nn.Module], embed_dim: int, static_tokens: int = 0) -> None:
        super().__init__()
        self.writers = nn.ModuleList(writers)
        self.static_tokens = nn.Parameter(torch.randn(static_tokens, embed_dim) * 0.02)
        self.embed_dim = embed_dim

    def initial_tokens(
        self, features: torch.Tensor, mask: torch.Tensor, *, embed_dim: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, length = features.shape[:2]
        static = self.static_tokens.to(features.dtype).expand(batch, -1, -1)
        tokens = torch.cat([static.new_zeros(batch, length, self.embed_dim), static], dim=1)
        keep = torch.cat([mask, mask.new_ones(batch, static.shape[1])], dim=1)
        return tokens, padding_to_additive_mask(keep, features.dtype)

    def enter_block(self, index: int, tokens: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        length = features.shape[1]
        text = self.writers[index](tokens[:, :length], features)
        return torch.cat([text.to(tokens.dtype), tokens[:, length:]], dim=1)


class EndToEndInjection(TokenInjection):
    """E-DIT: one projection before block 0; the ViT carries the text tokens from there."""

    def __init__(
        self, *, text_dim: int, embed_dim: int, depth: int, static_tokens: int = 0, refine_per_layer: bool = False
    ) -> None:
        later: list[nn.Module] = [
            RefineText(embed_dim=embed_dim) if refine_per_layer else KeepText() for _ in range(depth - 1)
        ]
        super().__init__(
            writers=[ProjectText(text_dim=text_dim, embed_dim=embed_dim), *later],
            embed_dim=embed_dim,
            static_tokens=static_tokens,
        )


class LayerwiseInjection(TokenInjection):
    """L-DIT: a fresh, separately learned projection of the text replaces the text tokens before each block."""

    def __init__(
        self,
        *,
        text_dim: int,
        embed_dim: int,
        depth: int,
        static_tokens: int = 0,
        dropout: float = 0.1,
        zero_init: bool = True,
    ) -> None:
        super().__init__(
            writers=[
                ProjectText(text_dim=text_dim, embed_dim=embed_dim, dropout=dropout, zero_init=zero_init)
                for _ in range(depth)
            ],
            embed_dim=embed_dim,
            static_tokens=static_tokens,
        )


class ResidualFFN(nn.Module):
    """x + MLP(LayerNorm(x)) with a zero-initialised last layer: (..., C) -> (..., C)."""

    def __init__(self, *, embed_dim: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.mlp = MLPBlock(embedding_dim=embed_dim, mlp_dim=int(embed_dim * mlp_ratio))
        nn.init.zeros_(self.mlp.lin2.weight)
        nn.init.zeros_(self.mlp.lin2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


class TextCrossAttention(nn.Module):
    """Image tokens attend to projected text, then an optional FFN; zero-initialised outputs so that
    training starts from SAM's encoder. (B,H,W,C) x (B,L,D) -> (B,H,W,C)."""

    def __init__(self, *, text_dim: int, embed_dim: int, num_heads: int, with_ffn: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.kv_proj = nn.Linear(text_dim, 2 * embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)
        self.ffn: nn.Module = ResidualFFN(embed_dim=embed_dim) if with_ffn else nn.Identity()

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], self.num_heads, -1).transpose(1, 2)

    def forward(self, image: torch.Tensor, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, height, width, dim = image.shape
        flat = image.reshape(batch, height * width, dim)
        q = self._split_heads(self.q_proj(self.norm(flat)))
        k, v = (self._split_heads(t) for t in self.kv_proj(features.to(flat.dtype)).chunk(2, dim=-1))
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=padding_to_additive_mask(mask, q.dtype))
        flat = flat + self.out_proj(attended.transpose(1, 2).reshape(batch, height * width, dim))
        return self.ffn(flat).reshape(batch, height, width, dim)


class CrossAttentionInjection(NoInjection):
    """Table 3 "CrossAtt" / "CrossAtt+FFN": text fused into the image tokens after every block."""

    def __init__(self, *, text_dim: int, embed_dim: int, depth: int, num_heads: int, with_ffn: bool = False) -> None:
        super().__init__()
        self.fusers = nn.ModuleList(
            TextCrossAttention(text_dim=text_dim, embed_dim=embed_dim, num_heads=num_heads, with_ffn=with_ffn)
            for _ in range(depth)
        )

    def leave_block(self, index: int, image: torch.Tensor, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.fusers[index](image, features, mask)


# ---------------------------------------------------------------------------------------------------
# Registry: config.injection -> builder(config, text_dim=D)
# ---------------------------------------------------------------------------------------------------
InjectionBuilder = Callable[..., TextInjection]


def _no_injection(config: DITSamConfig, *, text_dim: int) -> NoInjection:
    return NoInjection()


def _end_to_end(config: DITSamConfig, *, text_dim: int) -> EndToEndInjection:
    options, size = config.injection_options, config.size
    refine = config.freeze_image_encoder if options.refine_text_per_layer is None else options.refine_text_per_layer
    return EndToEndInjection(
        text_dim=text_dim,
        embed_dim=size.embed_dim,
        depth=size.depth,
        static_tokens=options.static_tokens,
        refine_per_layer=refine,
    )


def _layerwise(config: DITSamConfig, *, text_dim: int) -> LayerwiseInjection:
    options, size = config.injection_options, config.size
    return LayerwiseInjection(
        text_dim=text_dim,
        embed_dim=size.embed_dim,
        depth=size.depth,
        static_tokens=options.static_tokens,
        dropout=options.dropout,
        zero_init=options.zero_init,
    )


def _cross_attention(config: DITSamConfig, *, text_dim: int, with_ffn: bool) -> CrossAttentionInjection:
    size = config.size
    return CrossAttentionInjection(
        text_dim=text_dim,
        embed_dim=size.embed_dim,
        depth=size.depth,
        num_heads=size.num_heads,
        with_ffn=with_ffn,
    )


#: Every variant by its ``config.injection`` name (the keys equal :data:`~ditsam.model.config.Injection`).
INJECTIONS: dict[str, InjectionBuilder] = {
    "none": _no_injection,
    "e2e": _end_to_end,
    "layerwise": _layerwise,
    "crossattn": functools.partial(_cross_attention, with_ffn=False),
    "crossattn_ffn": functools.partial(_cross_attention, with_ffn=True),
}


def build_injection(config: DITSamConfig, *, text_dim: int) -> TextInjection:
    """The injection module ``config.injection`` names, built for text features of width ``text_dim``."""
    try:
        builder = INJECTIONS[config.injection]
    except KeyError:
        raise ValueError(f"unknown injection {config.injection!r}; known: {', '.join(INJECTIONS)}") from None
    return builder(config, text_dim=text_dim)
