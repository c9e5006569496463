"""Checkpoint files: reading them, telling their formats apart, loading them with a report of what went
where, and writing our own. The one public face of the room; its modules hold one job each:

- :mod:`~ditsam.model.checkpoints.load`: every model source (:func:`load_pretrained`) and a checkpoint into a
  built model (:func:`load_checkpoint`), one format detection per file
  (:mod:`~ditsam.model.checkpoints.formats`);
- :mod:`~ditsam.model.checkpoints.files` reads files (weights only), :mod:`~ditsam.model.checkpoints.matching`
  matches a state dict against a model into a :class:`LoadReport` (:mod:`~ditsam.model.checkpoints.report`);
- the formats: our folder (:mod:`~ditsam.model.checkpoints.ditsam_folder`, with the model card of
  :mod:`~ditsam.model.checkpoints.card`), the authors' DIT (:mod:`~ditsam.model.checkpoints.reference`; its
  architecture read from the shapes in :mod:`~ditsam.model.checkpoints.shapes`), official SAM
  (:mod:`~ditsam.model.checkpoints.sam`) and transformers' SAM names (:mod:`~ditsam.model.checkpoints.hf_sam`);
- where files come from: the Hub (:mod:`~ditsam.model.checkpoints.hub`), SAM checkpoints by name
  (:mod:`~ditsam.model.checkpoints.download`) and the authors' released DIT checkpoints by name
  (:mod:`~ditsam.model.checkpoints.released`, its table :data:`RELEASED_CHECKPOINTS`), and the models shipped
  inside the package (:mod:`~ditsam.model.checkpoints.bundled`: ``refshapes-sam``).

Models are typed as :class:`~ditsam.model.checkpoints.loadable.LoadableModel`, so the room imports nothing
of ``dit``; ``DITSam``'s ``from_pretrained`` / ``save_pretrained`` / ``push_to_hub`` call it lazily. Outside
``ditsam.model`` only this module is imported. Nothing happens at import time.
"""

from ditsam.model.checkpoints.bundled import BUNDLED_DIR, BUNDLED_MODELS, BundledModel, bundled_folder
from ditsam.model.checkpoints.ditsam_folder import WEIGHTS_FILE, save_pretrained
from ditsam.model.checkpoints.hub import (
    ResolvedSource,
    hub_reference,
    push_to_hub,
    resolve_init_checkpoint,
    resolve_source,
)
from ditsam.model.checkpoints.load import (
    load_checkpoint,
    load_pretrained,
    load_pretrained_with_report,
    resolve_pretrained,
)
from ditsam.model.checkpoints.matching import first_non_finite
from ditsam.model.checkpoints.released import RELEASED_CHECKPOINTS, ReleasedCheckpoint, fetch_released_file
from ditsam.model.checkpoints.report import CheckpointError, LoadReport

__all__ = [
    "BUNDLED_DIR",
    "BUNDLED_MODELS",
    "BundledModel",
    "WEIGHTS_FILE",
    "bundled_folder",
    "RELEASED_CHECKPOINTS",
    "CheckpointError",
    "LoadReport",
    "ReleasedCheckpoint",
    "ResolvedSource",
    "fetch_released_file",
    "first_non_finite",
    "hub_reference",
    "load_checkpoint",
    "load_pretrained",
    "load_pretrained_with_report",
    "push_to_hub",
    "resolve_init_checkpoint",
    "resolve_pretrained",
    "resolve_source",
    "save_pretrained",
]
