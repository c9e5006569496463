"""Where a model comes from: one entry point for every source.

:func:`load_pretrained` is what :meth:`DITSam.from_pretrained <ditsam.model.dit.DITSam.from_pretrained>`,
:meth:`Segmenter.from_pretrained <ditsam.api.Segmenter.from_pretrained>` and the ``predict``, ``serve``,
``eval`` and ``export-onnx`` commands call. A *source* is one of:

1. a local folder written by ``save_pretrained``: strict, it carries its own config;
2. a Hugging Face Hub repo id ``owner/name`` (``revision=`` a branch, tag or commit), resolved with
   :func:`huggingface_hub.snapshot_download`: its cache, downloads when missing, nothing but the cache
   when ``HF_HUB_OFFLINE=1``. The snapshot is then a folder as in 1, or holds one checkpoint file as in 3;
   ``owner/name/path/file.pth`` fetches that one file of the repo (:func:`huggingface_hub.hf_hub_download`);
3. a checkpoint file (``.pth``, ``.pt``, ``.bin``). The authors' released DIT file needs no config: the
   architecture is read from its tensor shapes (:func:`reference_config_from_state_dict`) and built with
   the reference behaviour of :func:`~ditsam.model.config.reference_config`; its BERT weights are in the
   file, BERT's config and tokenizer come from ``text_name_or_path`` (``bert-base-uncased`` through the
   Hub, as transformers resolves it). Other files (a flat DITSam state dict) need ``config=``;
4. an official SAM checkpoint is refused: it holds no text model (use it as ``train.init_checkpoint``, where
   :func:`resolve_init_checkpoint` also takes it by name: ``sam_vit_b``, ``sam_vit_l``, ``sam_vit_h``). Only
   :func:`load_pretrained_with_report` with ``sam_start=True`` (``ditsam convert SAM --text-model BERT``)
   pairs it with a BERT into an untrained starting point for training (:func:`sam_start_config`).

Files are read once, weights only, memory-mapped (:func:`~ditsam.model.weights.read_checkpoint_file`):
the optimizer state of a training checkpoint is dropped with the wrapper and never read into memory.
Resolving a source to a local path (the Hub, SAM checkpoints by name) is :mod:`ditsam.model.resolve`;
this module loads what it resolves. Nothing here runs at import time.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import get_args

import torch

from ditsam.model.config import BACKBONES, DITSamConfig, Injection, reference_config
from ditsam.model.loadable import LoadableModel
from ditsam.model.resolve import (  # noqa: F401  (resolving a source, importable from here too)
    CHECKPOINT_SUFFIXES,
    ResolvedSource,
    hub_reference,
    resolve_init_checkpoint,
    resolve_source,
)
from ditsam.model.weights import (
    REFERENCE_IMAGE_SIZE,
    REFERENCE_MAX_TOKENS,
    SAM_DECODER_LAYERS,
    CheckpointError,
    LoadReport,
    detect_format,
    load_any_state_dict,
    load_ditsam_directory_with_report,
    load_sam_state_dict,
    read_checkpoint_file,
    strip_module_prefix,
)

logger = logging.getLogger(__name__)

#: BERT whose config and tokenizer an authors' checkpoint is paired with (its weights are in the file).
DEFAULT_TEXT_MODEL = "bert-base-uncased"
#: Attention heads of SAM's mask decoder: the weights' shapes do not tell, every SAM and DIT file uses 8.
SAM_DECODER_HEADS = 8
#: Injections an authors' checkpoint can hold: L-DIT and E-DIT share their key names, "none" is decoder-only.
REFERENCE_INJECTIONS = ("layerwise", "e2e", "none")

_REF_DECODER_LAYER = re.compile(r"mask_decoder\.transformer\.layers\.(\d+)\.")
_REF_LAYER_PROBS = re.compile(r"visual_encoder\.probs\.\d+\.weight")
_REF_SINGLE_PROBS = "visual_encoder.probs.weight"


# ---------------------------------------------------------------------------------------------------
# The architecture of an authors' checkpoint, from its shapes
# ---------------------------------------------------------------------------------------------------
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

    single = _REF_SINGLE_PROBS in state
    layered = any(_REF_LAYER_PROBS.fullmatch(key) for key in state)
    found: Injection = "e2e" if single else "layerwise" if layered else "none"
    if injection is not None:
        if injection not in REFERENCE_INJECTIONS:
            raise ValueError(
                f"injection={injection!r}: an authors' checkpoint holds one of {', '.join(REFERENCE_INJECTIONS)}"
            )
        if (injection == "none") != (found == "none"):
            holds = "no text projections (visual_encoder.probs*)" if found == "none" else "text projections (visual_encoder.probs*)"
            raise CheckpointError(
                f"{source} has {holds}, so it cannot be loaded with injection={injection!r}"
                + ("; it is a decoder-only model (injection='none')" if found == "none" else "")
            )
    chosen = injection or found

    settings.update(
        injection=chosen, text={"name_or_path": text_name_or_path, "max_tokens": REFERENCE_MAX_TOKENS},
    )
    if single and chosen == "e2e":
        settings["injection_options"] = {"refine_text_per_layer": False}  # image_encoder_e2e_token.py: one projection, no refresh
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
        known = [size.num_heads for size in BACKBONES.values() if (size.embed_dim, size.depth) == (width, depth)]
        if not known:
            raise CheckpointError(
                f"{source}: no relative-position tables to read the attention heads of a width-{width}, "
                f"{depth}-block ViT from; pass config="
            )
        num_heads = known[0]
    mlp_hidden = _shape(state, f"{encoder}.blocks.0.mlp.lin1.weight", source)[0]
    prompt_dim = _shape(state, "mask_decoder.iou_token.weight", source)[-1]
    decoder_layers = _layer_count(state, _REF_DECODER_LAYER, "mask_decoder.transformer.layers.N", source)
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
    named = [name for name, size in BACKBONES.items() if (size.embed_dim, size.depth, size.num_heads) == (width, depth, num_heads)]
    if named:
        settings["backbone"] = named[0]
    else:
        settings.update(backbone="custom", embed_dim=width, depth=depth, num_heads=num_heads)
    return settings


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
    from ditsam.model.sam.hf_names import hf_sam_to_official

    state = strip_module_prefix(state_dict)
    if any(k.startswith(("vision_encoder.", "shared_image_embedding.")) for k in state):
        try:
            state = hf_sam_to_official(state)
        except ValueError as error:
            raise CheckpointError(f"{source}: {error}") from error
    chosen = injection or "layerwise"
    if chosen not in get_args(Injection):
        raise ValueError(f"injection={chosen!r} is not one of {', '.join(get_args(Injection))}")
    settings = _architecture_settings(state, encoder="image_encoder", source=source)
    settings.update(injection=chosen, text={"name_or_path": text_name_or_path, "max_tokens": REFERENCE_MAX_TOKENS})
    return reference_config(**settings)


# ---------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------
def _refuse_sam(source: str) -> CheckpointError:
    return CheckpointError(
        f"{source} is an official SAM checkpoint (image_encoder.*, prompt_encoder.*, mask_decoder.* keys): it "
        f"holds no text model (no BERT, no text projection, no text injection), so it does not hold every weight "
        f"a text-prompted model needs. Train from it instead: train.init_checkpoint={source}"
    )


def _sam_needs_text(source: str) -> CheckpointError:
    return CheckpointError(
        f"{source} is an official SAM checkpoint: it holds no text model (no BERT, no text projection, no text "
        f"injection). To turn it into a starting point for training, name the BERT to pair it with: "
        f"text_name_or_path= (ditsam convert: --text-model NAME_OR_DIR, e.g. bert-base-uncased)"
    )


def _load_sam_start(
    cls: type[LoadableModel],
    path: Path,
    state_dict: Mapping[str, torch.Tensor],
    *,
    injection: Injection | None,
    config: DITSamConfig | None,
    text_name_or_path: str | None,
) -> tuple[LoadableModel, LoadReport]:
    """SAM's weights (strict, position tables resized) + a BERT's weights, the DIT parts fresh: a start for training."""
    if config is None:
        if text_name_or_path is None:
            raise _sam_needs_text(str(path))
        config = sam_start_config(state_dict, text_name_or_path=text_name_or_path, injection=injection, source=str(path))
        logger.info("%s: SAM %s, injection %s, BERT %s", path, config.backbone, config.injection, text_name_or_path)
    elif injection is not None or text_name_or_path is not None:
        raise ValueError("injection= and text_name_or_path= describe a file without config; with config= set them there")
    model = cls(config, load_text_weights=True)  # BERT's weights from config.text.name_or_path
    report = load_sam_state_dict(model, state_dict, source=str(path))
    bert = config.text.name_or_path
    report.notes.append(
        f"BERT weights ({len(report.kept)} text_encoder.* tensors, listed as kept) loaded from {bert}"
    )
    untrained = "W_o (text_proj)" if config.injection == "none" else "the text injection and W_o (text_proj)"
    report.notes.append(
        f"{untrained} freshly initialised (listed as fresh): UNTRAINED, the model does not follow "
        f"text yet; train it (train.init_checkpoint=<this model>) before use"
    )
    report.notes.append(
        f"model input {config.image_size} px (reference code); SAM's position tables were resized to it"
    )
    return model, report


def _load_file(
    cls: type[LoadableModel],
    path: Path,
    *,
    injection: Injection | None,
    config: DITSamConfig | None,
    text_name_or_path: str | None,
    sam_start: bool = False,
) -> tuple[LoadableModel, LoadReport]:
    if config is None and path.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise NotADirectoryError(
            f"{path} is a file, not a ditsam checkpoint folder; without config= only checkpoint files "
            f"({', '.join(CHECKPOINT_SUFFIXES)}) holding the authors' DIT weights load"
        )
    state_dict, wrapper = read_checkpoint_file(path)  # the wrapper (optimizer, scheduler) is dropped here
    kind = detect_format(state_dict)
    if kind == "sam":
        if not sam_start:
            raise _refuse_sam(str(path))
        return _load_sam_start(
            cls, path, state_dict, injection=injection, config=config, text_name_or_path=text_name_or_path
        )
    if config is None:
        if kind != "reference":
            holds = "a flat DITSam state dict" if kind == "ditsam" else "an unknown layout"
            raise CheckpointError(
                f"{path} holds {holds}: without a config only the authors' DIT checkpoints (visual_encoder.*, "
                f"lang_encoder.* keys) load; pass config= (a DITSamConfig) or give a save_pretrained folder"
            )
        config = reference_config_from_state_dict(
            state_dict, injection=injection, text_name_or_path=text_name_or_path or DEFAULT_TEXT_MODEL, source=str(path)
        )
        logger.info("%s: detected %s, injection %s", path, config.backbone, config.injection)
    elif injection is not None or text_name_or_path is not None:
        raise ValueError("injection= and text_name_or_path= describe a file without config; with config= set them there")
    model = cls(config, load_text_weights=False)
    report = load_any_state_dict(model, state_dict, source=str(path))
    del state_dict
    if wrapper is not None:
        report.notes.append(
            f"weights read from the file's {wrapper!r} entry; its other entries (optimizer, ...) dropped"
        )
    if report.fresh or report.kept:
        untrained = report.fresh + report.kept
        raise CheckpointError(
            f"{path} ({report.kind}) does not hold every weight a text-prompted model needs; missing e.g. "
            f"{', '.join(untrained[:4])} ({len(untrained)} tensors): use a trained DIT checkpoint"
        )
    return model, report


def load_pretrained(
    cls: type[LoadableModel],
    source: str | os.PathLike[str],
    *,
    revision: str | None = None,
    injection: Injection | None = None,
    config: DITSamConfig | None = None,
    text_name_or_path: str | None = None,
    cache_dir: str | Path | None = None,
    map_location: str | torch.device = "cpu",
) -> LoadableModel:
    """A ready model (eval mode, on ``map_location``) from any source (see the module docstring).

    ``revision``: branch, tag or commit of a Hub id. ``injection``: for an authors' file without config,
    "layerwise" (default, the released weights), "e2e" or "none". ``config``: the architecture of a
    checkpoint file, instead of reading it from the shapes. ``text_name_or_path``: BERT config and
    tokenizer for an authors' file (default ``bert-base-uncased``). ``cache_dir``: a Hub cache other than
    the default. A folder carries its own config: ``config``, ``injection`` and ``text_name_or_path`` are
    errors with it. Errors: FileNotFoundError naming a missing path or an unresolvable Hub id;
    :class:`~ditsam.model.weights.CheckpointError` for a file that cannot serve (a SAM file, no config).
    """
    model, _ = load_pretrained_with_report(
        cls, source, revision=revision, injection=injection, config=config, text_name_or_path=text_name_or_path,
        cache_dir=cache_dir, map_location=map_location,
    )
    return model


def load_pretrained_with_report(
    cls: type[LoadableModel],
    source: str | os.PathLike[str],
    *,
    revision: str | None = None,
    injection: Injection | None = None,
    config: DITSamConfig | None = None,
    text_name_or_path: str | None = None,
    cache_dir: str | Path | None = None,
    map_location: str | torch.device = "cpu",
    sam_start: bool = False,
) -> tuple[LoadableModel, LoadReport]:
    """:func:`load_pretrained`, also returning the :class:`~ditsam.model.weights.LoadReport` of the load
    (what was loaded, resized, ignored; its ``source`` names the resolved file or folder). Same arguments
    and errors.

    ``sam_start=True`` (``ditsam convert``) accepts an official SAM checkpoint too -- a file, a Hub file id or
    ``sam_vit_b`` / ``sam_vit_l`` / ``sam_vit_h`` by name (:func:`~ditsam.model.sam_files.fetch_sam_checkpoint`)
    -- paired with the BERT ``text_name_or_path`` (required): the reference config of the SAM's ViT size
    (:func:`sam_start_config`, ``injection`` default "layerwise"), SAM's weights loaded strictly, BERT's from
    ``text_name_or_path``, the text injection and W_o fresh (reported): an untrained starting point for
    ``train.init_checkpoint``, not a model for inference."""
    if injection is not None and injection not in get_args(Injection):
        raise ValueError(f"injection={injection!r} is not one of {', '.join(get_args(Injection))}")
    from ditsam.model.sam_files import fetch_sam_checkpoint, is_sam_name

    if sam_start and isinstance(source, str) and is_sam_name(source) and not Path(source).expanduser().exists():
        if config is None and text_name_or_path is None:
            raise _sam_needs_text(source)  # before any download
        resolved = ResolvedSource(path=fetch_sam_checkpoint(source))
    else:
        resolved = resolve_source(source, revision=revision, cache_dir=cache_dir)
    if resolved.path.is_dir():
        given = [name for name, value in (("config", config), ("injection", injection),
                                          ("text_name_or_path", text_name_or_path)) if value is not None]
        if given:
            raise ValueError(
                f"{', '.join(name + '=' for name in given)} only apply to a checkpoint file; {resolved} is a "
                f"save_pretrained folder with its own config.json"
            )
        model, report = load_ditsam_directory_with_report(cls, resolved.path)
    else:
        model, report = _load_file(
            cls, resolved.path, injection=injection, config=config, text_name_or_path=text_name_or_path,
            sam_start=sam_start,
        )
    return model.to(map_location).eval(), report
