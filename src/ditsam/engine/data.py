"""From a :class:`~ditsam.engine.config.DataConfig` to readers (the :data:`READERS` table) and transforms."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from ditsam.data import DataError
from ditsam.engine.config import DataConfig, ExperimentConfig

logger = logging.getLogger(__name__)

# Data formats generated on first use (RefShapes and its generalized variant).
GENERATED_FORMATS = ("refshapes", "grefshapes")
# name after "generated:" in model.text.name_or_path -> the vocabulary's module and constant.
GENERATED_VOCABULARIES = {
    "refshapes": ("ditsam.data.refshapes", "REFSHAPES_WORDS"),
    "grefshapes": ("ditsam.data.grefshapes", "GREFSHAPES_WORDS"),
}


def _generator(data_format: str) -> tuple[Any, Any, int]:
    """(files of a generated root, generator function, generator version) of a generated format
    (refshapes | grefshapes)."""
    if data_format == "grefshapes":
        from ditsam.data.grefshapes import GENERATOR_VERSION, generate_grefshapes, grefshapes_files

        return grefshapes_files, generate_grefshapes, GENERATOR_VERSION
    from ditsam.data.refshapes import GENERATOR_VERSION as REFSHAPES_VERSION
    from ditsam.data.refshapes import dataset_files, generate_refshapes

    return dataset_files, generate_refshapes, REFSHAPES_VERSION

#: Bad records named in the error that stops a run; the report file lists them all.
SHOWN_PROBLEMS = 50


def ensure_refshapes(data: DataConfig) -> Path:
    """Generate RefShapes (or gRefShapes, ``data.format == "grefshapes"``) into ``data.root`` unless it is
    already there; returns the root."""
    files_of, generate, version = _generator(data.format)
    root = Path(data.root)
    files = files_of(root)
    if not files.refs.is_file():
        logger.info("generating %s (%s, seed %d) into %s", data.format, data.refshapes_preset, data.refshapes_seed, root)
        generate(root, seed=data.refshapes_seed, preset=data.refshapes_preset, progress=True)
        return root
    try:
        made = json.loads(files.scenes.read_text(encoding="utf-8"))
        found = (made["preset"], int(made["seed"]))
        found_version = int(made.get("version", 1))  # folders written before versions were recorded: 1
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"{root} holds {data.format} annotations without a readable scenes.json ({error}); "
                        f"regenerate it with `ditsam data synth --out {root} --preset {data.refshapes_preset} "
                        f"--seed {data.refshapes_seed} --overwrite`") from error
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


def _generated_root(data: DataConfig) -> tuple[Path, str]:
    """(root, image folder) of a generated format, generating it first if needed."""
    root = ensure_refshapes(data)
    return root, str(Path(data.image_dir) if data.image_dir else root / "images")


def _stream(data: DataConfig) -> Any:
    from ditsam.data.refshapes_stream import RefShapesStream

    return RefShapesStream(seed=data.refshapes_seed, preset=data.refshapes_preset,
                           samples_per_epoch=data.train_stream_samples,
                           items_per_scene=data.train_stream_items_per_scene,
                           generalized=data.format == "grefshapes")


def _read_refshapes(data: DataConfig, split: str, mode: str) -> Any:
    if mode == "train" and data.train_stream_samples > 0:
        return _stream(data)
    from ditsam.data.refer import ReferDataset

    root, image_dir = _generated_root(data)
    return ReferDataset(root=str(root), dataset="refshapes", split_by="unc", image_dir=image_dir,
                        split=split, mode=mode)


def _read_grefshapes(data: DataConfig, split: str, mode: str) -> Any:
    if mode == "train" and data.train_stream_samples > 0:
        return _stream(data)
    from ditsam.data.grefcoco import GRefCocoDataset

    root, image_dir = _generated_root(data)
    return GRefCocoDataset(root=str(root), dataset="grefshapes", image_dir=image_dir, split=split, mode=mode)


def _read_refer(data: DataConfig, split: str, mode: str) -> Any:
    from ditsam.data.refer import ReferDataset

    return ReferDataset(root=data.root, dataset=data.dataset, split_by=data.split_by, image_dir=data.image_dir,
                        split=split, mode=mode)


def _read_grefcoco(data: DataConfig, split: str, mode: str) -> Any:
    from ditsam.data.grefcoco import GRefCocoDataset

    return GRefCocoDataset(root=data.root, dataset=data.dataset, split_by=data.split_by, image_dir=data.image_dir,
                           split=split, mode=mode)


def _read_simrec(data: DataConfig, split: str, mode: str) -> Any:
    from ditsam.data.simrec import SimRecDataset

    if data.mask_dir:  # data.root is the anns JSON
        return SimRecDataset(ann_file=data.root, mask_dir=data.mask_dir, image_dir=data.image_dir,
                             split=split, mode=mode)
    return SimRecDataset.from_root(root=data.root, dataset=data.dataset, image_dir=data.image_dir,
                                   split=split, mode=mode)


def _read_custom(data: DataConfig, split: str, mode: str) -> Any:
    from ditsam.data.custom import CustomDataset

    return CustomDataset(path=data.root, split=split, mode=mode)


#: data.format -> reader(data, split, mode); each reads the typed fields it needs.
READERS: dict[str, Callable[[DataConfig, str, str], Any]] = {
    "refshapes": _read_refshapes,
    "grefshapes": _read_grefshapes,
    "refer": _read_refer,
    "grefcoco": _read_grefcoco,
    "simrec": _read_simrec,
    "custom": _read_custom,
}


def open_dataset(data: DataConfig, split: str, *, mode: str) -> Any:
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
        open_dataset(config.data, split, mode="train" if train else "eval"), transform=transform_for(config, train=train),
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
#: Sizes of the generated text encoder (a tiny random BERT, trained from scratch with the model).
GENERATED_BERT_SIZES = dict(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128)
#: Folder of the generated text encoder: under data.root for RefShapes, under the run folder otherwise.
GENERATED_BERT_DIR = "tiny_bert"
_WORD = re.compile(r"[^\W_]+")


def resolve_text_encoder(
    config: ExperimentConfig, *, run_dir: Path | None = None, sentences: Iterable[str] = ()
) -> ExperimentConfig:
    """Replace ``model.text.name_or_path = "generated:refshapes"`` (or ``"generated:grefshapes"``) by a tiny
    random BERT (nothing is downloaded) and return the config pointing at it.

    On generated data (RefShapes, gRefShapes) the vocabulary is the benchmark's, written once under
    ``<data.root>/tiny_bert`` (``tiny_bert_grefshapes``). On other data (``data.format`` refer / grefcoco /
    simrec / custom) it is the named vocabulary plus every word of ``sentences`` (the training sentences),
    written under ``<run_dir>/tiny_bert``; words outside the vocabulary still split into letters, so no
    sentence is lost to [UNK].
    """
    import importlib

    from ditsam.config import ConfigError

    name = config.model.text.name_or_path
    if not name.startswith(GENERATED_TEXT_PREFIX):
        return config
    vocabulary = name[len(GENERATED_TEXT_PREFIX):]
    if vocabulary not in GENERATED_VOCABULARIES:
        raise ConfigError(f"model.text.name_or_path {name!r}: generated text encoders are "
                          f"{', '.join(GENERATED_TEXT_PREFIX + v for v in GENERATED_VOCABULARIES)}")
    from ditsam.model.text import build_tiny_bert

    module, constant = GENERATED_VOCABULARIES[vocabulary]
    words: Iterable[str] = getattr(importlib.import_module(module), constant)
    if config.data.format in GENERATED_FORMATS:
        suffix = "" if vocabulary == "refshapes" else f"_{vocabulary}"
        directory = Path(config.data.root) / f"{GENERATED_BERT_DIR}{suffix}"
    elif run_dir is None:
        raise ConfigError(
            f"model.text.name_or_path {name!r} on data.format={config.data.format} builds its vocabulary from the "
            f"training sentences into the run folder, and none was given; set model.text.name_or_path to a BERT "
            f"(a Hub id such as bert-base-uncased, or a local folder)"
        )
    else:
        directory = Path(run_dir) / GENERATED_BERT_DIR
        known = set(words)
        found = {word for sentence in sentences for word in _WORD.findall(sentence.lower())}
        words = [*words, *sorted(found - known)]
    if not (directory / "config.json").is_file():
        build_tiny_bert(directory, words=words, **GENERATED_BERT_SIZES)
    return config.with_overrides({"model.text.name_or_path": str(directory)})


def check_data(
    datasets: Mapping[str, Any], *, skip_bad: bool, report: Path | None = None, progress: bool = False
) -> int:
    """Check every record the run will read, before its first step; returns how many were dropped.

    ``datasets``: split -> :class:`~ditsam.data.collate.RISDataset` (streams of generated scenes have
    nothing to check and are passed over). Raises :class:`DataError` listing every bad record (file and
    record named; at most :data:`SHOWN_PROBLEMS` lines, the rest in ``report``) unless ``skip_bad``,
    which drops them and logs how many per split.
    """
    found: dict[str, list[tuple[int, str]]] = {}
    for split, dataset in datasets.items():
        reader = dataset.base
        if hasattr(reader, "validate"):
            found[split] = reader.validate(progress=progress)
    messages = list(dict.fromkeys(message for problems in found.values() for _, message in problems))
    if not messages:
        return 0
    if report is not None:
        report.write_text("\n".join(messages) + "\n", encoding="utf-8")
    listed = f"; all listed in {report}" if report is not None else ""
    if not skip_bad:
        shown = messages[:SHOWN_PROBLEMS]
        more = f"\n... and {len(messages) - len(shown)} more" if len(messages) > len(shown) else ""
        raise DataError(
            f"{len(messages)} bad record(s) in the data this run reads{listed}; nothing was trained. Fix them, or pass "
            f"--skip-bad-data to train on the rest:\n" + "\n".join(shown) + more
        )
    dropped = 0
    for split, problems in found.items():
        if problems:
            datasets[split].base.drop_objects(index for index, _ in problems)
            dropped += len(problems)
            logger.warning("--skip-bad-data: dropped %d bad record(s) of split %s%s", len(problems), split, listed)
    return dropped
