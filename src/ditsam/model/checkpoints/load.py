"""Loading: where a model comes from (one entry point for every source), and a checkpoint into a built model.

:func:`load_pretrained` is what :meth:`DITSam.from_pretrained <ditsam.model.dit.DITSam.from_pretrained>`,
:meth:`Segmenter.from_pretrained <ditsam.api.Segmenter.from_pretrained>` and the ``predict``, ``serve``,
``eval`` and ``export-onnx`` commands call. A *source* is one of:

1. a local folder written by ``save_pretrained``: strict, it carries its own config;
2. a Hugging Face Hub repo id ``owner/name`` (``revision=`` a branch, tag or commit), resolved with
   :func:`huggingface_hub.snapshot_download`: its cache, downloads when missing, nothing but the cache
   when ``HF_HUB_OFFLINE=1``. The snapshot is then a folder as in 1, or holds one checkpoint file as in 3;
   ``owner/name/path/file.pth`` fetches that one file of the repo (:func:`huggingface_hub.hf_hub_download`);
3. a checkpoint file (``.pth``, ``.pt``, ``.bin``). The authors' released DIT file needs no config: the
   architecture is read from its tensor shapes (:func:`~ditsam.model.checkpoints.shapes.reference_config_from_state_dict`) and built with
   the reference behaviour of :func:`~ditsam.model.config.reference_config`; its BERT weights are in the
   file, BERT's config and tokenizer come from ``text_name_or_path`` (``bert-base-uncased`` through the
   Hub, as transformers resolves it). Other files (a flat DITSam state dict) need ``config=``;
4. a released checkpoint by name (``dit-refcoco``, ``dit-refcoco+``, ``dit-refcocog``, ``dit-grefcoco``,
   :mod:`~ditsam.model.checkpoints.released`): the authors' file is downloaded once and converted once, as in 3
   (``text_name_or_path`` applies to that conversion), into a ``save_pretrained`` folder in the cache, which
   every later use loads as in 1 (:func:`resolve_pretrained`);
5. an official SAM (or EfficientSAM) checkpoint is refused: it holds no text model (use it as ``train.init_checkpoint``, where
   :func:`~ditsam.model.checkpoints.hub.resolve_init_checkpoint` also takes it by name: ``sam_vit_b``, ``sam_vit_l``, ``sam_vit_h``). Only
   :func:`load_pretrained_with_report` with ``sam_start=True`` (``ditsam convert SAM --text-model BERT``)
   pairs it with a BERT into an untrained starting point for training (:func:`~ditsam.model.checkpoints.shapes.sam_start_config`).

Files are read once, weights only, memory-mapped (:func:`~ditsam.model.checkpoints.files.read_checkpoint_file`),
and their format detected once (:func:`~ditsam.model.checkpoints.formats.detect_format`): the optimizer state
of a training checkpoint is dropped with the wrapper and never read into memory. Resolving a source to a
local path (the Hub, SAM checkpoints by name) is :mod:`ditsam.model.checkpoints.hub`; this module loads
what it resolves, and :func:`load_checkpoint` loads a file or folder into a built model (``train.init_checkpoint``).
Nothing here runs at import time.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import get_args

import torch

from ditsam.model.checkpoints.ditsam_folder import (
    load_ditsam_state_dict,
    load_folder_into,
    load_folder_with_report,
    save_pretrained,
)
from ditsam.model.checkpoints.download import fetch_sam_checkpoint, is_sam_name
from ditsam.model.checkpoints.efficientsam import efficientsam_weights_into
from ditsam.model.checkpoints.efficientsam_download import fetch_efficientsam_checkpoint, is_efficientsam_name
from ditsam.model.checkpoints.files import read_checkpoint_file
from ditsam.model.checkpoints.formats import Format, detect_format
from ditsam.model.checkpoints.hub import CHECKPOINT_SUFFIXES, ResolvedSource, resolve_source
from ditsam.model.checkpoints.loadable import LoadableModel
from ditsam.model.checkpoints.matching import listing
from ditsam.model.checkpoints.reference import load_reference_state_dict
from ditsam.model.checkpoints.released import is_released_name, released_checkpoint, released_folder
from ditsam.model.checkpoints.report import CheckpointError, LoadReport
from ditsam.model.checkpoints.sam import sam_weights_into
from ditsam.model.checkpoints.shapes import (
    DEFAULT_TEXT_MODEL,
    efficientsam_start_config,
    reference_config_from_state_dict,
    sam_start_config,
)
from ditsam.model.config import DITSamConfig, Injection

logger = logging.getLogger(__name__)

#: The loader of each format, for a state dict whose format is known.
_LOADERS = {
    Format.REFERENCE: load_reference_state_dict,
    Format.SAM: sam_weights_into,
    Format.EFFICIENTSAM: efficientsam_weights_into,
    Format.DITSAM: load_ditsam_state_dict,
}


def _load_as(
    model: LoadableModel, state_dict: Mapping[str, torch.Tensor], kind: Format | None, *, source: str
) -> LoadReport:
    """Load a state dict of the detected format ``kind`` (:func:`~ditsam.model.checkpoints.formats.detect_format`)
    into ``model``: the authors' DIT, official / transformers SAM, or a flat DITSam state dict (strict)."""
    if kind is None:
        raise CheckpointError(
            f"{source}: unknown checkpoint layout (first keys: {listing(list(state_dict), 5)}); expected SAM "
            f"(image_encoder.*), EfficientSAM (prompt_encoder.invalid_points, ...), reference DIT (visual_encoder.*) "
            f"or DITSam (text_encoder.*) names"
        )
    return _LOADERS[kind](model, state_dict, source=source)


def load_checkpoint(model: LoadableModel, path: str | Path) -> LoadReport:
    """Load whatever ``path`` is into ``model``: a save_pretrained folder (strict; config differences are
    reported), a reference-DIT checkpoint (``visual_encoder.*``), an official / transformers SAM checkpoint
    (``image_encoder.*`` / ``vision_encoder.*``), or a flat DITSam state dict (strict)."""
    path = Path(path)
    if path.is_dir():
        return load_folder_into(model, path)
    state_dict, _ = read_checkpoint_file(path)
    return _load_as(model, state_dict, detect_format(state_dict), source=str(path))


#: How messages name the two families of official files without a text model.
_FAMILY_NAMES = {Format.SAM: "SAM", Format.EFFICIENTSAM: "EfficientSAM"}
#: The config of a SAM-family file paired with a BERT, by its format.
_START_CONFIGS = {Format.SAM: sam_start_config, Format.EFFICIENTSAM: efficientsam_start_config}


def _refuse_sam(source: str, kind: Format = Format.SAM) -> CheckpointError:
    return CheckpointError(
        f"{source} is an official {_FAMILY_NAMES[kind]} checkpoint (image_encoder.*, prompt_encoder.*, "
        f"mask_decoder.* keys): it "
        f"holds no text model (no BERT, no text projection, no text injection), so it does not hold every weight "
        f"a text-prompted model needs. Train from it instead: train.init_checkpoint={source}"
    )


def _sam_needs_text(source: str, kind: Format = Format.SAM) -> CheckpointError:
    return CheckpointError(
        f"{source} is an official {_FAMILY_NAMES[kind]} checkpoint: it holds no text model (no BERT, no text projection, no text "
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
    kind: Format = Format.SAM,
) -> tuple[LoadableModel, LoadReport]:
    """SAM's (or EfficientSAM's) weights (strict, position tables resized) + a BERT's weights, the DIT parts
    fresh: a start for training."""
    if config is None:
        if text_name_or_path is None:
            raise _sam_needs_text(str(path), kind)
        config = _START_CONFIGS[kind](
            state_dict, text_name_or_path=text_name_or_path, injection=injection, source=str(path)
        )
        logger.info("%s: SAM %s, injection %s, BERT %s", path, config.backbone, config.injection, text_name_or_path)
    elif injection is not None or text_name_or_path is not None:
        raise ValueError(
            "injection= and text_name_or_path= describe a file without config; with config= set them there"
        )
    model = cls(config, load_text_weights=True)  # BERT's weights from config.text.name_or_path
    report = _LOADERS[kind](model, state_dict, source=str(path))
    bert = config.text.name_or_path
    report.notes.append(f"BERT weights ({len(report.kept)} text_encoder.* tensors, listed as kept) loaded from {bert}")
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
    if kind in _START_CONFIGS:
        if not sam_start:
            raise _refuse_sam(str(path), kind)
        return _load_sam_start(
            cls, path, state_dict, injection=injection, config=config, text_name_or_path=text_name_or_path, kind=kind
        )
    if config is None:
        if kind is not Format.REFERENCE:
            holds = "a flat DITSam state dict" if kind is Format.DITSAM else "an unknown layout"
            raise CheckpointError(
                f"{path} holds {holds}: without a config only the authors' DIT checkpoints (visual_encoder.*, "
                f"lang_encoder.* keys) load; pass config= (a DITSamConfig) or give a save_pretrained folder"
            )
        config = reference_config_from_state_dict(
            state_dict, injection=injection, text_name_or_path=text_name_or_path or DEFAULT_TEXT_MODEL, source=str(path)
        )
        logger.info("%s: detected %s, injection %s", path, config.backbone, config.injection)
    elif injection is not None or text_name_or_path is not None:
        raise ValueError(
            "injection= and text_name_or_path= describe a file without config; with config= set them there"
        )
    model = cls(config, load_text_weights=False)
    report = _load_as(model, state_dict, kind, source=str(path))
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


def _released_source(
    cls: type[LoadableModel], name: str, *, text_name_or_path: str | None, cache_dir: str | Path | None
) -> ResolvedSource:
    """The converted folder of the released checkpoint ``name``, converting the authors' file on first use."""
    entry = released_checkpoint(name)

    def convert(file: Path, folder: Path) -> None:
        model, report = _load_file(
            cls,
            file,
            injection=entry.injection,
            config=None,  # type: ignore[arg-type]
            text_name_or_path=text_name_or_path,
        )
        logger.info("%s: %s", name, report)
        save_pretrained(
            model,
            folder,
            metrics=entry.scores,
            training_data=entry.dataset,
            model_id=name,
            card_notes=(f"The authors' released `{name}` ({entry.filename}), converted by ditsam.", entry.licence),
        )

    return ResolvedSource(path=released_folder(name, convert=convert, cache_dir=cache_dir), released=name)


def resolve_pretrained(
    cls: type[LoadableModel],
    source: str | os.PathLike[str],
    *,
    revision: str | None = None,
    text_name_or_path: str | None = None,
    cache_dir: str | Path | None = None,
) -> ResolvedSource:
    """:func:`~ditsam.model.checkpoints.hub.resolve_source`, and a released name (not a local path) as its
    converted folder (``text_name_or_path``: the BERT of the first use's conversion; ``cache_dir``: the folder
    holding the released names instead of ``$TORCH_HOME/hub/checkpoints/ditsam``)."""
    if is_released_name(source) and not Path(source).expanduser().exists():
        if revision is not None:
            raise ValueError(f"revision={revision!r} only applies to a Hugging Face Hub id, not to {source!r}")
        return _released_source(cls, str(source), text_name_or_path=text_name_or_path, cache_dir=cache_dir)
    return resolve_source(source, revision=revision, cache_dir=cache_dir)


def load_pretrained(
    cls: type[LoadableModel],
    source: str | os.PathLike[str],
    *,
    revision: str | None = None,
    injection: Injection | None = None,
    config: DITSamConfig | None = None,
    text_name_or_path: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
    map_location: str | torch.device = "cpu",
) -> LoadableModel:
    """A ready model (eval mode, on ``map_location``) from any source (see the module docstring).

    ``revision``: branch, tag or commit of a Hub id. ``injection``: for an authors' file without config,
    "layerwise" (default, the released weights), "e2e" or "none". ``config``: the architecture of a
    checkpoint file, instead of reading it from the shapes. ``text_name_or_path``: BERT config and
    tokenizer for an authors' file (default ``bert-base-uncased``). For a Hub id, as in transformers and
    huggingface_hub: ``cache_dir`` (a Hub cache other than the default), ``token`` (default: the logged-in
    user; ``False``: none), ``local_files_only`` (the cache only, as ``HF_HUB_OFFLINE=1``) and
    ``force_download`` (fetch again although cached). A folder carries its own config: ``config``, ``injection`` and ``text_name_or_path`` are
    errors with it. Errors: FileNotFoundError naming a missing path or an unresolvable Hub id;
    :class:`~ditsam.model.checkpoints.CheckpointError` for a file that cannot serve (a SAM file, no config).
    """
    model, _ = load_pretrained_with_report(
        cls,
        source,
        revision=revision,
        injection=injection,
        config=config,
        text_name_or_path=text_name_or_path,
        cache_dir=cache_dir,
        token=token,
        local_files_only=local_files_only,
        force_download=force_download,
        map_location=map_location,
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
    token: str | bool | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
    map_location: str | torch.device = "cpu",
    sam_start: bool = False,
) -> tuple[LoadableModel, LoadReport]:
    """:func:`load_pretrained`, also returning the :class:`~ditsam.model.checkpoints.LoadReport` of the load
    (what was loaded, resized, ignored; its ``source`` names the resolved file or folder). Same arguments
    and errors.

    ``sam_start=True`` (``ditsam convert``) accepts an official SAM checkpoint too -- a file, a Hub file id or
    ``sam_vit_b`` / ``sam_vit_l`` / ``sam_vit_h`` by name (:func:`~ditsam.model.checkpoints.download.fetch_sam_checkpoint`),
    and an official EfficientSAM one (``efficientsam_ti`` / ``efficientsam_s`` by name) -- paired with the BERT ``text_name_or_path`` (required): the reference config of the SAM's ViT size
    (:func:`~ditsam.model.checkpoints.shapes.sam_start_config`, ``injection`` default "layerwise"), SAM's weights loaded strictly, BERT's from
    ``text_name_or_path``, the text injection and W_o fresh (reported): an untrained starting point for
    ``train.init_checkpoint``, not a model for inference."""
    if injection is not None and injection not in get_args(Injection):
        raise ValueError(f"injection={injection!r} is not one of {', '.join(get_args(Injection))}")
    named = isinstance(source, str) and (is_sam_name(source) or is_efficientsam_name(source))
    if sam_start and named and not Path(source).expanduser().exists():
        kind = Format.SAM if is_sam_name(source) else Format.EFFICIENTSAM
        if config is None and text_name_or_path is None:
            raise _sam_needs_text(source, kind)  # before any download
        fetch = fetch_sam_checkpoint if kind is Format.SAM else fetch_efficientsam_checkpoint
        resolved = ResolvedSource(path=fetch(source))
    elif is_released_name(source) and not Path(source).expanduser().exists():
        if config is not None or injection is not None:
            raise ValueError(f"config= and injection= do not apply to {source!r}: the released file's are known")
        resolved = resolve_pretrained(
            cls, source, revision=revision, text_name_or_path=text_name_or_path, cache_dir=cache_dir
        )
        text_name_or_path = None  # it served the conversion; the folder carries its text model
    else:
        resolved = resolve_source(
            source,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
            force_download=force_download,
        )
    if resolved.path.is_dir():
        given = [
            name
            for name, value in (("config", config), ("injection", injection), ("text_name_or_path", text_name_or_path))
            if value is not None
        ]
        if given:
            raise ValueError(
                f"{', '.join(name + '=' for name in given)} only apply to a checkpoint file; {resolved} is a "
                f"save_pretrained folder with its own config.json"
            )
        model, report = load_folder_with_report(cls, resolved.path)
    else:
        model, report = _load_file(
            cls,
            resolved.path,
            injection=injection,
            config=config,
            text_name_or_path=text_name_or_path,
            sam_start=sam_start,
        )
    return model.to(map_location).eval(), report
