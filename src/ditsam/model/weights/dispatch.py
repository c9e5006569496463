"""Telling checkpoint layouts apart and loading whichever one a path or state dict is; our own
:meth:`~ditsam.model.dit.DITSam.save_pretrained` folders load strictly (format in :mod:`ditsam.model.folder`).

Which source to load (a folder, a Hub id, an authors' file without config) is decided in
:mod:`ditsam.model.sources`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch

from ditsam.model.folder import CheckpointError, read_pretrained_folder
from ditsam.model.loadable import LoadableModel
from ditsam.model.weights.files import read_checkpoint_file, safetensors_load, strip_module_prefix
from ditsam.model.weights.keys import SAM_PREFIXES, TEXT_PREFIX
from ditsam.model.weights.matching import apply_state_dict, listing
from ditsam.model.weights.reference import load_reference_state_dict
from ditsam.model.weights.report import LoadReport
from ditsam.model.weights.sam import load_sam_state_dict

logger = logging.getLogger(__name__)


def _load_strict(model: LoadableModel, weights: Path) -> LoadReport:
    state_dict = safetensors_load(weights)
    return apply_state_dict(
        model, state_dict, kind="ditsam", source=str(weights), classify_missing=lambda key: None, allow_resize=False
    )


def load_ditsam_directory(
    cls: type[LoadableModel], directory: str | Path, *, map_location: str | torch.device = "cpu"
) -> LoadableModel:
    """Build a model from a :meth:`DITSam.save_pretrained` folder, strictly, in eval mode on ``map_location``.

    The BERT architecture and tokenizer come from ``text_encoder/`` (``config.text.name_or_path`` points
    there), its weights from ``model.safetensors`` with the rest. Errors name the file: missing folder,
    ``config.json``, ``text_encoder/config.json`` or weights; unknown config keys; a corrupted or
    mismatching weights file.
    """
    model, _ = load_ditsam_directory_with_report(cls, directory)
    return model.to(map_location).eval()


def load_ditsam_directory_with_report(cls: type[LoadableModel], directory: str | Path) -> tuple[LoadableModel, LoadReport]:
    """:func:`load_ditsam_directory` on the CPU, also returning the :class:`LoadReport` of the strict load."""
    directory = Path(directory)
    config, _, weights = read_pretrained_folder(directory)
    model = cls(config, load_text_weights=False)
    report = _load_strict(model, weights)
    return model, report


def _load_directory_into(model: LoadableModel, directory: Path) -> LoadReport:
    config, _, weights = read_pretrained_folder(directory)
    saved, current = config.to_dict(), model.config.to_dict()
    saved["text"].pop("name_or_path")
    current["text"].pop("name_or_path")
    differences = sorted(
        [k for k in saved if k != "text" and saved[k] != current[k]]
        + [f"text.{k}" for k in saved["text"] if saved["text"][k] != current["text"][k]]
    )
    report = _load_strict(model, weights)
    if differences:
        note = f"the model's config differs from the saved one in {', '.join(differences)}"
        logger.warning("%s: %s", directory, note)
        report.notes.append(note)
    return report




def detect_format(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """ "reference", "ditsam" (a flat state dict of ours), "sam" (official or transformers names), or None."""
    keys = list(strip_module_prefix(state_dict))
    if any(k.startswith(("visual_encoder.", "lang_encoder.")) for k in keys):
        return "reference"
    if any(k.startswith(TEXT_PREFIX) for k in keys):
        return "ditsam"
    if any(k.startswith((*SAM_PREFIXES, "vision_encoder.", "shared_image_embedding.")) for k in keys):
        return "sam"
    return None


def load_any_state_dict(
    model: LoadableModel, state_dict: Mapping[str, torch.Tensor], *, source: str = "<state dict>"
) -> LoadReport:
    """Load a state dict of any known layout into ``model`` (see :func:`detect_format`): reference DIT,
    official / transformers SAM, or a flat DITSam state dict (strict). ``source`` names it in messages."""
    kind = detect_format(state_dict)
    if kind == "reference":
        return load_reference_state_dict(model, state_dict, source=source)
    if kind == "sam":
        return load_sam_state_dict(model, state_dict, source=source)
    if kind == "ditsam":
        return apply_state_dict(
            model,
            strip_module_prefix(state_dict),
            kind="ditsam",
            source=source,
            classify_missing=lambda key: None,
            allow_resize=False,
        )
    raise CheckpointError(
        f"{source}: unknown checkpoint layout (first keys: {listing(list(state_dict), 5)}); expected SAM "
        f"(image_encoder.*), reference DIT (visual_encoder.*) or DITSam (text_encoder.*) names"
    )


def load_checkpoint(model: LoadableModel, path: str | Path) -> LoadReport:
    """Load whatever ``path`` is into ``model``: a save_pretrained folder (strict; config differences are
    reported), a reference-DIT checkpoint (``visual_encoder.*``), an official / transformers SAM checkpoint
    (``image_encoder.*`` / ``vision_encoder.*``), or a flat DITSam state dict (strict)."""
    path = Path(path)
    if path.is_dir():
        return _load_directory_into(model, path)
    state_dict, _ = read_checkpoint_file(path)
    return load_any_state_dict(model, state_dict, source=str(path))
