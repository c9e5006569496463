"""EfficientSAM's mask decoder: SAM's output-token decoder with EfficientSAM's heads and upscaling.

What differs from SAM's :class:`~ditsam.model.sam.mask_decoder.MaskDecoder` (EfficientSAM's
``efficient_sam_decoder.py`` / ``two_way_transformer.py``): GELU instead of ReLU in the hypernetwork MLPs,
the IoU head and the transformer's token MLP (:class:`~ditsam.model.efficientsam.mlp.ActivatedMLP`); the
upscaling normalises with GroupNorm(1, C) (over channels *and* pixels) where SAM has a per-pixel
LayerNorm2d; and the transformer's tokens carry their positional encoding
(:class:`~ditsam.model.sam.transformer.TwoWayAttentionBlock` ``tokens_carry_pe``). Output tokens, the
multimask choice (token 0 alone, or tokens 1..3) and the IoU prediction (no sigmoid) are SAM's.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from ditsam.model.efficientsam.mlp import ActivatedMLP
from ditsam.model.sam.mask_decoder import OutputTokenDecoder
from ditsam.model.sam.transformer import TwoWayTransformer

# EfficientSAM's decoder sizes (build_efficient_sam): upscaling widths, hidden layers of the heads.
UPSCALING_DIMS = (64, 32)
HYPERNETWORK_HIDDEN_LAYERS = 2  # MLPBlock(num_layers=2): two (Linear, GELU) pairs, then fc
IOU_HEAD_HIDDEN_LAYERS = 2  # iou_head_depth 3 - 1
TRANSFORMER_MLP_HIDDEN_LAYERS = 1
# Groups of the GroupNorm between the upscaling steps: one, i.e. a LayerNorm over (C, H, W).
UPSCALING_NORM_GROUPS = 1


def efficientsam_transformer(*, depth: int, embedding_dim: int, num_heads: int, mlp_dim: int) -> TwoWayTransformer:
    """SAM's two-way transformer with EfficientSAM's GELU token MLP and positional encoding in the tokens."""
    mlp = functools.partial(
        ActivatedMLP,
        input_dim=embedding_dim,
        hidden_dim=mlp_dim,
        output_dim=embedding_dim,
        num_layers=TRANSFORMER_MLP_HIDDEN_LAYERS,
        act=nn.GELU,
    )
    return TwoWayTransformer(
        depth=depth,
        embedding_dim=embedding_dim,
        num_heads=num_heads,
        mlp_dim=mlp_dim,
        mlp_factory=mlp,
        tokens_carry_pe=True,
    )


def _upscaling_layers(*, transformer_dim: int, dims: tuple[int, ...], activation: type[nn.Module]) -> nn.ModuleList:
    """(B, C, h, w) -> (B, dims[-1], 2^len(dims) h, ...): a stride-2 transposed convolution per entry,
    GroupNorm(1, .) after each but the last, then the activation. Indices are EfficientSAM's keys."""
    layers, width = [], transformer_dim
    for index, out in enumerate(dims):
        last = index == len(dims) - 1
        norm = nn.Identity() if last else nn.GroupNorm(UPSCALING_NORM_GROUPS, out)
        layers.append(nn.Sequential(nn.ConvTranspose2d(width, out, kernel_size=2, stride=2), norm, activation()))
        width = out
    return nn.ModuleList(layers)


class EfficientSamMaskDecoder(OutputTokenDecoder):
    """Masks from an image embedding and prompt tokens, as EfficientSAM predicts them.

    forward: as :class:`~ditsam.model.sam.mask_decoder.OutputTokenDecoder` (image_embeddings (B_img, C, h, w),
    image_pe (1, C, h, w), sparse_prompt_embeddings (B, K, C), dense_prompt_embeddings (B, C, h, w), added --
    zero from :class:`~ditsam.model.efficientsam.prompt_encoder.EfficientSamPromptEncoder`) -> masks
    (B, M, 4h, 4w), iou_pred (B, M).
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_hidden_dim: int = 256,
        upscaling_dims: tuple[int, ...] = UPSCALING_DIMS,
    ) -> None:
        """
        Args:
            transformer_dim: channel width C of image embedding and tokens.
            transformer: normally :func:`efficientsam_transformer`.
            num_multimask_outputs: masks returned when multimask_output is True (EfficientSAM: 3, > 1).
            activation: of the upscaling and of the heads (EfficientSAM: GELU).
            iou_head_hidden_dim: hidden width of the IoU head.
            upscaling_dims: output widths of the upscaling steps (two steps: 4x).
        """
        if num_multimask_outputs < 2:
            raise ValueError(f"num_multimask_outputs must be >= 2 (EfficientSAM: 3), got {num_multimask_outputs}")
        super().__init__(
            transformer_dim=transformer_dim, transformer=transformer, num_multimask_outputs=num_multimask_outputs
        )
        self.final_output_upscaling_layers = _upscaling_layers(
            transformer_dim=transformer_dim, dims=tuple(upscaling_dims), activation=activation
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            ActivatedMLP(
                input_dim=transformer_dim,
                hidden_dim=transformer_dim,
                output_dim=upscaling_dims[-1],
                num_layers=HYPERNETWORK_HIDDEN_LAYERS,
                act=activation,
            )
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = ActivatedMLP(
            input_dim=transformer_dim,
            hidden_dim=iou_head_hidden_dim,
            output_dim=self.num_mask_tokens,
            num_layers=IOU_HEAD_HIDDEN_LAYERS,
            act=activation,
        )

    def upscale(self, image: torch.Tensor) -> torch.Tensor:
        for layer in self.final_output_upscaling_layers:
            image = layer(image)
        return image
