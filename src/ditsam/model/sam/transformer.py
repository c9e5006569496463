"""SAM's two-way transformer: prompt tokens and image embedding attend to each other.

Parameter names follow the official checkpoints (`mask_decoder.transformer.*`). One addition to
SAM: an optional key mask over the tokens, so that padded text tokens ([PAD]) are never attended
to. Without it the computation is SAM's.

EfficientSAM's decoder (:mod:`ditsam.model.efficientsam`) uses the same transformer with two
switches: its own block MLP (``mlp_factory``) and ``tokens_carry_pe`` (see
:class:`TwoWayAttentionBlock`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ditsam.model.sam.common import MLPBlock, padding_to_additive_mask


class Attention(nn.Module):
    """Multi-head attention whose projections may narrow the width to embedding_dim / downsample_rate.

    SAM narrows the token<->image cross-attentions (rate 2) to save compute on the 4096 image
    positions; token self-attention keeps the full width (rate 1).
    """

    def __init__(self, *, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        internal_dim = embedding_dim // downsample_rate
        if internal_dim % num_heads != 0:
            raise ValueError(f"num_heads={num_heads} must divide the internal width {internal_dim}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(embedding_dim, internal_dim)
        self.k_proj = nn.Linear(embedding_dim, internal_dim)
        self.v_proj = nn.Linear(embedding_dim, internal_dim)
        self.out_proj = nn.Linear(internal_dim, embedding_dim)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, heads, N, D / heads)."""
        b, n, d = x.shape
        return x.reshape(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            q: (B, Nq, C) queries; k, v: (B, Nk, C) keys and values.
            key_mask: (B, Nk) bool, True = attend to this key; None attends to all.

        Returns:
            (B, Nq, C).
        """
        q = self._split_heads(self.q_proj(q))
        k = self._split_heads(self.k_proj(k))
        v = self._split_heads(self.v_proj(v))
        # Built from the projected dtype so that it matches q under autocast.
        attn_mask = None if key_mask is None else padding_to_additive_mask(key_mask, q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))


class TwoWayAttentionBlock(nn.Module):
    """One decoder block: token self-attention, token->image attention, token MLP, image->token attention.

    Each sub-layer is residual and post-normed. The positional encodings are re-added to queries
    and keys at every attention, never to values.
    """

    def __init__(
        self,
        *,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
        mlp: nn.Module | None = None,
        tokens_carry_pe: bool = False,
    ) -> None:
        """
        Args:
            skip_first_layer_pe: in the first block the tokens ARE their positional encoding, so
                self-attention sees them without adding it again (SAM also replaces them there
                instead of adding a residual).
            mlp: the token MLP, (B, N, C) -> (B, N, C); default SAM's ``MLPBlock`` with ``activation``.
            tokens_carry_pe: EfficientSAM's self-attention: after the first block the positional
                encoding is added to the tokens themselves (so it reaches the values and stays in
                the residual stream), and every block's self-attention is residual. SAM (False)
                adds it to queries and keys only.
        """
        super().__init__()
        self.self_attn = Attention(embedding_dim=embedding_dim, num_heads=num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(
            embedding_dim=embedding_dim, num_heads=num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = mlp if mlp is not None else MLPBlock(embedding_dim=embedding_dim, mlp_dim=mlp_dim, act=activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(
            embedding_dim=embedding_dim, num_heads=num_heads, downsample_rate=attention_downsample_rate
        )
        self.skip_first_layer_pe = skip_first_layer_pe
        self.tokens_carry_pe = tokens_carry_pe

    def _token_self_attention(
        self, queries: torch.Tensor, query_pe: torch.Tensor, token_key_mask: torch.Tensor | None
    ) -> torch.Tensor:
        if self.tokens_carry_pe:
            if not self.skip_first_layer_pe:
                queries = queries + query_pe
            return queries + self.self_attn(queries, queries, queries, key_mask=token_key_mask)
        if self.skip_first_layer_pe:
            return self.self_attn(queries, queries, queries, key_mask=token_key_mask)
        q = queries + query_pe
        return queries + self.self_attn(q, q, queries, key_mask=token_key_mask)

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
        *,
        token_key_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            queries: (B, N, C) tokens; query_pe: (B, N, C) their positional part (the initial tokens).
            keys: (B, HW, C) image embedding; key_pe: (B or 1, HW, C) its positional encoding.
            token_key_mask: (B, N) bool, False = token is padding and never attended to.

        Returns:
            updated (queries (B, N, C), keys (B, HW, C)).
        """
        queries = self.norm1(self._token_self_attention(queries, query_pe, token_key_mask))

        q = queries + query_pe
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))

        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        attn_out = self.cross_attn_image_to_token(k, q, queries, key_mask=token_key_mask)
        keys = self.norm4(keys + attn_out)
        return queries, keys


class TwoWayTransformer(nn.Module):
    """A stack of TwoWayAttentionBlocks followed by a final token->image attention."""

    def __init__(
        self,
        *,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        mlp_factory: Callable[[], nn.Module] | None = None,
        tokens_carry_pe: bool = False,
    ) -> None:
        """``mlp_factory`` builds each block's token MLP (default SAM's); ``tokens_carry_pe``: see
        :class:`TwoWayAttentionBlock`. Both are EfficientSAM's switches."""
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim=embedding_dim,
                num_heads=num_heads,
                mlp_dim=mlp_dim,
                activation=activation,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=i == 0,
                mlp=mlp_factory() if mlp_factory is not None else None,
                tokens_carry_pe=tokens_carry_pe,
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(
            embedding_dim=embedding_dim, num_heads=num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self,
        image_embedding: torch.Tensor,
        image_pe: torch.Tensor,
        point_embedding: torch.Tensor,
        *,
        token_key_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            image_embedding: (B, C, h, w).
            image_pe: (B or 1, C, h, w) positional encoding of the image grid.
            point_embedding: (B, N, C) tokens (output tokens followed by prompt tokens); they also
                serve as their own positional encoding at every layer.
            token_key_mask: (B, N) bool, True = real token, False = padding never used as a key.

        Returns:
            tokens (B, N, C) and image embedding (B, h*w, C).
        """
        keys = image_embedding.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe, token_key_mask=token_key_mask)

        q = queries + point_embedding
        k = keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys
