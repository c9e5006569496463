"""SAM's prompt encoder: points and boxes -> sparse tokens, masks -> a dense embedding.

Parameter names follow the official segment-anything checkpoints (`prompt_encoder.*`), so that
`load_state_dict(strict=True)` works on them after stripping the prefix.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ditsam.model.sam.common import LayerNorm2d

# Index of each learned embedding in `PromptEncoder.point_embeddings`, as in SAM's checkpoints.
_NEGATIVE_POINT, _POSITIVE_POINT, _BOX_TOP_LEFT, _BOX_BOTTOM_RIGHT = 0, 1, 2, 3
_NUM_POINT_EMBEDDINGS = 4
# Label of a point that carries no location (SAM's padding point).
PADDING_LABEL = -1


def prompt_batch_size(
    points: tuple[torch.Tensor, torch.Tensor] | None,
    boxes: torch.Tensor | None,
    masks: torch.Tensor | None,
    batch_size: int | None,
) -> int:
    """B of a batch of prompts: the first prompt's batch, or ``batch_size`` when every prompt is None (both
    families' encoders must then size empty outputs); a ``batch_size`` the prompts contradict is an error."""
    for prompt in (points[0] if points is not None else None, boxes, masks):
        if prompt is not None:
            if batch_size is not None and batch_size != prompt.shape[0]:
                raise ValueError(f"batch_size={batch_size} contradicts the prompts' batch {prompt.shape[0]}")
            return prompt.shape[0]
    if batch_size is None:
        raise ValueError("batch_size is required when no prompt is given")
    return batch_size


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of 2-D coordinates (Tancik et al.), as used by SAM.

    A fixed Gaussian matrix G (2, F) maps a point p in [0, 1]^2 to
    [sin(2 pi (2p - 1) G), cos(2 pi (2p - 1) G)], a vector of 2F channels.
    """

    def __init__(self, *, num_pos_feats: int, scale: float | None = None) -> None:
        super().__init__()
        scale = 1.0 if scale is None or scale <= 0.0 else scale
        # A buffer rather than a parameter: SAM never trains it, yet checkpoints store it.
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn(2, num_pos_feats))

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """Encode coordinates normalised to [0, 1]: (..., 2) (x, y) -> (..., 2F)."""
        gaussian = self.positional_encoding_gaussian_matrix
        # fp32 even for a half-precision model: the phases reach tens of radians, where bf16
        # would lose the fine position information.
        phase = (2.0 * coords.float() - 1.0) @ gaussian.float()
        phase = 2.0 * math.pi * phase
        return torch.cat([phase.sin(), phase.cos()], dim=-1).to(gaussian.dtype)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Encode the centres of an (h, w) grid of cells: returns (2F, h, w)."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        grid = torch.stack(
            [xs[None, :].expand(h, w), ys[:, None].expand(h, w)],
            dim=-1,
        )
        return self.encode(grid).permute(2, 0, 1)

    def forward_with_coords(self, coords: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Encode pixel coordinates (..., 2) (x, y) of an image of size (H, W): returns (..., 2F)."""
        h, w = image_size
        size = torch.tensor([w, h], dtype=torch.float32, device=coords.device)
        return self.encode(coords.float() / size)


def _mask_downscaling(*, mask_in_chans: int, embed_dim: int, activation: type[nn.Module]) -> nn.Sequential:
    """(B, 1, 4h, 4w) mask logits -> (B, embed_dim, h, w); the layer order fixes SAM's key indices."""
    hidden = mask_in_chans // 4
    return nn.Sequential(
        nn.Conv2d(1, hidden, kernel_size=2, stride=2),
        LayerNorm2d(hidden),
        activation(),
        nn.Conv2d(hidden, mask_in_chans, kernel_size=2, stride=2),
        LayerNorm2d(mask_in_chans),
        activation(),
        nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
    )


class PromptEncoder(nn.Module):
    """Embed SAM prompts for the mask decoder.

    Points and box corners become sparse tokens (B, K, embed_dim): the random-Fourier encoding of
    their position plus a learned embedding of their kind. An optional low-resolution mask becomes
    a dense embedding (B, embed_dim, h, w); without one, a learned "no mask" vector fills the grid.
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int = 16,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        """
        Args:
            embed_dim: width of the prompt tokens (the decoder width, 256 in SAM).
            image_embedding_size: (h, w) of the image embedding grid.
            input_image_size: (H, W) of the (padded) image fed to the image encoder; point and box
                coordinates are in its pixels.
            mask_in_chans: hidden channels of the mask downscaling network.
            activation: activation of the mask downscaling network.
        """
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = tuple(image_embedding_size)
        self.input_image_size = tuple(input_image_size)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.pe_layer = PositionEmbeddingRandom(num_pos_feats=embed_dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(_NUM_POINT_EMBEDDINGS))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = _mask_downscaling(
            mask_in_chans=mask_in_chans, embed_dim=embed_dim, activation=activation
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image embedding grid: (1, embed_dim, h, w)."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def _embed_points(self, coords: torch.Tensor, labels: torch.Tensor, *, pad: bool) -> torch.Tensor:
        """(B, N, 2) pixel coordinates and (B, N) labels -> (B, N (+1 if pad), embed_dim)."""
        coords = coords + 0.5  # pixel centres
        if pad:
            # SAM was trained with a trailing padding point whenever no box was given.
            coords = torch.cat([coords, coords.new_zeros(coords.shape[0], 1, 2)], dim=1)
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), PADDING_LABEL)], dim=1)
        embedding = self.pe_layer.forward_with_coords(coords, self.input_image_size)
        labels = labels[..., None]
        embedding = torch.where(labels == PADDING_LABEL, self.not_a_point_embed.weight, embedding)
        for label in (_NEGATIVE_POINT, _POSITIVE_POINT):
            embedding = torch.where(labels == label, embedding + self.point_embeddings[label].weight, embedding)
        return embedding

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """(B, 4) boxes (x0, y0, x1, y1) in pixels -> (B, 2, embed_dim), one token per corner."""
        if boxes.ndim != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"boxes must have shape (B, 4), got {tuple(boxes.shape)}")
        corners = (boxes + 0.5).reshape(-1, 2, 2)
        embedding = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        corner_kind = torch.cat(
            [self.point_embeddings[_BOX_TOP_LEFT].weight, self.point_embeddings[_BOX_BOTTOM_RIGHT].weight]
        )
        return embedding + corner_kind

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        *,
        batch_size: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed the prompts of a batch.

        Args:
            points: coordinates (B, N, 2) as (x, y) in input-image pixels and labels (B, N):
                1 foreground, 0 background, -1 padding (ignored location).
            boxes: (B, 4) as (x0, y0, x1, y1) in input-image pixels.
            masks: (B, 1, 4h, 4w) mask logits.
            batch_size: B, needed only when every prompt is None (it must then be known to size
                the outputs); if given together with prompts it must agree with them.

        Returns:
            sparse: (B, K, embed_dim), K = N (+1 padding point when boxes is None) + 2 per box;
                K = 0 without points and boxes.
            dense: (B, embed_dim, h, w).
        """
        batch = prompt_batch_size(points, boxes, masks, batch_size)
        weight = self.no_mask_embed.weight
        sparse = [weight.new_empty(batch, 0, self.embed_dim)]
        if points is not None:
            coords, labels = points
            sparse.append(self._embed_points(coords, labels, pad=boxes is None))
        if boxes is not None:
            sparse.append(self._embed_boxes(boxes))
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            dense = weight.reshape(1, -1, 1, 1).expand(batch, -1, *self.image_embedding_size)
        return torch.cat(sparse, dim=1), dense
