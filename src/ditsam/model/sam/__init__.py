"""SAM's building blocks with the official checkpoint parameter names."""

from ditsam.model.sam.hf_names import hf_sam_to_official
from ditsam.model.sam.image_encoder import ImageEncoderViT
from ditsam.model.sam.mask_decoder import MaskDecoder
from ditsam.model.sam.prompt_encoder import PositionEmbeddingRandom, PromptEncoder
from ditsam.model.sam.transformer import TwoWayAttentionBlock, TwoWayTransformer

__all__ = [
    "ImageEncoderViT",
    "MaskDecoder",
    "PositionEmbeddingRandom",
    "PromptEncoder",
    "TwoWayAttentionBlock",
    "TwoWayTransformer",
    "hf_sam_to_official",
]
