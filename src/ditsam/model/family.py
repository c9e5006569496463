"""The parts of each model family, built from a :class:`~ditsam.model.config.DITSamConfig`.

Both families share SAM's :class:`~ditsam.model.sam.image_encoder.ImageEncoderViT` (so every text injection
of :mod:`ditsam.model.inject` hooks into their blocks the same way); they differ in the ViT's features (SAM:
relative positions, optional windows; EfficientSAM: neither, :attr:`DITSamConfig.rel_pos`) and in the prompt
encoder and mask decoder, which :data:`FAMILY_PARTS` builds by ``config.model_family``:

- ``"sam"``: :class:`~ditsam.model.sam.prompt_encoder.PromptEncoder`,
  :class:`~ditsam.model.sam.mask_decoder.MaskDecoder` (Meta's segment-anything);
- ``"efficientsam"``: :class:`~ditsam.model.efficientsam.prompt_encoder.EfficientSamPromptEncoder`,
  :class:`~ditsam.model.efficientsam.mask_decoder.EfficientSamMaskDecoder` (yformer/EfficientSAM).

Both prompt encoders take ``(points, boxes, masks, batch_size=)`` and return ``(sparse, dense)``; both
decoders take the same keywords (:class:`~ditsam.model.sam.mask_decoder.OutputTokenDecoder`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from torch import nn

from ditsam.model.config import DITSamConfig
from ditsam.model.efficientsam.mask_decoder import EfficientSamMaskDecoder, efficientsam_transformer
from ditsam.model.efficientsam.prompt_encoder import EfficientSamPromptEncoder
from ditsam.model.sam.mask_decoder import MaskDecoder
from ditsam.model.sam.prompt_encoder import PromptEncoder
from ditsam.model.sam.transformer import TwoWayTransformer

#: Two-way transformer layers of both families' decoders (``extra_decoder_layers`` are added to them).
BASE_DECODER_LAYERS = 2


class FamilyParts(NamedTuple):
    """Builders of one family's prompt encoder and mask decoder."""

    prompt_encoder: Callable[[DITSamConfig], nn.Module]
    mask_decoder: Callable[[DITSamConfig], nn.Module]


def _grid(config: DITSamConfig) -> dict[str, tuple[int, int]]:
    return {
        "image_embedding_size": (config.grid, config.grid),
        "input_image_size": (config.image_size, config.image_size),
    }


def _sam_prompt_encoder(config: DITSamConfig) -> PromptEncoder:
    return PromptEncoder(embed_dim=config.prompt_embed_dim, **_grid(config))


def _sam_mask_decoder(config: DITSamConfig) -> MaskDecoder:
    transformer = TwoWayTransformer(
        depth=BASE_DECODER_LAYERS + config.extra_decoder_layers,
        embedding_dim=config.prompt_embed_dim,
        num_heads=config.decoder_num_heads,
        mlp_dim=config.decoder_mlp_dim,
    )
    return MaskDecoder(transformer_dim=config.prompt_embed_dim, transformer=transformer)


def _efficientsam_prompt_encoder(config: DITSamConfig) -> EfficientSamPromptEncoder:
    return EfficientSamPromptEncoder(embed_dim=config.prompt_embed_dim, **_grid(config))


def _efficientsam_mask_decoder(config: DITSamConfig) -> EfficientSamMaskDecoder:
    transformer = efficientsam_transformer(
        depth=BASE_DECODER_LAYERS + config.extra_decoder_layers,
        embedding_dim=config.prompt_embed_dim,
        num_heads=config.decoder_num_heads,
        mlp_dim=config.decoder_mlp_dim,
    )
    return EfficientSamMaskDecoder(transformer_dim=config.prompt_embed_dim, transformer=transformer)


#: ``config.model_family`` -> its builders (the keys equal :data:`~ditsam.model.config.FAMILIES`; a test checks).
FAMILY_PARTS: dict[str, FamilyParts] = {
    "sam": FamilyParts(_sam_prompt_encoder, _sam_mask_decoder),
    "efficientsam": FamilyParts(_efficientsam_prompt_encoder, _efficientsam_mask_decoder),
}


def build_prompt_encoder(config: DITSamConfig) -> nn.Module:
    """The prompt encoder of ``config``'s family."""
    return FAMILY_PARTS[config.model_family].prompt_encoder(config)


def build_mask_decoder(config: DITSamConfig) -> nn.Module:
    """The mask decoder of ``config``'s family."""
    return FAMILY_PARTS[config.model_family].mask_decoder(config)
