"""The parts of each model family, built from a :class:`~ditsam.model.config.DITSamConfig`.

Both families share SAM's :class:`~ditsam.model.sam.image_encoder.ImageEncoderViT` (so every text injection
of :mod:`ditsam.model.inject` hooks into their blocks the same way); they differ in the ViT's features (SAM:
relative positions, optional windows; EfficientSAM: neither, :attr:`DITSamConfig.rel_pos`) and in the prompt
encoder and mask decoder, which :data:`FAMILY_PARTS` names by ``config.model_family``:

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
    """One family's classes; :func:`build_prompt_encoder` and :func:`build_mask_decoder` give them the same
    keywords whatever the family."""

    #: Takes ``embed_dim``, ``image_embedding_size``, ``input_image_size``.
    prompt_encoder: Callable[..., nn.Module]
    #: The decoder's two-way transformer: takes ``depth``, ``embedding_dim``, ``num_heads``, ``mlp_dim``.
    transformer: Callable[..., nn.Module]
    #: Takes ``transformer_dim`` and ``transformer``.
    mask_decoder: Callable[..., nn.Module]


#: ``config.model_family`` -> its parts (the keys equal :data:`~ditsam.model.config.FAMILIES`; a test checks).
FAMILY_PARTS: dict[str, FamilyParts] = {
    "sam": FamilyParts(PromptEncoder, TwoWayTransformer, MaskDecoder),
    "efficientsam": FamilyParts(EfficientSamPromptEncoder, efficientsam_transformer, EfficientSamMaskDecoder),
}


def build_prompt_encoder(config: DITSamConfig) -> nn.Module:
    """The prompt encoder of ``config``'s family."""
    return FAMILY_PARTS[config.model_family].prompt_encoder(
        embed_dim=config.prompt_embed_dim,
        image_embedding_size=(config.grid, config.grid),
        input_image_size=(config.image_size, config.image_size),
    )


def build_mask_decoder(config: DITSamConfig) -> nn.Module:
    """The mask decoder of ``config``'s family."""
    parts = FAMILY_PARTS[config.model_family]
    transformer = parts.transformer(
        depth=BASE_DECODER_LAYERS + config.extra_decoder_layers,
        embedding_dim=config.prompt_embed_dim,
        num_heads=config.decoder_num_heads,
        mlp_dim=config.decoder_mlp_dim,
    )
    return parts.mask_decoder(transformer_dim=config.prompt_embed_dim, transformer=transformer)
