"""From a :class:`~ditsam.engine.config.DataConfig` to readers and transforms."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ditsam.data import open_dataset
from ditsam.engine.config import DataConfig, ExperimentConfig

logger = logging.getLogger(__name__)


def ensure_refshapes(data: DataConfig) -> Path:
    """Generate RefShapes into ``data.root`` unless it is already there; returns the root."""
    from ditsam.data.synthetic import DATASET_NAME, SPLIT_BY, generate_refshapes

    root = Path(data.root)
    if not (root / DATASET_NAME / f"refs({SPLIT_BY}).p").is_file():
        logger.info("generating RefShapes (%s, seed %d) into %s", data.refshapes_preset, data.refshapes_seed, root)
        generate_refshapes(root, seed=data.refshapes_seed, preset=data.refshapes_preset)
    return root


def dataset_spec(data: DataConfig) -> dict[str, Any]:
    """The :func:`ditsam.data.open_dataset` mapping for ``data`` (without split and mode)."""
    if data.format == "refshapes":
        root = ensure_refshapes(data)
        return {"format": "refer", "root": str(root), "dataset": "refshapes", "split_by": "unc",
                "image_dir": str(Path(data.image_dir) if data.image_dir else root / "images")}
    if not Path(data.root).exists():
        raise FileNotFoundError(f"data.root {data.root!r} does not exist (format {data.format})")
    if data.format == "refer":
        return {"format": "refer", "root": data.root, "dataset": data.dataset, "split_by": data.split_by,
                "image_dir": data.image_dir}
    if data.format == "simrec":
        if data.mask_dir:
            return {"format": "simrec", "ann_file": data.root, "mask_dir": data.mask_dir, "image_dir": data.image_dir}
        return {"format": "simrec", "root": data.root, "dataset": data.dataset, "image_dir": data.image_dir}
    return {"format": "custom", "path": data.root}


def open_split(data: DataConfig, split: str, *, mode: str) -> Any:
    """A reader of ``split`` in ``mode`` ("train": one item per object, "eval": one per sentence)."""
    return open_dataset({**dataset_spec(data), "split": split, "mode": mode})


def transform_for(config: ExperimentConfig, *, train: bool) -> Any:
    """The training (random scale, photometric, flip) or evaluation transform for the model's input size."""
    from ditsam.data.transforms import RISTransform, TransformConfig

    size = config.model.image_size
    data = config.data
    transform_config = TransformConfig(
        input_size=size,
        train_long_sides=tuple(sorted({min(size, max(1, round(size * s))) for s in data.train_scales})),
        jitter_p=0.8 if data.photometric else 0.0,
        blur_p=0.5 if data.photometric else 0.0,
        flip_p=data.flip_probability,
    )
    return RISTransform.for_training(transform_config) if train else RISTransform.for_eval(transform_config)


GENERATED_TEXT_PREFIX = "generated:"


def resolve_text_encoder(config: ExperimentConfig) -> ExperimentConfig:
    """Replace ``model.text.name_or_path = "generated:refshapes"`` by a tiny random BERT with the
    RefShapes vocabulary, written once under ``<data.root>/tiny_bert`` (nothing is downloaded)."""
    from ditsam.config import ConfigError

    name = config.model.text.name_or_path
    if not name.startswith(GENERATED_TEXT_PREFIX):
        return config
    vocabulary = name[len(GENERATED_TEXT_PREFIX):]
    if vocabulary != "refshapes":
        raise ConfigError(f"model.text.name_or_path {name!r}: the only generated text encoder is 'generated:refshapes'")
    from ditsam.data.synthetic import REFSHAPES_WORDS
    from ditsam.model.text import build_tiny_bert

    directory = Path(config.data.root) / "tiny_bert"
    if not (directory / "config.json").is_file():
        build_tiny_bert(directory, words=REFSHAPES_WORDS, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128)
    return config.with_overrides({"model.text.name_or_path": str(directory)})
