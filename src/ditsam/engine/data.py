"""From a :class:`~ditsam.engine.config.DataConfig` to readers and transforms."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ditsam.data import DataError, open_dataset
from ditsam.engine.config import DataConfig, ExperimentConfig

logger = logging.getLogger(__name__)


def ensure_refshapes(data: DataConfig) -> Path:
    """Generate RefShapes into ``data.root`` unless it is already there; returns the root."""
    from ditsam.data.synthetic import DATASET_NAME, SPLIT_BY, generate_refshapes, refshapes_files

    root = Path(data.root)
    if not (root / DATASET_NAME / f"refs({SPLIT_BY}).p").is_file():
        logger.info("generating RefShapes (%s, seed %d) into %s", data.refshapes_preset, data.refshapes_seed, root)
        generate_refshapes(root, seed=data.refshapes_seed, preset=data.refshapes_preset, progress=True)
        return root
    try:
        made = json.loads(refshapes_files(root)[2].read_text(encoding="utf-8"))
        found = (made["preset"], int(made["seed"]))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"{root} holds RefShapes annotations without a readable scenes.json ({error}); "
                        f"regenerate it with `ditsam data synth --out {root} --preset {data.refshapes_preset} "
                        f"--seed {data.refshapes_seed} --overwrite`") from error
    if found != (data.refshapes_preset, data.refshapes_seed):
        # Scores on another preset's splits would not compare with the experiment's; never reuse them silently.
        raise DataError(
            f"{root} holds RefShapes preset {found[0]!r} seed {found[1]}, but the experiment asks for preset "
            f"{data.refshapes_preset!r} seed {data.refshapes_seed}: set data.root to another folder, or remove {root}"
        )
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
    """A reader of ``split`` in ``mode`` ("train": one item per object, "eval": one per sentence);
    RefShapes' training split is an endless stream of new scenes when ``data.train_stream_samples``."""
    if data.format == "refshapes" and mode == "train" and data.train_stream_samples > 0:
        from ditsam.data.refshapes_stream import RefShapesStream

        return RefShapesStream(seed=data.refshapes_seed, preset=data.refshapes_preset,
                               samples_per_epoch=data.train_stream_samples,
                               items_per_scene=data.train_stream_items_per_scene)
    return open_dataset({**dataset_spec(data), "split": split, "mode": mode})


def ris_dataset(config: ExperimentConfig, split: str, *, train: bool) -> Any:
    """The :class:`~ditsam.data.collate.RISDataset` of ``split``: training (one item per object, random
    sentence, augmented) or evaluation (one item per sentence) samples on the model's canvas."""
    from ditsam.data.collate import RISDataset

    return RISDataset(
        open_split(config.data, split, mode="train" if train else "eval"), transform=transform_for(config, train=train),
        train=train, seed=config.train.seed, fixed_sentence=config.data.fixed_sentence,
    )


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
