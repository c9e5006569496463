"""Checkpoints of the reference DIT (the authors' code, GitHub ``wysnzzzz/DIT``), in both directions.

Their trainer saves ``{'state_dict': <EMA weights>, 'optimizer', ...}`` with a DDP ``module.`` prefix;
``visual_encoder.`` is SAM's ViT-B built for 1024 px (position tables resized here, as their code does at
run time), ``lang_encoder.bert.`` a pytorch_pretrained_bert ``BertModel`` (``LayerNorm.gamma/beta``;
its pooler is *ignored*), ``visual_encoder.probs.{i}`` the per-block text projections (our
``image_encoder.injection.writers.{i}.proj``; the ViT-H layout's shared ``prob_text`` is folded in:
``W = P_i T``, ``b = P_i t + p_i``), ``query_embeddings`` / ``self_attention`` unused (*ignored*). The
``*_token`` and cross-attention variants of their code have no equivalent here and are refused by name.
Settings of a model that differ from what their code runs are reported, one note each. The evidence,
file by file, is in ``docs/checkpoints.md``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from ditsam.model.checkpoints.files import read_checkpoint_file, strip_module_prefix
from ditsam.model.checkpoints.keys import INJECTION_PREFIX, POS_EMBED, REL_POS, TEXT_PREFIX, WRITER, StateDict
from ditsam.model.checkpoints.loadable import LoadableModel
from ditsam.model.checkpoints.matching import apply_state_dict, fit_shape
from ditsam.model.checkpoints.report import CheckpointError, LoadReport
from ditsam.model.config import DITSamConfig

logger = logging.getLogger(__name__)

REFERENCE_MAX_TOKENS = 20
REFERENCE_IMAGE_SIZE = 512

#: Key prefixes only the authors' files have: their ViT and their BERT.
REFERENCE_PREFIXES = ("visual_encoder.", "lang_encoder.")
#: One text projection per ViT block (L-DIT, E-DIT) and the single one of ``image_encoder_e2e_token.py``.
REF_PROBS = re.compile(r"visual_encoder\.probs\.(\d+)\.(weight|bias)")
REF_SINGLE_PROBS = re.compile(r"visual_encoder\.probs\.(weight|bias)")
_REF_PROB_TEXT = re.compile(r"visual_encoder\.prob_text\.(weight|bias)")
_REF_BERT = re.compile(r"lang_encoder\.(?:bert|lang_encoder)\.(.+)")
_REF_IGNORED = re.compile(r"query_embeddings|self_attention\..+|lang_encoder\.(?:bert|lang_encoder)\.pooler\..+")
_REF_UNSUPPORTED: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"visual_encoder\.tokens"), "the *_token variants (learned tensors added to the text positions)"),
    (
        re.compile(r"visual_encoder\.(cross|ln)\..+"),
        "the cross-attention variants (BERT features querying the ViT's text tokens)",
    ),
    (re.compile(r"visual_encoder\.(sas|adapter|gate)\..+"), "an experimental variant of the reference code"),
)


def _bert_name(rest: str) -> str:
    """pytorch_pretrained_bert -> transformers BertModel names (old LayerNorm.gamma/beta)."""
    return re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", rest))


def _fold(
    outer: tuple[torch.Tensor, torch.Tensor], inner: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One Linear equal to ``outer(inner(x))``: (W_o W_i, W_o b_i + b_o), computed in float64."""
    (w_out, b_out), (w_in, b_in) = outer, inner
    weight = w_out.double() @ w_in.double()
    bias = w_out.double() @ b_in.double() + b_out.double()
    return weight.to(w_out.dtype), bias.to(b_out.dtype)


def _convert_reference(
    state_dict: Mapping[str, torch.Tensor], config: DITSamConfig
) -> tuple[StateDict, list[str], list[str]]:
    """Rename a reference state dict; returns (our state dict, ignored keys, notes). No resizing."""
    state_dict = strip_module_prefix(state_dict)
    converted: StateDict = {}
    ignored: list[str] = []
    notes: list[str] = []
    probs: dict[int, dict[str, torch.Tensor]] = {}
    single: dict[str, torch.Tensor] = {}
    prob_text: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        for pattern, variant in _REF_UNSUPPORTED:
            if pattern.fullmatch(key):
                raise CheckpointError(
                    f"reference key {key!r} belongs to {variant}, which ditsam does not implement; "
                    f"only the layer-wise (L-DIT), end-to-end (E-DIT) and decoder-only variants convert"
                )
        if _REF_IGNORED.fullmatch(key):
            ignored.append(key)
        elif match := REF_PROBS.fullmatch(key):
            probs.setdefault(int(match.group(1)), {})[match.group(2)] = tensor
        elif match := REF_SINGLE_PROBS.fullmatch(key):
            single[match.group(1)] = tensor
        elif match := _REF_PROB_TEXT.fullmatch(key):
            prob_text[match.group(1)] = tensor
        elif match := _REF_BERT.fullmatch(key):
            converted[TEXT_PREFIX + "bert." + _bert_name(match.group(1))] = tensor
        elif key.startswith("visual_encoder."):
            converted["image_encoder." + key[len("visual_encoder.") :]] = tensor
        elif key.startswith(("prompt_encoder.", "mask_decoder.", "text_proj.")):
            converted[key] = tensor
        else:
            raise CheckpointError(
                f"unknown key {key!r} in a reference DIT checkpoint (expected visual_encoder.*, prompt_encoder.*, "
                f"mask_decoder.*, text_proj.*, lang_encoder.*)"
            )

    if single and probs:
        raise CheckpointError("reference checkpoint has both visual_encoder.probs and visual_encoder.probs.N")
    if single:
        probs = {0: single}
    for index, parts in sorted(probs.items()):
        if set(parts) != {"weight", "bias"}:
            raise CheckpointError(
                f"reference projection visual_encoder.probs.{index} lacks its {'weight' if 'bias' in parts else 'bias'}"
            )
    if prob_text and set(prob_text) != {"weight", "bias"}:
        raise CheckpointError("reference visual_encoder.prob_text lacks its weight or bias")
    if (probs or prob_text) and config.injection not in ("layerwise", "e2e"):
        raise CheckpointError(
            f"the reference checkpoint injects text into the ViT (visual_encoder.probs*), but the model is built "
            f"with injection: {config.injection}; use injection: layerwise (image_encoder_layer_wise.py) "
            f"or e2e (image_encoder_e2e.py)"
        )
    shared = (prob_text["weight"], prob_text["bias"]) if prob_text else None
    if shared is not None:
        notes.append("visual_encoder.prob_text folded into the text projections (ViT-H layout): equal up to rounding")
    for index, parts in sorted(probs.items()):
        weight, bias = parts["weight"], parts["bias"]
        # Which projections read the BERT features (and so absorb prob_text): all for L-DIT, the first for E-DIT.
        reads_text = config.injection == "layerwise" or index == 0
        if shared is not None and reads_text:
            weight, bias = _fold((weight, bias), shared)
        prefix = f"{INJECTION_PREFIX}writers.{index}.proj."
        converted[prefix + "weight"], converted[prefix + "bias"] = weight, bias
    if config.injection in ("layerwise", "e2e") and config.injection_options.static_tokens == 0:
        # Our token injections always own a (possibly empty) static-token table; the reference has none.
        converted[INJECTION_PREFIX + "static_tokens"] = torch.zeros(0, config.size.embed_dim)
    return converted, ignored, notes


def convert_reference_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: DITSamConfig, *, resize: bool = True
) -> StateDict:
    """A reference-DIT state dict (``module.`` prefix allowed) in our names, for a DITSam built from ``config``.

    ``visual_encoder.`` -> ``image_encoder.``, ``probs`` -> ``image_encoder.injection.writers.{i}.proj``
    (``prob_text`` folded in), ``lang_encoder.bert.`` -> ``text_encoder.bert.`` (``gamma/beta`` ->
    ``weight/bias``); unused reference parameters are dropped. With ``resize`` the position tables are
    resized to ``config``'s grid and attention layout, so the result loads with ``strict=True``.
    """
    converted, _, _ = _convert_reference(state_dict, config)
    if not resize:
        return converted
    size = config.size
    head_dim = size.embed_dim // size.num_heads
    for key, tensor in list(converted.items()):
        if key == POS_EMBED:
            shape: tuple[int, ...] = (1, config.grid, config.grid, size.embed_dim)
        elif match := REL_POS.fullmatch(key):
            block = int(match.group(1))
            is_global = config.attention == "global" or block in size.global_attn_indexes
            shape = (2 * (config.grid if is_global else config.window_size) - 1, head_dim)
        else:
            continue
        if tuple(tensor.shape) != shape:
            fitted = fit_shape(key, tensor, shape)
            if fitted is None:
                raise CheckpointError(f"{key}: {tuple(tensor.shape)} in the checkpoint cannot be resized to {shape}")
            converted[key] = fitted
    return converted


def _reference_notes(config: DITSamConfig) -> list[str]:
    """Settings of ``config`` that differ from what the reference code runs (outputs will differ)."""
    notes = []
    if config.attention != "global":
        notes.append("the reference runs every ViT block with global attention; this model uses windowed blocks")
    if config.mask_text_padding:
        notes.append("the reference attends to [PAD] tokens; this model masks them (mask_text_padding: true)")
    if config.text.hidden_layer != 1:
        notes.append(
            f"the reference feeds BERT's first layer; this model uses text.hidden_layer={config.text.hidden_layer}"
        )
    if config.multimask_output:
        notes.append("the reference predicts one mask (token 0); this model has multimask_output: true")
    if not config.upsample_align_corners:
        notes.append("the reference upsamples with align_corners=True; this model uses False")
    if config.image_size != REFERENCE_IMAGE_SIZE:
        notes.append(f"the reference runs at {REFERENCE_IMAGE_SIZE} px; this model at {config.image_size}")
    if config.text.max_tokens != REFERENCE_MAX_TOKENS:
        notes.append(f"the reference uses {REFERENCE_MAX_TOKENS} text tokens; this model {config.text.max_tokens}")
    return notes


def load_reference_state_dict(
    model: LoadableModel, state_dict: Mapping[str, torch.Tensor], *, source: str = "<state dict>"
) -> LoadReport:
    """Load a reference-DIT state dict into ``model``: renamed as :func:`convert_reference_state_dict`,
    position tables resized, strict on every other key (only zero-size parameters may be absent)."""
    converted, ignored, notes = _convert_reference(state_dict, model.config)
    differences = _reference_notes(model.config)
    for note in differences:
        logger.warning("loading reference weights from %s: %s", source, note)
    return apply_state_dict(
        model,
        converted,
        kind="reference DIT",
        source=source,
        classify_missing=lambda key: None,
        ignored=ignored,
        notes=notes + differences,
    )


def load_reference_checkpoint(model: LoadableModel, path: str | Path) -> LoadReport:
    """Load a checkpoint written by the authors' trainer (``{'state_dict': ..., 'optimizer': ...}``, EMA
    weights, ``module.`` prefix) into ``model``; see the module docstring and docs/checkpoints.md."""
    state_dict, _ = read_checkpoint_file(path)
    return load_reference_state_dict(model, state_dict, source=str(path))


def to_reference_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    config: DITSamConfig,
    *,
    prefix: str = "module.",
    old_bert_names: bool = False,
) -> StateDict:
    """Our state dict in the reference code's names (the inverse of :func:`convert_reference_state_dict`).

    For side-by-side runs with the authors' code and for tests. Tensors keep our shapes (the reference
    resizes position tables at run time). ``old_bert_names`` writes ``LayerNorm.gamma/beta``. Only
    what the reference can express converts: L-DIT / E-DIT with text width = ViT width, no static tokens.
    """
    if config.injection not in ("none", "layerwise", "e2e"):
        raise ValueError(f"the reference code has no equivalent of injection: {config.injection}")
    result: StateDict = {}
    for key, tensor in state_dict.items():
        if key.startswith(TEXT_PREFIX + "bert."):
            rest = key[len(TEXT_PREFIX + "bert.") :]
            if old_bert_names:
                rest = re.sub(
                    r"LayerNorm\.weight$", "LayerNorm.gamma", re.sub(r"LayerNorm\.bias$", "LayerNorm.beta", rest)
                )
            name = "lang_encoder.bert." + rest
        elif key == INJECTION_PREFIX + "static_tokens":
            if tensor.numel():
                raise ValueError("the reference code has no static tokens (static_tokens must be 0)")
            continue
        elif match := WRITER.fullmatch(key):
            if tensor.ndim == 2 and tensor.shape[0] != tensor.shape[1]:
                raise ValueError(
                    f"{key} maps {tensor.shape[1]} -> {tensor.shape[0]}: the reference's probs are square "
                    f"(text width = ViT width)"
                )
            name = f"visual_encoder.probs.{match.group(1)}.{match.group(2)}"
        elif key.startswith(INJECTION_PREFIX):
            raise ValueError(f"{key} has no equivalent in the reference code")
        elif key.startswith("image_encoder."):
            name = "visual_encoder." + key[len("image_encoder.") :]
        else:
            name = key
        result[prefix + name] = tensor
    return result
