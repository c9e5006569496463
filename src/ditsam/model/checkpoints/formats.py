"""Which known format a state dict is in: decided once per file, then passed on as a :class:`Format`."""

from __future__ import annotations

import enum
from collections.abc import Mapping

import torch

from ditsam.model.checkpoints.files import strip_module_prefix
from ditsam.model.checkpoints.hf_sam import has_hf_sam_names
from ditsam.model.checkpoints.keys import SAM_PREFIXES, TEXT_PREFIX, has_efficientsam_names
from ditsam.model.checkpoints.reference import REFERENCE_PREFIXES


class Format(str, enum.Enum):
    """A state dict's format; a ``str`` so that it compares equal to its name ("sam", ...)."""

    REFERENCE = "reference"
    DITSAM = "ditsam"
    SAM = "sam"
    EFFICIENTSAM = "efficientsam"


def detect_format(state_dict: Mapping[str, torch.Tensor]) -> Format | None:
    """The authors' DIT (``visual_encoder.*`` / ``lang_encoder.*``), a flat DITSam state dict of ours
    (``text_encoder.*``), official EfficientSAM (``prompt_encoder.invalid_points``, ...), SAM (official or
    transformers names), or None; a ``module.`` prefix is allowed."""
    keys = list(strip_module_prefix(state_dict))
    if any(key.startswith(REFERENCE_PREFIXES) for key in keys):
        return Format.REFERENCE
    if any(key.startswith(TEXT_PREFIX) for key in keys):
        return Format.DITSAM
    if has_efficientsam_names(keys):
        return Format.EFFICIENTSAM
    if any(key.startswith(SAM_PREFIXES) for key in keys) or has_hf_sam_names(keys):
        return Format.SAM
    return None
