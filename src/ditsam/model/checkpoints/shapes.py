"""The architecture a state dict holds, read from its tensor shapes: the :func:`~ditsam.model.config.reference_config`
of an authors' DIT file (:func:`reference_config_from_state_dict`) and of an official SAM file paired with a BERT
as a start for training (:func:`sam_start_config`). Only shapes are read, so ``meta`` tensors do."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import get_args

import torch

from ditsam.model.checkpoints.files import strip_module_prefix
from ditsam.model.checkpoints.hf_sam import official_sam_names
from ditsam.model.checkpoints.keys import DECODER_LAYER, SAM_DECODER_LAYERS
from ditsam.model.checkpoints.reference import (
    REF_PROBS,
    REF_SINGLE_PROBS,
    REFERENCE_IMAGE_SIZE,
    REFERENCE_MAX_TOKENS,
)
from ditsam.model.checkpoints.report import CheckpointError
from ditsam.model.config import BACKBONES, DITSamConfig, Injection, reference_config

#: BERT whose config and tokenizer an authors' checkpoint is paired with (its weights are in the file).
DEFAULT_TEXT_MODEL = "bert-base-uncased"
#: Attention heads of SAM's mask decoder: the weights' shapes do not tell, every SAM and DIT file uses 8.
SAM_DECODER_HEADS = 8
#: Injections an authors' checkpoint can hold: L-DIT and E-DIT share their key names, "none" is decoder-only.
REFERENCE_INJECTIONS = ("layerwise", "e2e", "none")


def _shape(state_dict: Mapping[str, torch.Tensor], key: str, source: str) -> tuple[int, ...]:
    tensor = state_dict.get(key)
    if tensor is None:
        raise CheckpointError(
            f"{source}: {key} is missing, so the architecture of this reference DIT checkpoint cannot be "
            f"read from its weights; pass config= to say what it holds"
        )
    return tuple(tensor.shape)


def _layer_count(state_dict: Mapping[str, torch.Tensor], pattern: re.Pattern[str], what: str, source: str) -> int:
    indices = {int(m.group(1)) for m in (pattern.match(key) for key in state_dict) if m}
    if not indices:
        raise CheckpointError(f"{source}: no {what} keys, so the architecture cannot be read from the weights")
    return max(indices) + 1


def reference_config_from_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    *,
    injection: Injection | None = None,
    text_name_or_path: str = DEFAULT_TEXT_MODEL,
    source: str = "<state dict>",
) -> DITSamConfig:
    """The :func:`~ditsam.model.config.reference_config` that fits an authors' state dict (their names,
    ``module.`` prefix allowed). Only shapes are read, so ``meta`` tensors do.

    ViT width, patch and MLP ratio from ``visual_encoder.patch_embed`` / ``blocks.0.mlp``; depth from the
    ``blocks.N`` keys; heads from the relative-position tables (width / head dim) -- SAM's ViT-B/L/H are named
    as such, anything else is a custom backbone. Decoder depth from ``mask_decoder.transformer.layers.N``,
    its width and MLP from their tensors (heads: SAM's 8). Injection: L-DIT when there is one
    ``visual_encoder.probs.N`` per block (``injection="e2e"`` for an E-DIT file, whose keys are the same),
    E-DIT without refresh for a single ``visual_encoder.probs``, decoder-only ("none") without any.
    The model input is the reference's 512 px, BERT's first layer, 20 tokens, [PAD] attended.
    """
    state = strip_module_prefix(state_dict)
    settings = _architecture_settings(state, encoder="visual_encoder", source=source)

    single = any(REF_SINGLE_PROBS.fullmatch(key) for key in state)
    layered = any(REF_PROBS.fullmatch(key) for key in state)
    found: Injection = "e2e" if single else "layerwise" if layered else "none"
    if injection is not None:
        if injection not in REFERENCE_INJECTIONS:
            raise ValueError(
                f"injection={injection!r}: an authors' checkpoint holds one of {', '.join(REFERENCE_INJECTIONS)}"
            )
        if (injection == "none") != (found == "none"):
            holds = (
                "no text projections (visual_encoder.probs*)"
                if found == "none"
                else "text projections (visual_encoder.probs*)"
            )
            raise CheckpointError(
                f"{source} has {holds}, so it cannot be loaded with injection={injection!r}"
                + ("; it is a decoder-only model (injection='none')" if found == "none" else "")
            )
    chosen = injection or found

    settings.update(
        injection=chosen,
        text={"name_or_path": text_name_or_path, "max_tokens": REFERENCE_MAX_TOKENS},
    )
    if single and chosen == "e2e":
        settings["injection_options"] = {
            "refine_text_per_layer": False
        }  # image_encoder_e2e_token.py: one projection, no refresh
    return reference_config(**settings)


def _architecture_settings(state: Mapping[str, torch.Tensor], *, encoder: str, source: str) -> dict[str, object]:
    """The :func:`~ditsam.model.config.reference_config` fields that the shapes of a SAM-style state dict
    tell (no ``module.`` prefix): ViT size, patch, MLP ratio, decoder width, depth and MLP. ``encoder`` is the
    image encoder's key prefix: ``visual_encoder`` (the authors' files) or ``image_encoder`` (official SAM)."""
    width, _, patch, _ = _shape(state, f"{encoder}.patch_embed.proj.weight", source)
    depth = _layer_count(state, re.compile(rf"{re.escape(encoder)}\.blocks\.(\d+)\."), f"{encoder}.blocks.N", source)
    rel_pos = state.get(f"{encoder}.blocks.0.attn.rel_pos_h")
    if rel_pos is not None:
        head_dim = int(rel_pos.shape[-1])
        if head_dim < 1 or width % head_dim:
            raise CheckpointError(
                f"{source}: {encoder}.blocks.0.attn.rel_pos_h has head dim {head_dim}, which does not divide "
                f"the width {width}"
            )
        num_heads = width // head_dim
    else:
        known = [
            size.num_heads
            for size in BACKBONES.values()
            if size.family == "sam" and (size.embed_dim, size.depth) == (width, depth)
        ]
        if not known:
            raise CheckpointError(
                f"{source}: no relative-position tables to read the attention heads of a width-{width}, "
                f"{depth}-block ViT from; pass config="
            )
        num_heads = known[0]
    mlp_hidden = _shape(state, f"{encoder}.blocks.0.mlp.lin1.weight", source)[0]
    prompt_dim = _shape(state, "mask_decoder.iou_token.weight", source)[-1]
    decoder_layers = _layer_count(state, DECODER_LAYER, "mask_decoder.transformer.layers.N", source)
    if decoder_layers < SAM_DECODER_LAYERS:
        raise CheckpointError(f"{source}: the mask decoder has {decoder_layers} two-way layers, fewer than SAM's 2")
    decoder_mlp = _shape(state, "mask_decoder.transformer.layers.0.mlp.lin1.weight", source)[0]
    settings: dict[str, object] = dict(
        patch_size=patch,
        image_size=REFERENCE_IMAGE_SIZE,
        mlp_ratio=mlp_hidden / width,
        prompt_embed_dim=prompt_dim,
        extra_decoder_layers=decoder_layers - SAM_DECODER_LAYERS,
        decoder_mlp_dim=decoder_mlp,
        decoder_num_heads=SAM_DECODER_HEADS,
    )
    named = [  # SAM-style files (the authors' DIT, official SAM) name SAM's sizes only
        name
        for name, size in BACKBONES.items()
        if size.family == "sam" and (size.embed_dim, size.depth, size.num_heads) == (width, depth, num_heads)
    ]
    if named:
        settings["backbone"] = named[0]
    else:
        settings.update(backbone="custom", embed_dim=width, depth=depth, num_heads=num_heads)
    return settings


def _start_injection(injection: Injection | None) -> Injection:
    """The injection of a model started from official SAM / EfficientSAM weights: L-DIT unless named."""
    chosen = injection or "layerwise"
    if chosen not in get_args(Injection):
        raise ValueError(f"injection={chosen!r} is not one of {', '.join(get_args(Injection))}")
    return chosen


def sam_start_config(
    state_dict: Mapping[str, torch.Tensor],
    *,
    text_name_or_path: str,
    injection: Injection | None = None,
    source: str = "<state dict>",
) -> DITSamConfig:
    """The :func:`~ditsam.model.config.reference_config` for training from an official SAM state dict (SAM's
    names, or a transformers ``SamModel``'s) paired with the BERT ``text_name_or_path``: ViT-B/L/H (or a
    custom size) and the decoder read from the shapes as in :func:`reference_config_from_state_dict`, at the
    reference's 512 px, with ``injection`` (default "layerwise", L-DIT). Only shapes are read."""
    state, _ = official_sam_names(strip_module_prefix(state_dict), source=source)
    chosen = _start_injection(injection)
    settings = _architecture_settings(state, encoder="image_encoder", source=source)
    settings.update(injection=chosen, text={"name_or_path": text_name_or_path, "max_tokens": REFERENCE_MAX_TOKENS})
    return reference_config(**settings)


#: Attention head width of EfficientSAM's ViTs (192 / 3, 384 / 6); its files carry no table that tells it.
EFFICIENTSAM_HEAD_DIM = 64


def efficientsam_start_config(
    state_dict: Mapping[str, torch.Tensor],
    *,
    text_name_or_path: str,
    injection: Injection | None = None,
    source: str = "<state dict>",
) -> DITSamConfig:
    """As :func:`sam_start_config`, for an official EfficientSAM state dict (its names): ``efficientsam_ti`` /
    ``efficientsam_s`` when the width and depth are theirs, else a custom EfficientSAM-family ViT with heads
    of :data:`EFFICIENTSAM_HEAD_DIM`; decoder width, depth and MLP from the shapes; 512 px. Only shapes are read."""
    state = strip_module_prefix(state_dict)
    chosen = _start_injection(injection)
    width, _, patch, _ = _shape(state, "image_encoder.patch_embed.proj.weight", source)
    depth = _layer_count(state, re.compile(r"image_encoder\.blocks\.(\d+)\."), "image_encoder.blocks.N", source)
    decoder_layers = _layer_count(state, DECODER_LAYER, "mask_decoder.transformer.layers.N", source)
    if decoder_layers < SAM_DECODER_LAYERS:
        raise CheckpointError(f"{source}: the mask decoder has {decoder_layers} two-way layers, fewer than 2")
    settings: dict[str, object] = dict(
        patch_size=patch,
        image_size=REFERENCE_IMAGE_SIZE,
        mlp_ratio=_shape(state, "image_encoder.blocks.0.mlp.fc1.weight", source)[0] / width,
        prompt_embed_dim=_shape(state, "mask_decoder.iou_token.weight", source)[-1],
        extra_decoder_layers=decoder_layers - SAM_DECODER_LAYERS,
        decoder_mlp_dim=_shape(state, "mask_decoder.transformer.layers.0.mlp.layers.0.0.weight", source)[0],
        decoder_num_heads=SAM_DECODER_HEADS,
        injection=chosen,
        text={"name_or_path": text_name_or_path, "max_tokens": REFERENCE_MAX_TOKENS},
    )
    named = [
        name
        for name, size in BACKBONES.items()
        if size.family == "efficientsam" and (size.embed_dim, size.depth) == (width, depth)
    ]
    if named:
        settings["backbone"] = named[0]
    else:
        if width % EFFICIENTSAM_HEAD_DIM:
            raise CheckpointError(f"{source}: a width-{width} EfficientSAM ViT has no heads of 64; pass config=")
        settings.update(
            backbone="custom",
            family="efficientsam",
            embed_dim=width,
            depth=depth,
            num_heads=width // EFFICIENTSAM_HEAD_DIM,
        )
    return reference_config(**settings)
