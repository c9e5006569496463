"""The data formats ditsam generates on first use (RefShapes, gRefShapes): generation into ``data.root`` and
the checks that a folder found there is the one the experiment asks for (preset, seed, generator version)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ditsam.data import DataError
from ditsam.engine.config import DataConfig

logger = logging.getLogger(__name__)

# Data formats generated on first use (RefShapes and its generalized variant).
GENERATED_FORMATS = ("refshapes", "grefshapes")


def _generator(data_format: str) -> tuple[Any, Any, int]:
    """(files of a generated root, generator function, generator version) of a generated format
    (refshapes | grefshapes)."""
    if data_format == "grefshapes":
        from ditsam.data.grefshapes import GENERATOR_VERSION, generate_grefshapes, grefshapes_files

        return grefshapes_files, generate_grefshapes, GENERATOR_VERSION
    from ditsam.data.refshapes import GENERATOR_VERSION as REFSHAPES_VERSION
    from ditsam.data.refshapes import dataset_files, generate_refshapes

    return dataset_files, generate_refshapes, REFSHAPES_VERSION


def ensure_refshapes(data: DataConfig) -> Path:
    """Generate RefShapes (or gRefShapes, ``data.format == "grefshapes"``) into ``data.root`` unless it is
    already there; returns the root."""
    files_of, generate, version = _generator(data.format)
    root = Path(data.root)
    files = files_of(root)
    if not files.refs.is_file():
        logger.info(
            "generating %s (%s, seed %d) into %s", data.format, data.refshapes_preset, data.refshapes_seed, root
        )
        generate(root, seed=data.refshapes_seed, preset=data.refshapes_preset, progress=True)
        return root
    try:
        made = json.loads(files.scenes.read_text(encoding="utf-8"))
        found = (made["preset"], int(made["seed"]))
        found_version = int(made.get("version", 1))  # folders written before versions were recorded: 1
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(
            f"{root} holds {data.format} annotations without a readable scenes.json ({error}); "
            f"regenerate it with `ditsam data synth --out {root} --preset {data.refshapes_preset} "
            f"--seed {data.refshapes_seed} --overwrite`"
        ) from error
    if found_version != version:
        raise DataError(
            f"{root} was written by {data.format} generator version {found_version}, this ditsam writes version "
            f"{version} (other sentences for the same seed): remove {root} to regenerate it, or set data.root to "
            "another folder"
        )
    if found != (data.refshapes_preset, data.refshapes_seed):
        # Scores on another preset's splits would not compare with the experiment's; never reuse them silently.
        raise DataError(
            f"{root} holds {data.format} preset {found[0]!r} seed {found[1]}, but the experiment asks for preset "
            f"{data.refshapes_preset!r} seed {data.refshapes_seed}: set data.root to another folder, or remove {root}"
        )
    return root
