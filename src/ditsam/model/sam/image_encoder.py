"""SAM's ViT image encoder, able to carry text tokens through its blocks (DIT).

Parameter names match the official ``image_encoder.*`` keys of the SAM checkpoints. Text enters
through a :class:`~ditsam.model.sam.text_hooks.TextInjection` owned by the encoder: it decides which text
tokens sit in front of the image tokens before each block and may fuse text into the image
tokens after each block. With the default :class:`~ditsam.model.sam.text_hooks.NoInjection` the encoder
is exactly SAM's.

Attention: each block is either windowed (SAM's local windows) or global. Text tokens attend
jointly with image tokens; the decomposed relative-position bias (:mod:`~ditsam.model.sam.position`) only
applies between image tokens, and text padding never receives attention (see :class:`Attention` for how both
are folded into the attention heads). In a windowed block every window sees all text tokens, and a text
token's output is the mean of its outputs over the windows.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ditsam.model.sam.common import LayerNorm2d, MLPBlock
from ditsam.model.sam.position import (
    fold_last_column,
    relative_position_key_terms,
    relative_position_query_terms,
    resize_absolute_position_embedding,
    sincos_position_embedding,
)
from ditsam.model.sam.text_hooks import NoInjection, TextInjection

TextPadding = Literal["folded", "mask"]
TEXT_PADDING_MODES: tuple[str, ...] = ("folded", "mask")
# Logit given to text [PAD] keys by the folded form: exp(-2048) is exactly 0 in every float format (so
# the padding gets exactly zero weight, as with a -inf mask), and the key factor 2048 * sqrt(head_dim)
# stays finite in float16 (max 65504) for head widths up to 256.
PADDING_LOGIT = 2048.0
# SDPA kernels want head widths in multiples of 8.
HEAD_WIDTH_MULTIPLE = 8


class Attention(nn.Module):
    """Multi-head attention over [text tokens; image tokens] with a relative-position bias on image pairs.

    Implementation (exact up to float rounding; fp32 agrees with the explicit-mask form to ~1e-6): the
    decomposed bias is a sum of two per-axis terms, so it is a dot product and is folded into the
    attention logits by widening the heads instead of being materialised as a (B, heads, L, L) mask:

        q' = [q, t_q, 1, 0],  k' = [k, t_k / scale, p / scale, 0],  v' = [v, 0, 0, 0],
        out = softmax(scale q' k'^T) v'

    with ``t_q`` the h + w - 1 per-query factors of :func:`relative_position_query_terms` reduced by
    :func:`fold_last_column` (zeros for text queries), ``t_k`` the constant one-hot key rows without the
    last column's one-hot (zeros for text keys), and ``p`` = -:data:`PADDING_LOGIT` for text [PAD] keys,
    0 for every other key: the text padding costs no mask and no extra width (the slot the redundant
    one-hot freed). The head width is zero-padded to a multiple of 8: 64 + 64 = 128 for ViT-B's 32x32
    global grid (~1.5x the attention FLOPs of 64), 64 + 28 + 4 = 96 in 14x14 windows. ``attn_mask`` is
    ``None`` in every call, so on a GPU the flash kernel is eligible (bf16 / fp16, head width <= 256)
    with or without text padding; no O(L^2) tensor is built (on the CPU the old explicit mask cost more
    than the attention itself: ~50 MB per block and call for ViT-B at 512).

    ``text_padding="mask"`` keeps the earlier form for comparison (the GPU suite measures both): the
    padding as a (B, 1, 1, L) additive key mask that SDPA broadcasts, which on a GPU selects the
    memory-efficient kernel instead of flash. Without the relative-position bias (``use_rel_pos=False``)
    the mask form is always used (no spare slot in the heads).
    """

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
        rel_pos_grid: tuple[int, int] | None = None,
        text_padding: TextPadding = "folded",
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        self.text_padding = check_text_padding(text_padding)
        if use_rel_pos:
            if rel_pos_grid is None:
                raise ValueError("rel_pos_grid is required when use_rel_pos is True")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_pos_grid[0] - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_pos_grid[1] - 1, self.head_dim))

    def forward(
        self, x: torch.Tensor, *, num_text: int, grid: tuple[int, int], text_bias: torch.Tensor
    ) -> torch.Tensor:
        """x: (B, T + h*w, C), the first ``num_text`` tokens being text; text_bias: (B, 1, 1, T)
        additive key mask (0 = attend, negative = padding). Returns (B, T + h*w, C)."""
        batch, length, dim = x.shape
        out = self._attend(self.qkv(x), num_text=num_text, grid=grid, text_bias=text_bias)
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))

    def forward_windows(
        self, text: torch.Tensor, windows: torch.Tensor, *, grid: tuple[int, int], text_bias: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Windowed attention where every window also sees all text tokens.

        text: (B, T, C); windows: (B * nW, h*w, C); text_bias: (B, 1, 1, T). Returns the text tokens
        (B, T, C), each the mean of its outputs over the windows, and the windows (B * nW, h*w, C).
        Same result as :meth:`forward` on ``[text repeated per window; window]`` followed by the mean,
        but the text's qkv and output projections run once per image instead of once per window
        (the projection is affine, so it commutes with the mean).
        """
        batch, num_text, dim = text.shape
        num_windows, window_tokens = windows.shape[:2]
        per_image = num_windows // batch
        qkv = self.qkv(windows)
        if num_text:
            qkv = torch.cat([self.qkv(text).repeat_interleave(per_image, dim=0), qkv], dim=1)
            text_bias = text_bias.expand(batch, per_image, 1, num_text).reshape(num_windows, 1, 1, num_text)
        out = self._attend(qkv, num_text=num_text, grid=grid, text_bias=text_bias)
        out = out.transpose(1, 2).reshape(num_windows, num_text + window_tokens, dim)
        text = self.proj(out[:, :num_text].reshape(batch, per_image, num_text, dim).mean(dim=1))
        return text, self.proj(out[:, num_text:])

    def _attend(
        self, qkv: torch.Tensor, *, num_text: int, grid: tuple[int, int], text_bias: torch.Tensor
    ) -> torch.Tensor:
        """qkv: (B, L, 3C) -> attention output (B, heads, L, head_dim)."""
        batch, length = qkv.shape[:2]
        q, k, v = qkv.reshape(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        folded = self.use_rel_pos and self.text_padding == "folded"
        # Mask form: a (B, 1, 1, L) key mask, broadcast by SDPA over heads and queries.
        mask = F.pad(text_bias.to(q.dtype), (0, length - num_text)) if num_text and not folded else None
        if not self.use_rel_pos:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        scale = self.head_dim**-0.5
        query_terms = relative_position_query_terms(q[:, :, num_text:], self.rel_pos_h, self.rel_pos_w, grid)
        # SDPA multiplies every logit by ``scale``: the key factors carry 1 / scale (8 for ViT heads of 64).
        key_terms = relative_position_key_terms(grid, dtype=k.dtype, device=k.device) / scale
        if folded:
            # The last column's one-hot is redundant (fold_last_column): its slot carries the padding.
            query_terms = F.pad(fold_last_column(query_terms, grid[0]), (0, 1), value=1.0)
            key_terms = F.pad(key_terms[:, :-1], (0, 1))
        text_queries = q.new_zeros(num_text, query_terms.shape[-1])
        text_keys = k.new_zeros(batch, num_text, key_terms.shape[-1])
        if folded:
            # A 1 in every query (text ones too), -PADDING_LOGIT / scale in the text [PAD] keys.
            text_queries[:, -1] = 1.0
            text_keys[:, :, -1] = (text_bias.reshape(batch, num_text) < 0).to(k.dtype) * (-PADDING_LOGIT / scale)
        pad = -(self.head_dim + key_terms.shape[-1]) % HEAD_WIDTH_MULTIPLE
        query_terms = torch.cat([text_queries.expand(batch, self.num_heads, -1, -1), query_terms], dim=2)
        key_terms = torch.cat([text_keys, key_terms.expand(batch, -1, -1)], dim=1)
        q = torch.cat([q, F.pad(query_terms, (0, pad))], dim=-1)
        k = torch.cat([k, F.pad(key_terms, (0, pad))[:, None].expand(-1, self.num_heads, -1, -1)], dim=-1)
        v = F.pad(v, (0, q.shape[-1] - self.head_dim))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        return out[..., : self.head_dim]


def check_text_padding(mode: str) -> str:
    """``mode`` if it is one of :data:`TEXT_PADDING_MODES`, else a ValueError naming it."""
    if mode not in TEXT_PADDING_MODES:
        raise ValueError(f"text_padding must be one of {', '.join(TEXT_PADDING_MODES)}, got {mode!r}")
    return mode


def set_text_padding(module: nn.Module, mode: TextPadding) -> None:
    """Switch every :class:`Attention` inside ``module`` to ``mode`` ("folded" or "mask"; see
    :class:`Attention`). A run-time choice of implementation, not part of a model's config: both
    give the same outputs (fp32 to ~1e-6)."""
    check_text_padding(mode)
    for child in module.modules():
        if isinstance(child, Attention):
            child.text_padding = mode


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * nW, ws, ws, C) windows, zero-padding H, W up to multiples of ws."""
    batch, height, width, channels = x.shape
    pad_h = (window_size - height % window_size) % window_size
    pad_w = (window_size - width % window_size) % window_size
    x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    padded_h, padded_w = height + pad_h, width + pad_w
    x = x.view(batch, padded_h // window_size, window_size, padded_w // window_size, window_size, channels)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, channels)
    return windows, (padded_h, padded_w)


def window_unpartition(
    windows: torch.Tensor, window_size: int, padded_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * nW, ws, ws, C) -> (B, H, W, C)."""
    padded_h, padded_w = padded_hw
    batch = windows.shape[0] // ((padded_h // window_size) * (padded_w // window_size))
    x = windows.view(batch, padded_h // window_size, padded_w // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, padded_h, padded_w, -1)
    return x[:, : hw[0], : hw[1]]


class Block(nn.Module):
    """Pre-norm transformer block over text + image tokens, windowed (window_size > 0) or global."""

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 0,
        grid: tuple[int, int],
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(
            dim=dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            use_rel_pos=use_rel_pos,
            rel_pos_grid=grid if window_size == 0 else (window_size, window_size),
        )
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(embedding_dim=dim, mlp_dim=int(dim * mlp_ratio))
        self.window_size = window_size

    def forward(
        self, x: torch.Tensor, text: torch.Tensor, text_bias: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, H, W, C) image tokens; text: (B, T, C); text_bias: (B, 1, 1, T).
        Returns the updated (x, text)."""
        batch, height, width, dim = x.shape
        num_text = text.shape[1]
        if self.window_size > 0:
            windows, padded_hw = window_partition(self.norm1(x), self.window_size)
            grid = (self.window_size, self.window_size)
            attended_text, windows = self.attn.forward_windows(
                self.norm1(text), windows.reshape(windows.shape[0], -1, dim), grid=grid, text_bias=text_bias
            )
            windows = windows.reshape(-1, self.window_size, self.window_size, dim)
            x = x + window_unpartition(windows, self.window_size, padded_hw, (height, width))
            text = text + attended_text
            return x + self.mlp(self.norm2(x)), text + self.mlp(self.norm2(text))
        # Global: one sequence [text; image] through attention and MLP (per-token ops are unchanged).
        tokens = x.reshape(batch, height * width, dim)
        if num_text:
            tokens = torch.cat([text, tokens], dim=1)
        # Out-of-place residual adds: under autocast the branches are bf16 and the stream stays fp32.
        tokens = tokens + self.attn(self.norm1(tokens), num_text=num_text, grid=(height, width), text_bias=text_bias)
        tokens = tokens + self.mlp(self.norm2(tokens))
        return tokens[:, num_text:].reshape(batch, height, width, dim), tokens[:, :num_text]


class PatchEmbed(nn.Module):
    """(B, 3, H, W) -> (B, H/p, W/p, C) by a strided convolution."""

    def __init__(self, *, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class ImageEncoderViT(nn.Module):
    """SAM's ViT with optional text tokens.

    forward(images (B, 3, S, S), text_features (B, L, D) | None, text_mask (B, L) bool | None)
    -> image embeddings (B, out_chans, S/p, S/p).
    """

    def __init__(
        self,
        *,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 0,
        global_attn_indexes: tuple[int, ...] = (),
        injection: TextInjection | None = None,
        pos_embed_init: str = "zeros",
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} must be a multiple of patch_size {patch_size}")
        self.img_size = img_size
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.patch_embed = PatchEmbed(patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        # SAM's checkpoints overwrite a zero init; a model trained from scratch needs positions from the start.
        if pos_embed_init not in ("zeros", "sincos"):
            raise ValueError(f"pos_embed_init must be 'zeros' or 'sincos', got {pos_embed_init!r}")
        initial = (
            sincos_position_embedding(self.grid, embed_dim)
            if pos_embed_init == "sincos"
            else torch.zeros(1, *self.grid, embed_dim)
        )
        self.pos_embed = nn.Parameter(initial)
        self.blocks = nn.ModuleList(
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                use_rel_pos=use_rel_pos,
                window_size=0 if i in global_attn_indexes else window_size,
                grid=self.grid,
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )
        self.injection = injection if injection is not None else NoInjection()
        self.gradient_checkpointing = False

    def forward(
        self, images: torch.Tensor, text_features: torch.Tensor | None = None, text_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = self.patch_embed(images)
        x = x + resize_absolute_position_embedding(self.pos_embed, tuple(x.shape[1:3]))
        if text_features is None:
            text_features = x.new_zeros(x.shape[0], 0, 1)
            text_mask = torch.ones(x.shape[0], 0, dtype=torch.bool, device=x.device)
        elif text_mask is None:
            text_mask = torch.ones(text_features.shape[:2], dtype=torch.bool, device=x.device)
        text, text_bias = self.injection.initial_tokens(text_features.to(x.dtype), text_mask, embed_dim=x.shape[-1])
        text_bias = text_bias.to(x.dtype)
        for index, block in enumerate(self.blocks):
            text = self.injection.enter_block(index, text, text_features)
            if self.gradient_checkpointing and self.training:
                x, text = checkpoint(block, x, text, text_bias, use_reentrant=False)
            else:
                x, text = block(x, text, text_bias)
            x = self.injection.leave_block(index, x, text_features, text_mask)
        return self.neck(x.permute(0, 3, 1, 2))
