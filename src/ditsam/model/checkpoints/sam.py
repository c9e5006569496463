"""Official SAM checkpoints (``sam_vit_{b,l,h}_*.pth``, or a transformers ``SamModel`` state dict).

Their keys are the names our SAM modules keep. Two shape differences are expected and resized:
``image_encoder.pos_embed`` (SAM: 64x64 grid for 1024 px) bicubically to the model's grid, and the
``*.attn.rel_pos_h/w`` tables (SAM: 27 rows in window blocks, 127 in global blocks) linearly to the
model's layout -- the interpolations SAM itself applies at run time. Parameters SAM does not have (text
injection, ``text_proj`` = W_o, decoder layers beyond SAM's two) are reported *fresh*; the BERT is *kept*.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from ditsam.model.checkpoints.files import read_checkpoint_file, strip_module_prefix
from ditsam.model.checkpoints.formats import Format, detect_format
from ditsam.model.checkpoints.hf_sam import official_sam_names
from ditsam.model.checkpoints.keys import REL_POS, TEXT_PREFIX, only_in_dit_variants
from ditsam.model.checkpoints.loadable import LoadableModel
from ditsam.model.checkpoints.matching import apply_state_dict
from ditsam.model.checkpoints.report import CheckpointError, LoadReport


def classify_sam_missing(key: str) -> str | None:
    """What a model key absent from a SAM-style checkpoint is: the BERT "kept", the text injection, W_o and
    decoder layers beyond SAM's two "fresh", a rel-pos table "zero", anything else None (an error)."""
    if key.startswith(TEXT_PREFIX):
        return "kept"
    if only_in_dit_variants(key):
        return "fresh"
    if REL_POS.fullmatch(key):
        return "zero"
    return None


def sam_weights_into(
    model: LoadableModel, state_dict: Mapping[str, torch.Tensor], *, source: str = "<state dict>"
) -> LoadReport:
    """Load a state dict known to be SAM's (official or transformers names) into ``model``'s SAM parts.

    Strict on SAM keys: every checkpoint key must exist in the model; every ``image_encoder.*``,
    ``prompt_encoder.*``, ``mask_decoder.*`` key of the model must be in the checkpoint, except the text
    injection and decoder layers beyond SAM's two (fresh) and rel-pos tables (zeroed = no bias, reported);
    shapes must match except ``pos_embed`` and the rel-pos tables, which are resized. The BERT is kept.
    """
    if model.config.model_family != "sam":
        raise CheckpointError(
            f"{source} is a SAM checkpoint, but the model is EfficientSAM ({model.config.backbone}): build it with "
            f"model.backbone: vit_b, vit_l or vit_h"
        )
    state_dict, notes = official_sam_names(strip_module_prefix(state_dict), source=source)
    return apply_state_dict(
        model, state_dict, kind="sam", source=source, classify_missing=classify_sam_missing, notes=notes
    )


def load_sam_state_dict(
    model: LoadableModel, state_dict: Mapping[str, torch.Tensor], *, source: str = "<state dict>"
) -> LoadReport:
    """:func:`sam_weights_into`, refusing by name a state dict of the authors' DIT or of a DITSam."""
    kind = detect_format(state_dict)
    if kind is Format.REFERENCE:
        raise CheckpointError(
            f"{source} is a reference DIT checkpoint (visual_encoder.* / lang_encoder.* keys), not a SAM one: "
            f"use load_reference_checkpoint or load_checkpoint"
        )
    if kind is Format.DITSAM:
        raise CheckpointError(
            f"{source} is a full DITSam state dict (text_encoder.* keys), not a SAM one: use load_checkpoint"
        )
    if kind is Format.EFFICIENTSAM:
        raise CheckpointError(f"{source} is an EfficientSAM checkpoint, not a SAM one: use load_checkpoint")
    return sam_weights_into(model, state_dict, source=source)


def load_sam_checkpoint(model: LoadableModel, path: str | Path) -> LoadReport:
    """Load an official SAM checkpoint file (``sam_vit_{b,l,h}_*.pth``) into ``model``; see :func:`load_sam_state_dict`.

    Raises FileNotFoundError for a missing file and :class:`CheckpointError` (a ValueError) for an
    unreadable file, a file without a state dict, or one that does not fit the model (the message names
    the keys, their shapes and the backbone the checkpoint looks like).
    """
    state_dict, _ = read_checkpoint_file(path)
    return load_sam_state_dict(model, state_dict, source=str(path))
