"""EfficientSAM's prompt encoder: points and box corners -> sparse tokens; no mask prompt.

Every prompt is a point with a label (EfficientSAM's ``PromptEncoder``): -1 padding, 0 background, 1
foreground, 2 a box's top-left corner, 3 its bottom-right corner. A token is the random-Fourier encoding of
its position (:class:`~ditsam.model.sam.prompt_encoder.PositionEmbeddingRandom`, the same math and buffer
as SAM's) plus a learned embedding of its kind -- background points get none, and a padding point keeps
its position's encoding (SAM replaces it). Prompts are padded to :data:`MAX_POINTS` tokens with points at
(-1, -1), as EfficientSAM's decoder was trained.
"""

from __future__ import annotations

import torch
from torch import nn

from ditsam.model.sam.prompt_encoder import PositionEmbeddingRandom, prompt_batch_size

# Point labels of EfficientSAM.
PADDING_LABEL, NEGATIVE_LABEL, POSITIVE_LABEL, BOX_TOP_LEFT_LABEL, BOX_BOTTOM_RIGHT_LABEL = -1, 0, 1, 2, 3
LABELS = (PADDING_LABEL, NEGATIVE_LABEL, POSITIVE_LABEL, BOX_TOP_LEFT_LABEL, BOX_BOTTOM_RIGHT_LABEL)
# EfficientSAM pads (and its code truncates) the prompts to this many points (decoder_max_num_input_points).
MAX_POINTS = 6
# Where its padding points lie, in input pixels (their coordinates are -1 before the pixel-centre shift).
PADDING_COORD = -1.0
# Learned embedding added to each label's tokens (background points get none), by parameter name.
KIND_EMBEDDINGS = {
    PADDING_LABEL: "invalid_points",
    POSITIVE_LABEL: "point_embeddings",
    BOX_TOP_LEFT_LABEL: "bbox_top_left_embeddings",
    BOX_BOTTOM_RIGHT_LABEL: "bbox_bottom_right_embeddings",
}


class EfficientSamPromptEncoder(nn.Module):
    """Embed points and boxes as EfficientSAM does; the same interface as SAM's
    :class:`~ditsam.model.sam.prompt_encoder.PromptEncoder` (the dense embedding is zero: EfficientSAM has
    no mask prompt and no "no mask" embedding, its decoder reads the image embedding as it is)."""

    def __init__(
        self,
        *,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        max_points: int = MAX_POINTS,
    ) -> None:
        """
        Args:
            embed_dim: width of the prompt tokens (the decoder width, 256).
            image_embedding_size: (h, w) of the image embedding grid.
            input_image_size: (H, W) of the image fed to the image encoder; coordinates are its pixels.
            max_points: tokens a prompt is padded to (a box counts two).
        """
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = tuple(image_embedding_size)
        self.input_image_size = tuple(input_image_size)
        self.max_points = max_points
        self.pe_layer = PositionEmbeddingRandom(num_pos_feats=embed_dim // 2)
        self.invalid_points = nn.Embedding(1, embed_dim)
        self.point_embeddings = nn.Embedding(1, embed_dim)
        self.bbox_top_left_embeddings = nn.Embedding(1, embed_dim)
        self.bbox_bottom_right_embeddings = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image embedding grid: (1, embed_dim, h, w)."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def embed_labelled_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, N, 2) pixel coordinates (x, y) and (B, N) labels of :data:`LABELS` -> (B, N, embed_dim)."""
        if labels.device.type == "cpu":
            unknown = ~torch.isin(labels, torch.tensor(LABELS, dtype=labels.dtype))
            if unknown.any():
                raise ValueError(
                    f"point label {labels[unknown][0].item()} is not an EfficientSAM label; expected one of "
                    f"{list(LABELS)} (-1 padding, 0 background, 1 foreground, 2 / 3 box corners)"
                )
        embedding = self.pe_layer.forward_with_coords(coords + 0.5, self.input_image_size)  # pixel centres
        labels = labels[..., None]
        for label, name in KIND_EMBEDDINGS.items():
            kind = getattr(self, name).weight.to(embedding.dtype)
            embedding = torch.where(labels == label, embedding + kind, embedding)
        return embedding

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
            points: coordinates (B, N, 2) as (x, y) in input-image pixels and labels (B, N) of :data:`LABELS`.
            boxes: (B, 4) as (x0, y0, x1, y1) in input-image pixels: two points, labels 2 and 3, after ``points``.
            masks: must be None (EfficientSAM takes no mask prompt).
            batch_size: B, needed only when no prompt is given.

        Returns:
            sparse: (B, max_points, embed_dim): the points, the box corners, then padding points; (B, 0,
                embed_dim) without points and boxes (text alone, as with SAM's encoder).
            dense: (B, embed_dim, h, w) zeros.
        """
        if masks is not None:
            raise ValueError("EfficientSAM takes no mask prompt (its prompt encoder embeds points and boxes only)")
        batch = prompt_batch_size(points, boxes, masks, batch_size)  # masks: None, checked above
        weight = self.invalid_points.weight
        dense = weight.new_zeros(1, self.embed_dim, 1, 1).expand(batch, -1, *self.image_embedding_size)
        if points is None and boxes is None:
            return weight.new_empty(batch, 0, self.embed_dim), dense
        coords, labels = [], []
        if points is not None:
            coords.append(points[0].float())
            labels.append(points[1].long())
        if boxes is not None:
            if boxes.ndim != 2 or boxes.shape[-1] != 4:
                raise ValueError(f"boxes must have shape (B, 4), got {tuple(boxes.shape)}")
            coords.append(boxes.float().reshape(batch, 2, 2))
            corners = torch.tensor([BOX_TOP_LEFT_LABEL, BOX_BOTTOM_RIGHT_LABEL], device=boxes.device)
            labels.append(corners.expand(batch, 2))
        count = sum(c.shape[1] for c in coords)
        if count > self.max_points:
            raise ValueError(
                f"EfficientSAM takes at most {self.max_points} prompt points (a box counts 2); got {count}"
            )
        padding = self.max_points - count
        coords.append(coords[0].new_full((batch, padding, 2), PADDING_COORD))
        labels.append(labels[0].new_full((batch, padding), PADDING_LABEL))
        sparse = self.embed_labelled_points(torch.cat(coords, dim=1), torch.cat(labels, dim=1))
        return sparse, dense
