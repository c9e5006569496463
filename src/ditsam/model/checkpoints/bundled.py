"""Models shipped inside the package, loadable by name with no network: ``refshapes-sam``.

``refshapes-sam`` is the tiny SAM of the built-in RefShapes benchmark (``ditsam train refshapes/sam``:
promptable segmentation from points and boxes, no text), the start of every ``refshapes/*`` experiment as
SAM ViT-B is of every ``refcoco/*`` one. Each name is a ``save_pretrained`` folder under
``ditsam/pretrained/<name>/`` whose model card records how it was trained, its scores and the SHA-256 of its
weights; :data:`BUNDLED_MODELS` records the same digest, and :func:`bundled_folder` refuses a folder whose
weights no longer match it (a damaged install), naming the file. A local path of the same name wins over the
name.
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path
from types import MappingProxyType

from ditsam.digest import file_sha256
from ditsam.model.checkpoints.ditsam_folder import WEIGHTS_FILE
from ditsam.model.checkpoints.report import CheckpointError

#: Folder of the package (beside ``configs/``) that holds the shipped models, one sub-folder per name.
BUNDLED_DIR = "pretrained"


@dataclasses.dataclass(frozen=True)
class BundledModel:
    """One shipped model: its name, the experiment that retrains it and the SHA-256 of its weights."""

    name: str
    #: ``ditsam train`` experiment that retrains it (its model card gives the whole command).
    experiment: str
    #: SHA-256 of its ``model.safetensors`` as shipped.
    sha256: str


BUNDLED_MODELS: MappingProxyType[str, BundledModel] = MappingProxyType(
    {
        "refshapes-sam": BundledModel(
            name="refshapes-sam",
            experiment="refshapes/sam",
            sha256="e583d5826fab96545e9f248d4ef394c188166b35b81b6aaff317785098e2882e",
        ),
    }
)


def is_bundled_name(value: object) -> bool:
    """True for a name of :data:`BUNDLED_MODELS`."""
    return isinstance(value, str) and value in BUNDLED_MODELS


def bundled_folder(name: str) -> Path:
    """The shipped ``save_pretrained`` folder of ``name``, its weights checked against :data:`BUNDLED_MODELS`.

    Raises KeyError naming the known names for another name, :class:`CheckpointError` for a missing folder
    or weights that differ from the recorded digest.
    """
    if name not in BUNDLED_MODELS:
        raise KeyError(f"no model named {name!r} ships with ditsam; shipped: {', '.join(sorted(BUNDLED_MODELS))}")
    entry = BUNDLED_MODELS[name]
    folder = Path(str(resources.files("ditsam") / BUNDLED_DIR / name))
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(
            f"{weights} is missing: the installed ditsam lacks the shipped model {name!r} (reinstall ditsam, or "
            f"retrain it: ditsam train {entry.experiment})"
        )
    found = file_sha256(weights)
    if found != entry.sha256:
        raise CheckpointError(
            f"{weights} has SHA-256 {found}, not the {entry.sha256} ditsam ships: the file was changed or damaged "
            f"(reinstall ditsam)"
        )
    return folder
