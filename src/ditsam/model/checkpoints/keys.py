"""State-dict key names in our (official SAM) naming that more than one loader needs."""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch

StateDict = dict[str, torch.Tensor]

SAM_PREFIXES = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
SAM_DECODER_LAYERS = 2  # SAM's two-way transformer depth: mask_decoder.transformer.layers.0-1

INJECTION_PREFIX = "image_encoder.injection."
TEXT_PREFIX = "text_encoder."
POS_EMBED = "image_encoder.pos_embed"
REL_POS = re.compile(r"image_encoder\.blocks\.(\d+)\.attn\.rel_pos_[hw]")
DECODER_LAYER = re.compile(r"mask_decoder\.transformer\.layers\.(\d+)\.")
BLOCK = re.compile(r"image_encoder\.blocks\.(\d+)\.")
WRITER = re.compile(r"image_encoder\.injection\.writers\.(\d+)\.proj\.(weight|bias)")

#: Keys only an official EfficientSAM state dict has (its prompt encoder's padding embedding, its decoder's
#: upscaling); a DITSam of the EfficientSAM family has them too, beside its text_encoder.* keys.
EFFICIENTSAM_MARKERS = ("prompt_encoder.invalid_points.weight", "mask_decoder.final_output_upscaling_layers.")


def has_efficientsam_names(keys: Iterable[str]) -> bool:
    """True when ``keys`` (no ``module.`` prefix) hold EfficientSAM's prompt-encoder or decoder names."""
    return any(key.startswith(EFFICIENTSAM_MARKERS) for key in keys)


def only_in_dit_variants(key: str) -> bool:
    """Whether a model key (not the BERT's) belongs to a part that DIT variants add to SAM, which a start from
    SAM or from another variant leaves fresh: the text injection, W_o and the presence head (outside SAM's
    modules), and decoder layers beyond SAM's two."""
    if key.startswith(INJECTION_PREFIX) or not key.startswith(SAM_PREFIXES):
        return True
    layer = DECODER_LAYER.match(key)
    return layer is not None and int(layer.group(1)) >= SAM_DECODER_LAYERS
