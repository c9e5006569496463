"""The folder :meth:`~ditsam.model.dit.DITSam.save_pretrained` writes, and reading it back.

A folder holds ``config.json`` (``{"format_version", "model": config}``), ``model.safetensors`` and
``text_encoder/`` (BERT config + tokenizer). :func:`read_pretrained_folder` validates one and returns the
config and the paths; the strict weight load with its report is
:func:`ditsam.model.weights.load_ditsam_directory`. This module imports nothing of ``weights`` or ``dit``:
both import it.
"""

from __future__ import annotations

import json
from pathlib import Path

from ditsam.config import ConfigError
from ditsam.model.config import DITSamConfig
from ditsam.schema import is_integer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TEXT_DIR = "text_encoder"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model; the message names the file and the keys."""


def read_pretrained_folder(directory: Path) -> tuple[DITSamConfig, Path, Path]:
    """Validate a save_pretrained folder; returns (config with text.name_or_path set, text dir, weights file)."""
    if not directory.exists():
        raise FileNotFoundError(f"no ditsam checkpoint folder at {directory}")
    if not directory.is_dir():
        raise NotADirectoryError(
            f"{directory} is a file, not a ditsam checkpoint folder "
            f"(SAM / reference .pth files load with load_checkpoint)"
        )
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"checkpoint folder without config: {config_path} is missing")
    try:
        payload = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{config_path} is not valid JSON: {error}") from error
    if not isinstance(payload, dict) or "model" not in payload or "format_version" not in payload:
        raise CheckpointError(f"{config_path} must be an object with 'format_version' and 'model' entries")
    unknown = sorted(set(payload) - {"format_version", "model"})
    if unknown:
        raise CheckpointError(f"{config_path}: unknown top-level key(s) {', '.join(unknown)}")
    version = payload["format_version"]
    if not is_integer(version) or not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(
            f"{config_path}: format_version {version!r} is not supported (this ditsam reads 1..{FORMAT_VERSION})"
        )
    try:
        config = DITSamConfig.from_dict(payload["model"], prefix="model.")
    except ConfigError as error:
        raise ConfigError(f"{config_path}: {error}") from error
    text_dir = directory / TEXT_DIR
    if not (text_dir / "config.json").is_file():
        raise FileNotFoundError(f"{text_dir}/config.json is missing: the folder lacks its text encoder config")
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing: the checkpoint folder has no weights")
    config.text.name_or_path = str(text_dir)
    return config, text_dir, weights
