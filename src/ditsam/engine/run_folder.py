"""The run folder: what a run writes, the folder's preparation, its checkpoints and the checks a resume makes.

Run folder layout::

    <run>/config.yaml           resolved experiment config
    <run>/data_sources.json     annotation files read and their sha256 (gRefCOCO-layout data)
    <run>/metrics.jsonl         one JSON record per log step and per evaluation
    <run>/tensorboard/          loss, lr, metrics, prediction pictures
    <run>/predictions/          prediction pictures per evaluation
    <run>/checkpoints/last/     resumable (written atomically)
    <run>/checkpoints/best/     best on data.select_split by train.select_metric
    <run>/bad_records.txt       every bad record the data check found (when it found any)
    <run>/tiny_bert/            a generated text encoder for data other than RefShapes
    <run>/.ditsam-train.lock    the trainer writing the folder now (host, PID; see ditsam.engine.lock)

A run folder that holds checkpoints is refused unless the run is resumed (``resume=True``) or
replaced (``overwrite=True``, which deletes the outputs listed above and nothing else).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch
import yaml

from ditsam.config import ConfigError
from ditsam.engine.checkpoint import (
    load_newest_training_state,
    recover_checkpoints,
    restore_training_state,
    save_training_state,
    write_atomically,
)
from ditsam.engine.config import ExperimentConfig
from ditsam.engine.ema import EMA
from ditsam.engine.finetune import merged_copy
from ditsam.engine.lock import RunFolderLock
from ditsam.engine.text_encoder import GENERATED_BERT_DIR
from ditsam.model.dit import DITSam
from ditsam.outputs import (
    OutputFolderError,
    describe_write_failure,
    ensure_writable_folder,
    is_disk_full,
    refuse_earlier_results,
    remove_outputs,
    write_text_atomically,
)
from ditsam.versions import software_versions

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
BAD_RECORDS_FILE = "bad_records.txt"
#: Which annotation file (and its sha256) each split was read from, for readers that record it (gRefCOCO).
DATA_SOURCES_FILE = "data_sources.json"
#: The ditsam and torch versions of the run's latest start (:func:`ditsam.versions.software_versions`).
VERSIONS_FILE = "versions.json"
#: What a run writes into its folder; ``overwrite=True`` deletes these and nothing else.
RUN_OUTPUTS = (
    "checkpoints",
    METRICS_FILE,
    "tensorboard",
    "predictions",
    "results.json",
    "results.md",
    "config.yaml",
    BAD_RECORDS_FILE,
    GENERATED_BERT_DIR,
    DATA_SOURCES_FILE,
    VERSIONS_FILE,
)
#: Present when a run folder holds a run that --resume could continue (or --overwrite replace).
CHECKPOINT_NAMES = ("last", "best")
#: Model settings a resume may change: they change neither the weights nor what trains (the text
#: encoder's path is resolved anew on every start).
RESUME_MAY_CHANGE = ("model.gradient_checkpointing", "model.text.local_files_only", "model.text.name_or_path")


class RunFolderError(OutputFolderError):
    """The run folder cannot be used: not writable, full, or holding a run not to be lost."""


@dataclasses.dataclass
class Progress:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_score: float | None = None
    # Records written to metrics.jsonl when the checkpoint was saved: a resume drops later ones (their
    # steps are trained and logged again), so no step appears twice.
    metrics_records: int = 0
    # Wall seconds of the training loop (steps and evaluations) up to this checkpoint, summed over every
    # resume: what the run has cost, which a preempted run's last session alone understates. Steps after the
    # checkpoint are trained again on resume and counted then.
    train_seconds: float = 0.0


def _flatten(tree: dict[str, Any], prefix: str) -> dict[str, Any]:
    """``{"text": {"max_tokens": 20}}`` -> ``{prefix + "text.max_tokens": 20}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def write_run_record(run_dir: Path, config: ExperimentConfig, datasets: dict[str, Any]) -> None:
    """What a run's start records beside its checkpoints: the resolved config, the software versions and, for
    ``datasets`` (split name -> dataset) whose reader names its annotation file, which file each split read."""
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    (run_dir / VERSIONS_FILE).write_text(json.dumps(software_versions(), indent=2))
    sources = {
        split: dataset.base.source
        for split, dataset in datasets.items()
        if getattr(dataset.base, "source", None) is not None
    }
    if sources:  # gRefCOCO was renumbered once: a run names the files it read
        (run_dir / DATA_SOURCES_FILE).write_text(json.dumps(sources, indent=2))


def default_run_dir(config: ExperimentConfig, run_dir: Path | str | None) -> Path:
    """``run_dir``, or the default ``<output_dir>/<name>`` when it is None."""
    return Path(run_dir) if run_dir is not None else Path(config.output_dir) / config.name


def prepare_run_folder(
    config: ExperimentConfig, run_dir: Path | None, *, resume: bool = False, overwrite: bool = False
) -> tuple[Path, RunFolderLock]:
    """The run folder, writable and locked for this trainer (:class:`~ditsam.engine.lock.RunFolderLock`,
    returned held), with interrupted checkpoint writes finished (see
    :func:`~ditsam.engine.checkpoint.recover_checkpoints`). A folder holding checkpoints is refused
    unless ``resume`` or ``overwrite`` (whose outputs, :data:`RUN_OUTPUTS`, are deleted here); a folder
    another live trainer holds is refused (:class:`~ditsam.engine.lock.RunFolderLockedError`)."""
    run_dir = default_run_dir(config, run_dir)
    try:
        ensure_writable_folder(run_dir, what="run folder")
    except OutputFolderError as error:
        raise RunFolderError(str(error)) from error
    lock = RunFolderLock(run_dir)
    lock.acquire()  # before anything is read or changed: recovering checkpoints needs the folder to itself
    try:
        recover_checkpoints(run_dir / "checkpoints")
        refuse_earlier_results(
            run_dir,
            what="run folder",
            resume=resume,
            overwrite=overwrite,
            holds_results=[f"checkpoints/{name}" for name in CHECKPOINT_NAMES],
        )
        if overwrite:
            removed = remove_outputs(run_dir, RUN_OUTPUTS)
            if removed:
                logger.info("--overwrite: removed %s from %s", ", ".join(removed), run_dir)
    except OutputFolderError as error:
        lock.release()
        raise RunFolderError(str(error)) from error
    except BaseException:
        lock.release()
        raise
    return run_dir, lock


def disk_full_error(run_dir: Path, error: OSError) -> RunFolderError:
    """The error to raise when a write other than a checkpoint's finds the disk full."""
    last = run_dir / "checkpoints" / "last"
    kept = f"the last checkpoint {last} is intact" if last.is_dir() else "no checkpoint has been written yet"
    return RunFolderError(
        f"{describe_write_failure(error, run_dir)} (writing {error.filename or 'the run folder'}); {kept}. "
        f"Free some space, then continue with --resume"
    )


def _resolved(model: dict[str, Any]) -> dict[str, Any]:
    """A saved experiment's model section as :meth:`DITSamConfig.resolved_dict` gives it (as saved, if it no
    longer reads as a config: the comparison then names what differs)."""
    from ditsam.model.config import DITSamConfig

    try:
        return DITSamConfig.from_dict(model).resolved_dict()
    except (ConfigError, TypeError, ValueError):
        return model


def check_resumed_architecture(
    last: Path, config: ExperimentConfig, target: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]
) -> None:
    """Refuse, in one sentence, to resume a checkpoint into a model of another architecture or with
        non-finite weights (a state dict that does not fit would fail deep inside torch). ``target``: the
    state dict of the model built now."""
    from ditsam.model.checkpoints import CheckpointError, first_non_finite

    stored = last / "experiment.yaml"
    if stored.is_file():
        saved = _flatten(
            _resolved((yaml.safe_load(stored.read_text(encoding="utf-8")) or {}).get("model", {})), "model."
        )
        current = _flatten(config.model.resolved_dict(), "model.")
        changed = [
            f"{key}: {saved[key]!r} in the checkpoint, {value!r} now"
            for key, value in current.items()
            if key in saved and saved[key] != value and key not in RESUME_MAY_CHANGE
        ]
        if changed:
            raise ConfigError(
                f"cannot resume {last}: the experiment's model differs from the one it was trained with "
                f"({'; '.join(changed)}). Resume with the settings it was trained with, or start again with "
                f"--overwrite (or another --run-dir)"
            )
    mismatched = [
        f"{key} {tuple(value.shape)} in the checkpoint, {tuple(target[key].shape)} now"
        for key, value in weights.items()
        if key in target and value.shape != target[key].shape
    ]
    missing = sorted(set(target) ^ set(weights))
    if mismatched or missing:
        detail = "; ".join(mismatched[:3]) or f"keys {', '.join(missing[:3])} are not in both"
        raise ConfigError(
            f"cannot resume {last}: its weights do not fit the model built now ({detail}); the architecture or "
            f"the text encoder changed. Resume with the settings it was trained with, or start again with --overwrite"
        )
    bad = first_non_finite(weights)
    if bad is not None:
        raise CheckpointError(f"cannot resume {last / 'training_state.pt'}: {bad}")


def save_checkpoint(
    run_dir: Path, *, name: str, model: DITSam, state: dict[str, Any], config: ExperimentConfig, step: int
) -> Path:
    """Write ``checkpoints/<name>`` of ``run_dir`` whole or not at all (the copy before it stays until the new one
    is complete): ``model``'s ``save_pretrained`` folder (LoRA adapters merged: no peft needed to load it), the
    training ``state`` (:func:`~ditsam.engine.checkpoint.capture_training_state`) and the experiment config. A
    failed write raises :class:`RunFolderError` naming optimiser step ``step``, the cause and what is kept."""

    def write(directory: Path) -> None:
        merged_copy(model).save_pretrained(directory)
        save_training_state(directory, state)
        (directory / "experiment.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))

    target = run_dir / "checkpoints" / name
    try:
        return write_atomically(target, write)
    except OSError as error:
        kept = (
            f"the previous checkpoint {target} is intact"
            if target.is_dir()
            else f"no earlier {name!r} checkpoint existed"
        )
        advice = "Free some space" if is_disk_full(error) else "Fix that"
        raise RunFolderError(
            f"cannot save checkpoint {target} at step {step}: {describe_write_failure(error, target.parent)}; "
            f"{kept}. {advice}, then continue with --resume"
        ) from error


def resume_training(
    run_dir: Path,
    config: ExperimentConfig,
    *,
    model: DITSam,
    optimizer: torch.optim.Optimizer,
    ema: EMA | None,
    main_process: bool,
) -> tuple[Path, Progress]:
    """Continue from the newest checkpoint copy of ``run_dir`` that is whole and loads (``last``, else ``best``):
    checked against the model built now, loaded into ``model`` (unwrapped), ``optimizer`` and ``ema``, the
    metrics records logged after it dropped (by the ``main_process``). Returns the copy and where training
    stood."""
    copy, state = load_newest_training_state(run_dir / "checkpoints", CHECKPOINT_NAMES)
    check_resumed_architecture(copy, config, model.state_dict(), state["model"])
    restore_training_state(state, model=model, optimizer=optimizer, ema=ema)
    progress = Progress(**state["progress"])
    if "train_seconds" not in state["progress"]:
        logger.warning(
            "%s was saved before checkpoints counted training time: this run's train_seconds counts from now on", copy
        )
    if main_process:
        drop_metrics_after_checkpoint(run_dir / METRICS_FILE, progress, counted="metrics_records" in state["progress"])
    return copy, progress


def drop_metrics_after_checkpoint(path: Path, progress: Progress, *, counted: bool) -> None:
    """Keep the metrics records written up to the resumed checkpoint: the steps after it run again and
    log again. A checkpoint from before the records were counted keeps the file as it is."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True) if path.is_file() else []
    if not counted:
        progress.metrics_records = len(lines)
        return
    if len(lines) > progress.metrics_records:
        write_text_atomically(path, "".join(lines[: progress.metrics_records]))
        logger.info(
            "%s: dropped %d record(s) logged after the resumed checkpoint", path, len(lines) - progress.metrics_records
        )


def non_finite_message(
    run_dir: Path, *, step: int, epoch: int, bad_refs: list[int] | None, init_checkpoint: str | None
) -> str:
    """Why training stops at a NaN / inf loss at optimiser step ``step``, which checkpoints of ``run_dir`` are
    kept, and where to look (the starting weights, when it happens at the first step after loading them)."""
    where = f"batch ref_ids {bad_refs}" if bad_refs is not None else "on another process"
    if step == 0 and init_checkpoint:
        cause = (
            f"non-finite loss at the first step (step 0), right after loading train.init_checkpoint={init_checkpoint} "
            f"({where}): the starting weights give NaN / inf on this data, so suspect them (or the model "
            f"config they were loaded into, or train.mixed_precision) before the data"
        )
    else:
        cause = f"non-finite loss at step {step} (epoch {epoch}), {where}"
    checkpoints = run_dir / "checkpoints"
    written = [name for name in CHECKPOINT_NAMES if (checkpoints / name).is_dir()]
    if written:
        return (
            f"{cause}; the checkpoints written before it are kept ({', '.join(str(checkpoints / n) for n in written)})"
        )
    return f"{cause}; no checkpoint has been written yet, so there is nothing to resume from"
