"""Loading weights into :class:`~ditsam.model.dit.DITSam`, with a report of what went where.

One module per job: :mod:`~ditsam.model.weights.files` reads and unwraps checkpoint files (weights
only, never unpickling objects), :mod:`~ditsam.model.weights.matching` checks a state dict against a
model and loads it into a :class:`LoadReport`, :mod:`~ditsam.model.weights.sam` takes official SAM
(and transformers ``SamModel``) checkpoints, :mod:`~ditsam.model.weights.reference` converts the
authors' DIT checkpoints both ways, and :mod:`~ditsam.model.weights.dispatch` tells the layouts apart
(:func:`load_checkpoint`) and loads our :meth:`~ditsam.model.dit.DITSam.save_pretrained` folders.
Models are typed as :class:`~ditsam.model.loadable.LoadableModel`, so ``weights`` imports nothing of ``dit``
and ``dit`` never imports ``weights``: no import circle. Nothing happens at import time.
"""

from ditsam.model.folder import CheckpointError
from ditsam.model.weights.dispatch import (
    detect_format,
    load_any_state_dict,
    load_checkpoint,
    load_ditsam_directory,
    load_ditsam_directory_with_report,
)
from ditsam.model.weights.files import read_checkpoint_file, strip_module_prefix
from ditsam.model.weights.keys import SAM_DECODER_LAYERS, SAM_PREFIXES, StateDict
from ditsam.model.weights.matching import first_non_finite
from ditsam.model.weights.reference import (
    REFERENCE_IMAGE_SIZE,
    REFERENCE_MAX_TOKENS,
    convert_reference_state_dict,
    load_reference_checkpoint,
    load_reference_state_dict,
    to_reference_state_dict,
)
from ditsam.model.weights.report import LoadReport
from ditsam.model.weights.sam import load_sam_checkpoint, load_sam_state_dict

__all__ = [
    "REFERENCE_IMAGE_SIZE",
    "REFERENCE_MAX_TOKENS",
    "SAM_DECODER_LAYERS",
    "SAM_PREFIXES",
    "CheckpointError",
    "LoadReport",
    "StateDict",
    "convert_reference_state_dict",
    "detect_format",
    "first_non_finite",
    "load_any_state_dict",
    "load_checkpoint",
    "load_ditsam_directory",
    "load_ditsam_directory_with_report",
    "load_reference_checkpoint",
    "load_reference_state_dict",
    "load_sam_checkpoint",
    "load_sam_state_dict",
    "read_checkpoint_file",
    "strip_module_prefix",
    "to_reference_state_dict",
]
