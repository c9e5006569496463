"""SAM's ViT image encoder, able to carry text tokens through its blocks (DIT).

Parameter names match the official ``image_encoder.*`` keys of the SAM checkpoints. Text enters
through a :class:`~ditsam.model.inject.TextInjection` owned by the encoder: it decides which text
tokens sit in front of the image tokens before each block and may fuse text into the image
tokens after each block. With the default :class:`~ditsam.model.inject.NoInjection` the encoder
is exactly SAM's.

Attention: each block is either windowed (SAM's local windows) or global. Text tokens attend
jointly with image tokens; the decomposed relative-position bias only applies between image
tokens, and text padding enters as an additive key mask. In a windowed block every window sees
all text tokens, and a text token's output is the mean of its outputs over the windows.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ditsam.model.sam.common import LayerNorm2d, MLPBlock


def relative_position_table(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative-position embeddings for every (query, key) coordinate pair along one axis.

    rel_pos: (L, C) table; resized linearly when L != 2 * max(q_size, k_size) - 1.
    Returns (q_size, k_size, C).
    """
    max_distance = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != max_distance:
        rel_pos = resize_relative_position_table(rel_pos, max_distance)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    offsets = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[offsets.long()]


def resize_relative_position_table(rel_pos: torch.Tensor, length: int) -> torch.Tensor:
    """Linear interpolation of a (L, C) table to (length, C), as SAM does for other grid sizes."""
    resized = F.interpolate(rel_pos.t()[None].float(), size=length, mode="linear")
    return resized[0].t().to(rel_pos.dtype)


def resize_absolute_position_embedding(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of a (1, H, W, C) absolute position embedding to (1, grid[0], grid[1], C)."""
    if tuple(pos_embed.shape[1:3]) == tuple(grid):
        return pos_embed
    resized = F.interpolate(pos_embed.permute(0, 3, 1, 2).float(), size=grid, mode="bicubic", align_corners=False)
    return resized.permute(0, 2, 3, 1).to(pos_embed.dtype)


def relative_position_bias(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, grid: tuple[int, int]
) -> torch.Tensor:
    """Decomposed relative-position bias between the image tokens of one attention call.

    q: (N, h*w, C) unscaled image queries (N = batch * heads). Returns (N, h*w, h*w).
    """
    height, width = grid
    table_h = relative_position_table(height, height, rel_pos_h)
    table_w = relative_position_table(width, width, rel_pos_w)
    q = q.reshape(q.shape[0], height, width, q.shape[-1])
    bias_h = torch.einsum("nhwc,hkc->nhwk", q, table_h.to(q.dtype))
    bias_w = torch.einsum("nhwc,wkc->nhwk", q, table_w.to(q.dtype))
    bias = bias_h[:, :, :, :, None] + bias_w[:, :, :, None, :]
    return bias.reshape(q.shape[0], height * width, height * width)


class Attention(nn.Module):
    """Multi-head attention over [text tokens; image tokens] with a relative-position bias on image pairs."""

    def __init__(
        self, *, dim: int, num_heads: int, qkv_bias: bool = True, use_rel_pos: bool = True,
        rel_pos_grid: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if rel_pos_grid is None:
                raise ValueError("rel_pos_grid is required when use_rel_pos is True")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_pos_grid[0] - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_pos_grid[1] - 1, self.head_dim))

    def forward(self, x: torch.Tensor, *, num_text: int, grid: tuple[int, int], text_bias: torch.Tensor) -> torch.Tensor:
        """x: (B, T + h*w, C), the first ``num_text`` tokens being text; text_bias: (B, 1, 1, T)
        additive key mask (0 = attend). Returns (B, T + h*w, C)."""
        batch, length, dim = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        image_bias = torch.zeros((), dtype=q.dtype, device=q.device)
        if self.use_rel_pos:
            image_q = q[:, :, num_text:].reshape(batch * self.num_heads, length - num_text, self.head_dim)
            image_bias = relative_position_bias(image_q, self.rel_pos_h, self.rel_pos_w, grid)
            image_bias = image_bias.reshape(batch, self.num_heads, length - num_text, length - num_text)
        # One additive mask: the rel-pos bias in the image-image block, text padding on text keys.
        mask = F.pad(image_bias.expand(batch, self.num_heads, length - num_text, length - num_text), (num_text, 0, num_text, 0))
        mask = mask + F.pad(text_bias.to(q.dtype), (0, length - num_text))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


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
        self, *, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
        use_rel_pos: bool = True, window_size: int = 0, grid: tuple[int, int],
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(
            dim=dim, num_heads=num_heads, qkv_bias=qkv_bias, use_rel_pos=use_rel_pos,
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
        shortcut_x, shortcut_text = x, text
        x, text = self.norm1(x), self.norm1(text)
        if self.window_size > 0:
            windows, padded_hw = window_partition(x, self.window_size)
            per_image = windows.shape[0] // batch
            grid = (self.window_size, self.window_size)
            tokens = torch.cat(
                [text.repeat_interleave(per_image, dim=0), windows.reshape(windows.shape[0], -1, dim)], dim=1
            )
            tokens = self.attn(tokens, num_text=num_text, grid=grid, text_bias=text_bias.repeat_interleave(per_image, dim=0))
            text = tokens[:, :num_text].reshape(batch, per_image, num_text, dim).mean(dim=1)
            windows = tokens[:, num_text:].reshape(-1, self.window_size, self.window_size, dim)
            x = window_unpartition(windows, self.window_size, padded_hw, (height, width))
        else:
            tokens = torch.cat([text, x.reshape(batch, height * width, dim)], dim=1)
            tokens = self.attn(tokens, num_text=num_text, grid=(height, width), text_bias=text_bias)
            text, x = tokens[:, :num_text], tokens[:, num_text:].reshape(batch, height, width, dim)
        x, text = shortcut_x + x, shortcut_text + text
        return x + self.mlp(self.norm2(x)), text + self.mlp(self.norm2(text))


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
        self, *, img_size: int = 1024, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768,
        depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, out_chans: int = 256,
        qkv_bias: bool = True, use_rel_pos: bool = True, window_size: int = 0,
        global_attn_indexes: tuple[int, ...] = (), injection: nn.Module | None = None,
    ) -> None:
        super().__init__()
        from ditsam.model.inject import NoInjection

        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} must be a multiple of patch_size {patch_size}")
        self.img_size = img_size
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.patch_embed = PatchEmbed(patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, *self.grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, use_rel_pos=use_rel_pos,
                window_size=0 if i in global_attn_indexes else window_size, grid=self.grid,
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


