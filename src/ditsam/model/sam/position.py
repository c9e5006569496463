"""Position information in SAM's ViT: the decomposed relative-position bias between image tokens (its tables,
their factored form that :class:`~ditsam.model.sam.image_encoder.Attention` folds into the heads), resizing
both kinds of position embedding to another grid, and fixed sine-cosine codes.

Shapes follow segment-anything's ``image_encoder.py``: a relative table is (2 * size - 1, C) per axis, an
absolute embedding (1, H, W, C).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Wavelength range of the sine-cosine position embedding (as in "Attention Is All You Need").
SINCOS_MAX_PERIOD = 10000.0


def sincos_position_embedding(grid: tuple[int, int], dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position codes, (1, H, W, dim): the first half of the channels encodes
    the row, the second half the column, each as sines and cosines of geometric frequencies."""
    if dim % 4:
        raise ValueError(f"a sine-cosine position embedding needs embed_dim divisible by 4, got {dim}")
    quarter = dim // 4
    frequencies = SINCOS_MAX_PERIOD ** (-torch.arange(quarter, dtype=torch.float64) / quarter)
    rows = torch.arange(grid[0], dtype=torch.float64)[:, None] * frequencies
    cols = torch.arange(grid[1], dtype=torch.float64)[:, None] * frequencies
    row_codes = torch.cat([rows.sin(), rows.cos()], dim=1)[:, None, :].expand(grid[0], grid[1], 2 * quarter)
    col_codes = torch.cat([cols.sin(), cols.cos()], dim=1)[None, :, :].expand(grid[0], grid[1], 2 * quarter)
    return torch.cat([row_codes, col_codes], dim=-1).unsqueeze(0).float()


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
    Materialises the full bias; :class:`~ditsam.model.sam.image_encoder.Attention` uses the factored form
    (:func:`relative_position_query_terms`, :func:`relative_position_key_terms`) instead.
    """
    height, width = grid
    terms = relative_position_query_terms(q, rel_pos_h, rel_pos_w, grid)
    bias_h, bias_w = terms.reshape(q.shape[0], height, width, height + width).split([height, width], dim=-1)
    bias = bias_h[:, :, :, :, None] + bias_w[:, :, :, None, :]
    return bias.reshape(q.shape[0], height * width, height * width)


def relative_position_query_terms(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, grid: tuple[int, int]
) -> torch.Tensor:
    """Per-query factors of the decomposed relative-position bias.

    q: (..., h*w, C) unscaled image queries. Returns (..., h*w, h + w): for the query at (y, x), the
    ``h`` values ``q . R_h[y, ky]`` followed by the ``w`` values ``q . R_w[x, kx]``. The bias towards
    the key at (ky, kx) is ``terms[ky] + terms[h + kx]``, i.e. ``terms`` dotted with that key's row of
    :func:`relative_position_key_terms`.
    """
    height, width = grid
    table_h = relative_position_table(height, height, rel_pos_h).to(q.dtype)
    table_w = relative_position_table(width, width, rel_pos_w).to(q.dtype)
    lead = q.shape[:-2]
    q = q.reshape(-1, height, width, q.shape[-1])
    bias_h = torch.einsum("nhwc,hkc->nhwk", q, table_h)
    bias_w = torch.einsum("nhwc,wkc->nhwk", q, table_w)
    return torch.cat([bias_h, bias_w], dim=-1).reshape(*lead, height * width, height + width)


def relative_position_key_terms(grid: tuple[int, int], *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(h*w, h + w) constant key factors: one-hot of the key's row, then one-hot of its column."""
    height, width = grid
    rows = torch.eye(height, dtype=dtype, device=device).repeat_interleave(width, dim=0)
    cols = torch.eye(width, dtype=dtype, device=device).repeat(height, 1)
    return torch.cat([rows, cols], dim=-1)


def fold_last_column(query_terms: torch.Tensor, height: int) -> torch.Tensor:
    """(..., h + w) query factors -> (..., h + w - 1) factors against keys without the last column's one-hot.

    Every key's row one-hot and column one-hot each sum to 1, so the h + w key factors are linearly
    dependent and one can go: with ``A`` the row and ``B`` the column terms, ``A[ky] + B[kx] = (A[ky] + B[w-1]) + (B[kx] - B[w-1])``,
    whose second part vanishes for the last column. Dropping that column's one-hot frees one slot of
    the widened heads (see :class:`~ditsam.model.sam.image_encoder.Attention`) without changing the bias.
    """
    rows, cols, last = query_terms.split([height, query_terms.shape[-1] - height - 1, 1], dim=-1)
    return torch.cat([rows + last, cols - last], dim=-1)
