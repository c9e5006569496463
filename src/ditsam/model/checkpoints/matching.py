"""Matching a state dict (already in our names) against a model: shapes, resizing, missing and
unexpected keys with hints, non-finite values; :func:`apply_state_dict` loads it and reports."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import torch

from ditsam.model.checkpoints.keys import (
    BLOCK,
    DECODER_LAYER,
    POS_EMBED,
    REL_POS,
    SAM_DECODER_LAYERS,
    TEXT_PREFIX,
    WRITER,
    StateDict,
)
from ditsam.model.checkpoints.loadable import LoadableModel
from ditsam.model.checkpoints.report import CheckpointError, LoadReport
from ditsam.model.config import BACKBONES, DITSamConfig
from ditsam.model.sam.position import resize_absolute_position_embedding, resize_relative_position_table

logger = logging.getLogger(__name__)


def _backbone_of_state_dict(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """vit_b / vit_l / vit_h (or a custom description) from the patch-embedding width and the block count."""
    patch = state_dict.get("image_encoder.patch_embed.proj.weight")
    blocks = [int(m.group(1)) for m in (BLOCK.match(k) for k in state_dict) if m]
    if patch is None or not blocks:
        return None
    width, depth = int(patch.shape[0]), max(blocks) + 1
    for name, size in BACKBONES.items():
        if size.embed_dim == width and size.depth == depth:
            return name
    return f"a custom ViT (width {width}, {depth} blocks)"


def _backbone_of_config(config: DITSamConfig) -> str:
    if config.backbone != "custom":
        return config.backbone
    return f"a custom ViT (width {config.size.embed_dim}, {config.size.depth} blocks)"


def fit_shape(key: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor | None:
    """``tensor`` resized to ``shape`` when ``key`` is a position table that may be resized, else None."""
    if (
        key == POS_EMBED
        and tensor.ndim == 4
        and len(shape) == 4
        and tensor.shape[0] == 1
        and tensor.shape[3] == shape[3]
    ):
        return resize_absolute_position_embedding(tensor, (shape[1], shape[2]))
    if REL_POS.fullmatch(key) and tensor.ndim == 2 and len(shape) == 2 and tensor.shape[1] == shape[1]:
        return resize_relative_position_table(tensor, shape[0])
    return None


def listing(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _unexpected_hints(keys: list[str], config: DITSamConfig) -> list[str]:
    hints = []
    layers = sorted({int(m.group(1)) for m in (DECODER_LAYER.match(k) for k in keys) if m})
    if layers:
        hints.append(
            f"the checkpoint's mask decoder has {layers[-1] + 1} two-way layers: set extra_decoder_layers: "
            f"{layers[-1] + 1 - SAM_DECODER_LAYERS} (now {config.extra_decoder_layers})"
        )
    writers = sorted({int(m.group(1)) for m in (WRITER.fullmatch(k) for k in keys) if m})
    if writers and config.injection == "e2e":
        hints.append(
            "the checkpoint refreshes the E-DIT text tokens before every block (reference image_encoder_e2e.py): "
            "set injection_options.refine_text_per_layer: true"
        )
    elif writers:
        hints.append(f"the checkpoint has text projections for DIT, but the config says injection: {config.injection}")
    if any(k.startswith(TEXT_PREFIX) for k in keys):
        hints.append(
            "the checkpoint's BERT has more layers/parameters than the configured text encoder (text.name_or_path)"
        )
    return hints


def first_non_finite(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """A sentence naming the first floating-point tensor of ``state_dict`` that holds NaN or infinite
    values (how many of each), or None when every value is finite."""
    for key, tensor in state_dict.items():
        if not tensor.is_floating_point():
            continue
        finite = torch.isfinite(tensor)
        if bool(finite.all()):
            continue
        bad, nan = int((~finite).sum()), int(torch.isnan(tensor).sum())
        return (
            f"tensor {key} {tuple(tensor.shape)} holds {bad} non-finite value(s) ({nan} NaN, {bad - nan} inf); "
            f"expected finite weights (damaged file, or saved from a diverged run): refusing to load it"
        )
    return None


def apply_state_dict(
    model: LoadableModel,
    state_dict: Mapping[str, torch.Tensor],
    *,
    kind: str,
    source: str,
    classify_missing: Callable[[str], str | None],
    allow_resize: bool = True,
    ignored: list[str] | None = None,
    notes: list[str] | None = None,
) -> LoadReport:
    """Check ``state_dict`` (already in our names) against ``model``, then load it.

    ``classify_missing(key)`` says what a model key absent from the checkpoint is: "fresh", "kept",
    "zero" (a rel-pos table: zeroed, i.e. no bias, reported fresh) or None (an error). Nothing is written
    to the model unless every check passes.
    """
    target = model.state_dict()
    config = model.config
    to_load: StateDict = {}
    resized: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    unexpected: list[str] = []
    for key, tensor in state_dict.items():
        if key not in target:
            unexpected.append(key)
            continue
        have, want = tuple(tensor.shape), tuple(target[key].shape)
        if have == want:
            to_load[key] = tensor
            continue
        fitted = fit_shape(key, tensor, want) if allow_resize else None
        if fitted is None:
            mismatched.append((key, have, want))
        else:
            to_load[key] = fitted
            resized.append((key, have, want))

    if mismatched:
        details = "; ".join(
            f"{key}: {have} in the checkpoint, {want} in the model" for key, have, want in mismatched[:5]
        )
        more = f" (and {len(mismatched) - 5} more)" if len(mismatched) > 5 else ""
        message = f"{kind} checkpoint {source} does not fit the model: {details}{more}."
        found, wanted = _backbone_of_state_dict(state_dict), _backbone_of_config(config)
        if found is not None and found != wanted:
            message += f" The checkpoint looks like a {found} image encoder; the model is {wanted}."
        raise CheckpointError(message)
    if unexpected:
        hints = _unexpected_hints(unexpected, config)
        found, wanted = _backbone_of_state_dict(state_dict), _backbone_of_config(config)
        if found is not None and found != wanted:
            hints.append(f"the checkpoint looks like a {found} image encoder; the model is {wanted}")
        raise CheckpointError(
            f"{kind} checkpoint {source} has {len(unexpected)} key(s) the model does not have: {listing(unexpected)}"
            + "".join(f"; {hint}" for hint in hints)
        )

    fresh, kept, errors, zeroed = [], [], [], []
    for key, value in target.items():
        if key in state_dict or value.numel() == 0:
            continue
        category = classify_missing(key)
        if category == "fresh":
            fresh.append(key)
        elif category == "kept":
            kept.append(key)
        elif category == "zero":
            zeroed.append(key)
            fresh.append(key)
        else:
            errors.append(key)
    if errors:
        hints = []
        layers = sorted({int(m.group(1)) for m in (DECODER_LAYER.match(k) for k in errors) if m})
        if layers:
            hints.append(
                f"; the model has mask-decoder layers {layers} that the checkpoint lacks (extra_decoder_layers)"
            )
        raise CheckpointError(
            f"{kind} checkpoint {source} lacks {len(errors)} key(s) of the model: {listing(errors)}" + "".join(hints)
        )

    bad = first_non_finite(to_load)
    if bad is not None:  # loaded silently, such weights predict empty masks for every input
        raise CheckpointError(f"{kind} checkpoint {source}: {bad}")
    for key in zeroed:
        to_load[key] = torch.zeros_like(target[key])
    result = model.load_state_dict(to_load, strict=False)
    if result.unexpected_keys:  # cannot happen after the checks above
        raise CheckpointError(f"unexpected keys while loading {source}: {result.unexpected_keys}")
    report = LoadReport(
        source=source,
        kind=kind,
        loaded=[k for k in to_load if k not in zeroed],
        resized=resized,
        fresh=fresh,
        kept=kept,
        ignored=list(ignored or []),
        notes=list(notes or []),
    )
    if zeroed:
        report.notes.append(
            f"{len(zeroed)} rel-pos table(s) missing from the checkpoint were zeroed (no position bias)"
        )
    logger.info("%s", report)
    return report
