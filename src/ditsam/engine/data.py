"""From a :class:`~ditsam.engine.config.DataConfig` to readers (the :data:`READERS` table) and transforms, and
each training process's samples in an epoch (their order, their loader)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Subset

from ditsam.engine.config import DataConfig, ExperimentConfig
from ditsam.engine.generated import GENERATED_FORMATS, ensure_refshapes

# Seed of an epoch's permutation: train.seed * EPOCH_SEED_STRIDE + epoch (a prime, so that nearby seeds and
# epochs never share a permutation in any run of sensible length).
EPOCH_SEED_STRIDE = 100_003


def _generated_root(data: DataConfig) -> tuple[Path, str]:
    """(root, image folder) of a generated format, generating it first if needed."""
    root = ensure_refshapes(data)
    return root, str(Path(data.image_dir) if data.image_dir else root / "images")


def _stream(data: DataConfig) -> Any:
    from ditsam.data.refshapes_stream import RefShapesStream

    return RefShapesStream(
        seed=data.refshapes_seed,
        preset=data.refshapes_preset,
        samples_per_epoch=data.train_stream_samples,
        items_per_scene=data.train_stream_items_per_scene,
        generalized=data.format == "grefshapes",
    )


def _read_refshapes(data: DataConfig, split: str, mode: str) -> Any:
    if mode == "train" and data.train_stream_samples > 0:
        return _stream(data)
    from ditsam.data.refer import ReferDataset

    root, image_dir = _generated_root(data)
    return ReferDataset(
        root=str(root), dataset="refshapes", split_by="unc", image_dir=image_dir, split=split, mode=mode
    )


def _read_grefshapes(data: DataConfig, split: str, mode: str) -> Any:
    if mode == "train" and data.train_stream_samples > 0:
        return _stream(data)
    from ditsam.data.grefcoco import GRefCocoDataset

    root, image_dir = _generated_root(data)
    return GRefCocoDataset(root=str(root), dataset="grefshapes", image_dir=image_dir, split=split, mode=mode)


def _read_refer(data: DataConfig, split: str, mode: str) -> Any:
    from ditsam.data.refer import ReferDataset

    return ReferDataset(
        root=data.root, dataset=data.dataset, split_by=data.split_by, image_dir=data.image_dir, split=split, mode=mode
    )


def _read_grefcoco(data: DataConfig, split: str, mode: str) -> Any:
    from ditsam.data.grefcoco import GRefCocoDataset

    return GRefCocoDataset(
        root=data.root, dataset=data.dataset, split_by=data.split_by, image_dir=data.image_dir, split=split, mode=mode
    )


def _read_simrec(data: DataConfig, split: str, mode: str) -> Any:
    from ditsam.data.simrec import SimRecDataset

    if data.mask_dir:  # data.root is the anns JSON
        return SimRecDataset(
            ann_file=data.root, mask_dir=data.mask_dir, image_dir=data.image_dir, split=split, mode=mode
        )
    return SimRecDataset.from_root(
        root=data.root, dataset=data.dataset, image_dir=data.image_dir, split=split, mode=mode
    )


def _read_custom(data: DataConfig, split: str, mode: str) -> Any:
    from ditsam.data.custom import CustomDataset

    return CustomDataset(path=data.root, split=split, mode=mode, min_score=data.min_score)


#: data.format -> reader(data, split, mode); each reads the typed fields it needs.
READERS: dict[str, Callable[[DataConfig, str, str], Any]] = {
    "refshapes": _read_refshapes,
    "grefshapes": _read_grefshapes,
    "refer": _read_refer,
    "grefcoco": _read_grefcoco,
    "simrec": _read_simrec,
    "custom": _read_custom,
}


def read_split(data: DataConfig, split: str, *, mode: str) -> Any:
    """A reader of ``split`` in ``mode`` ("train": one item per object, "eval": one per sentence), looked up
    in :data:`READERS` by ``data.format``; RefShapes' training split is an endless stream of new scenes when
    ``data.train_stream_samples``. (:func:`ditsam.data.open_dataset` is the same for a plain mapping.)"""
    if data.format not in GENERATED_FORMATS and not Path(data.root).exists():
        raise FileNotFoundError(f"data.root {data.root!r} does not exist (format {data.format})")
    return READERS[data.format](data, split, mode)


def ris_dataset(config: ExperimentConfig, split: str, *, train: bool) -> Any:
    """The :class:`~ditsam.data.collate.RISDataset` of ``split``: training (one item per object, random
    sentence, augmented) or evaluation (one item per sentence) samples on the model's canvas."""
    from ditsam.data.collate import RISDataset

    return RISDataset(
        read_split(config.data, split, mode="train" if train else "eval"),
        transform=transform_for(config, train=train),
        train=train,
        seed=config.train.seed,
        fixed_sentence=config.data.fixed_sentence,
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


def epoch_indices(
    length: int, *, seed: int, epoch: int, presorted: bool, rank: int, world: int, skip_samples: int
) -> list[int]:
    """The training sample indices process ``rank`` of ``world`` visits in ``epoch``: its share of a
    permutation seeded by ``seed`` and ``epoch`` -- the same on every process and every resume -- less its first
    ``skip_samples`` (those a resumed run has seen). ``presorted``: a stream already in random order, kept as is.
    The ``length % world`` samples left over are dropped, so every process takes as many steps."""
    if presorted:
        order = torch.arange(length)
    else:
        order = torch.randperm(length, generator=torch.Generator().manual_seed(seed * EPOCH_SEED_STRIDE + epoch))
    per_process = length // world
    return order[rank * per_process : (rank + 1) * per_process][skip_samples:].tolist()


def epoch_loader(
    dataset: Any,
    *,
    config: ExperimentConfig,
    epoch: int,
    skip_micro_batches: int,
    rank: int,
    world: int,
    collate_fn: Callable[[list[Any]], Any],
    pin_memory: bool,
) -> DataLoader:
    """The micro-batches process ``rank`` of ``world`` trains on in ``epoch`` (:func:`epoch_indices`), less
    the first ``skip_micro_batches`` (seen before a resume). ``dataset``: a training
    :class:`~ditsam.data.collate.RISDataset`, told the epoch (its random sentences and augmentations
    depend on it)."""
    train = config.train
    mine = epoch_indices(
        len(dataset),
        seed=train.seed,
        epoch=epoch,
        presorted=getattr(dataset.base, "presorted", False),
        rank=rank,
        world=world,
        skip_samples=skip_micro_batches * train.micro_batch_size,
    )
    dataset.set_epoch(epoch)
    return DataLoader(
        Subset(dataset, mine),
        batch_size=train.micro_batch_size,
        shuffle=False,
        num_workers=config.data.num_workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        persistent_workers=False,
        # Its own generator: creating an iterator must not draw from the global RNG, or a resumed
        # run's dropout masks would differ from an uninterrupted run's.
        generator=torch.Generator().manual_seed(train.seed + epoch),
    )
