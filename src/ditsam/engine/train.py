"""Training loop on Hugging Face Accelerate: one CPU, one GPU, DDP over GPUs or nodes.

The run folder (its layout, preparation, checkpoints, resume checks) is :mod:`ditsam.engine.run_folder`; one
optimiser step is :mod:`ditsam.engine.step`; an epoch's samples are :mod:`ditsam.engine.data`. :class:`Trainer`
builds everything from an experiment config -- final before anything is written -- and runs the loop;
:func:`train` is its entry point.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, TypeVar

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ditsam.config import ConfigError
from ditsam.data.collate import RISCollator
from ditsam.distributed import any_rank, main_first, on_main, training_accelerator
from ditsam.engine.checkpoint import capture_training_state
from ditsam.engine.config import ExperimentConfig
from ditsam.engine.data import epoch_loader, ris_dataset
from ditsam.engine.data_check import check_data
from ditsam.engine.ema import EMA
from ditsam.engine.evaluate import EvalResult, evaluate
from ditsam.engine.finetune import prepare_for_finetuning
from ditsam.engine.losses import training_loss
from ditsam.engine.prompts import mixed_prompts
from ditsam.engine.run_folder import (
    BAD_RECORDS_FILE,
    METRICS_FILE,
    Progress,
    default_run_dir,
    disk_full_error,
    non_finite_message,
    prepare_run_folder,
    resume_training,
    save_checkpoint,
    write_run_record,
)
from ditsam.engine.schedule import learning_rate
from ditsam.engine.step import MicroBatch, PendingFiniteChecks, TrainingStep, build_adam
from ditsam.engine.stopping import PAUSE_PER_STEP_ENV, StopSignals, TrainingStopped
from ditsam.engine.text_encoder import resolve_text_encoder
from ditsam.engine.trackers import RunTrackers
from ditsam.metrics import summarize, write_results
from ditsam.model.dit import DITSam
from ditsam.outputs import is_disk_full

logger = logging.getLogger(__name__)
T = TypeVar("T")  # what _in_groups groups


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stops, checkpoints already written are kept."""


def build_model(config: ExperimentConfig) -> DITSam:
    model = DITSam(config.model)
    if config.train.init_checkpoint:
        from ditsam.model.checkpoints import load_checkpoint, resolve_init_checkpoint

        report = load_checkpoint(model, resolve_init_checkpoint(config.train.init_checkpoint))
        logger.info("initial weights from %s: %s", config.train.init_checkpoint, report)
    return model


def _in_groups(batches: Iterable[T], *, size: int) -> Iterator[list[T]]:
    """``batches`` ``size`` at a time, the last group of fewer when they do not divide."""
    group: list[T] = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


class Trainer:
    """Builds everything from an :class:`ExperimentConfig` and runs the loop. See :func:`train`."""

    def __init__(
        self,
        config: ExperimentConfig,
        *,
        run_dir: Path | None = None,
        resume: bool = False,
        overwrite: bool = False,
        skip_bad_data: bool = False,
        progress: bool = True,
    ) -> None:
        self.config = config
        train = config.train
        mixed = train.mixed_precision
        if mixed == "auto":
            mixed = "bf16" if torch.cuda.is_available() else "no"
        run_dir = default_run_dir(config, run_dir)
        self.trackers = RunTrackers(names=train.log_with, run_dir=run_dir)  # one not installed: stops here
        self.accelerator = training_accelerator(mixed_precision=mixed, log_with=self.trackers.log_with)
        self.mixed_precision = mixed
        world = self.accelerator.num_processes
        if train.batch_size % (train.micro_batch_size * world):
            raise ConfigError(
                f"train.batch_size {train.batch_size} is not a multiple of train.micro_batch_size "
                f"{train.micro_batch_size} x {world} process(es)"
            )
        self.accumulation = train.batch_size // (train.micro_batch_size * world)
        self.progress_bars = progress and self.accelerator.is_main_process
        if self.accelerator.is_main_process:
            logger.info(
                "training on %d process%s (%s): %d micro-batch(es) of %d per process and step",
                world,
                "es" if world > 1 else "",
                self.accelerator.device,
                self.accumulation,
                train.micro_batch_size,
            )
        self.lock = None
        # The config is final before anything is written: a generated text encoder's folder is known now.
        self.config, self._text_encoder = resolve_text_encoder(config, run_dir=run_dir)
        # Rank 0 prepares (and locks) the folder, finishing interrupted checkpoint writes, before any rank reads it.
        self.run_dir = on_main(lambda: self._prepare_run_folder(run_dir, resume=resume, overwrite=overwrite))
        try:
            self._build(resume=resume, skip_bad_data=skip_bad_data)
        except BaseException:
            self.close()
            raise

    def _prepare_run_folder(self, run_dir: Path, *, resume: bool, overwrite: bool) -> Path:
        path, self.lock = prepare_run_folder(self.config, run_dir, resume=resume, overwrite=overwrite)
        return path

    def close(self) -> None:
        """Give the run folder's lock back (training ended, or failed)."""
        if self.lock is not None:
            self.lock.release()

    def _load_data(self, config: ExperimentConfig, *, skip_bad_data: bool) -> None:
        """The datasets, checked, and a generated text encoder written (rank 0 first: it generates RefShapes
        and its BERT, which the others then read)."""
        self.train_set = ris_dataset(config, config.data.train_split, train=True)
        self.eval_sets = {split: ris_dataset(config, split, train=False) for split in config.data.eval_splits}
        # Keyed apart from the evaluation splits: one of them may read the training split too.
        check_data(
            {f"{config.data.train_split} (training)": self.train_set, **self.eval_sets},
            skip_bad=skip_bad_data,
            progress=self.progress_bars,
            report=self.run_dir / BAD_RECORDS_FILE if self.accelerator.is_main_process else None,
        )
        if self._text_encoder is not None:
            base = self.train_set.base
            self._text_encoder.build(base.iter_sentences() if hasattr(base, "iter_sentences") else ())

    def _build(self, *, resume: bool, skip_bad_data: bool) -> None:
        from accelerate.utils import set_seed

        train = self.config.train
        world = self.accelerator.num_processes
        set_seed(train.seed)
        config = self.config
        main_first(lambda: self._load_data(config, skip_bad_data=skip_bad_data))
        if len(self.train_set) < train.micro_batch_size * world:
            raise ConfigError(
                f"the training split has {len(self.train_set)} samples, fewer than one batch "
                f"({train.micro_batch_size} x {world})"
            )

        model = prepare_for_finetuning(build_model(config), train)
        self.ema = EMA(model, decay=train.ema_decay, warmup=train.ema_warmup) if train.ema_decay > 0 else None
        optimizer = build_adam(
            (p for p in model.parameters() if p.requires_grad), train, device=self.accelerator.device
        )
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        if self.ema is not None:
            self.ema.to(self.accelerator.device)
        self.step = TrainingStep(
            accelerator=self.accelerator,
            model=self.model,
            optimizer=self.optimizer,
            loss_fn=functools.partial(training_loss, config=config),
            ema=self.ema,
            grad_clip=train.grad_clip,
        )
        self._pending_checks = PendingFiniteChecks()
        self.progress = Progress()
        # While fit() runs: (its perf_counter start, progress.train_seconds then), for the time saved in checkpoints.
        self._clock: tuple[float, float] | None = None
        if resume:
            main_first(self._resume)  # rank 0 first: a damaged copy is reported once
        self.collator = RISCollator(self.unwrapped.tokenizer, drop_padding_columns=config.model.mask_text_padding)

    # -- helpers ---------------------------------------------------------------------------
    @property
    def unwrapped(self) -> DITSam:
        return self.accelerator.unwrap_model(self.model)

    @property
    def eval_model(self) -> DITSam:
        return self.ema.shadow if self.ema is not None else self.unwrapped

    @property
    def micro_batches_per_epoch(self) -> int:
        return math.ceil((len(self.train_set) // self.accelerator.num_processes) / self.config.train.micro_batch_size)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.micro_batches_per_epoch / self.accumulation)

    def _epoch_loader(self, epoch: int, skip_micro_batches: int) -> DataLoader:
        """This process's share of a seeded permutation, the same on every process and every resume."""
        return epoch_loader(
            self.train_set,
            config=self.config,
            epoch=epoch,
            skip_micro_batches=skip_micro_batches,
            rank=self.accelerator.process_index,
            world=self.accelerator.num_processes,
            collate_fn=self.collator,
            pin_memory=self.accelerator.device.type == "cuda",
        )

    def _log(self, record: dict[str, Any]) -> None:
        if not self.accelerator.is_main_process:
            return
        with open(self.run_dir / METRICS_FILE, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        self.progress.metrics_records += 1
        self.trackers.log(self.accelerator, record, step=record.get("step", self.progress.global_step))

    # -- checkpoints ---------------------------------------------------------------------------
    def save(self, name: str) -> Path | None:
        self._check_finite()  # never write weights that a non-finite loss has touched
        if self._clock is not None:
            started, seconds_before = self._clock
            self.progress.train_seconds = seconds_before + time.perf_counter() - started
        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            return None
        state = capture_training_state(
            progress=dataclasses.asdict(self.progress), model=self.unwrapped, optimizer=self.optimizer, ema=self.ema
        )
        return save_checkpoint(
            self.run_dir,
            name=name,
            model=self.eval_model,
            state=state,
            config=self.config,
            step=self.progress.global_step,
        )

    def _resume(self) -> None:
        """Continue from the newest checkpoint copy that is whole and loads (``last``, else ``best``)."""
        copy, self.progress = resume_training(
            self.run_dir,
            self.config,
            model=self.unwrapped,
            optimizer=self.optimizer,
            ema=self.ema,
            main_process=self.accelerator.is_main_process,
        )
        logger.info("resumed from %s at epoch %d, step %d", copy, self.progress.epoch, self.progress.global_step)

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate_all(self, *, keep: int = 0) -> dict[str, EvalResult]:
        results = {}
        for split, dataset in self.eval_sets.items():
            results[split] = evaluate(
                self.eval_model,
                dataset,
                batch_size=self.config.train.micro_batch_size,
                threshold=self.config.train.threshold,
                num_workers=self.config.data.num_workers,
                mixed_precision=self.mixed_precision,
                process_index=self.accelerator.process_index,
                num_processes=self.accelerator.num_processes,
                all_reduce=lambda t: self.accelerator.reduce(t, reduction="sum"),
                keep=keep,
                progress=self.progress_bars,
                prompt=self.config.train.eval_prompt,
            )
        return results

    def _after_evaluation(self, results: dict[str, EvalResult], epoch: int) -> None:
        from ditsam.engine.pictures import save_prediction_pictures

        for split, result in results.items():
            self._log(
                {
                    "step": self.progress.global_step,
                    "epoch": epoch,
                    "split": split,
                    **{f"{split}/{k}": v for k, v in result.metrics.items()},
                }
            )
        if self.accelerator.is_main_process:
            for split, result in results.items():
                if result.kept:
                    path = save_prediction_pictures(
                        result.kept,
                        self.eval_sets[split],
                        self.run_dir / "predictions" / f"epoch{epoch:03d}_{split}.png",
                    )
                    step = self.progress.global_step
                    self.trackers.log_picture(self.accelerator, f"predictions/{split}", path, step=step)

    # -- the loop ------------------------------------------------------------------------------
    def fit(self) -> dict[str, dict[str, float]]:
        train = self.config.train
        if self.accelerator.is_main_process:
            write_run_record(self.run_dir, self.config, {"train": self.train_set, **self.eval_sets})
        step, config = self.progress.global_step, self.config.to_dict()
        self.trackers.start(self.accelerator, project=self.config.name, config=config, resumed_step=step)
        total_steps = self.steps_per_epoch * train.epochs
        if train.max_steps is not None:
            total_steps = min(total_steps, train.max_steps)
        last_results: dict[str, EvalResult] = {}
        bar = tqdm(
            total=total_steps,
            initial=self.progress.global_step,
            desc="train",
            unit="step",
            disable=not self.progress_bars,
            dynamic_ncols=True,
        )
        pause = float(os.environ.get(PAUSE_PER_STEP_ENV) or 0)
        self._clock = (time.perf_counter(), self.progress.train_seconds)
        self.model.train()
        stop = StopSignals()
        stop.install()
        try:
            while self.progress.epoch < train.epochs and self.progress.global_step < total_steps:
                epoch, started = self.progress.epoch, time.perf_counter()
                mean_loss, exhausted = self._train_epoch(
                    epoch, total_steps=total_steps, bar=bar, stop=stop, pause=pause
                )
                epoch_finished = self.progress.global_step < total_steps or exhausted
                if epoch_finished:
                    self.progress.epoch += 1
                    self.progress.step_in_epoch = 0
                done = self.progress.global_step >= total_steps or self.progress.epoch >= train.epochs
                if done or (epoch_finished and self.progress.epoch % train.eval_every_epochs == 0):
                    last_results = self.evaluate_all(keep=train.num_visualizations)
                    self._after_evaluation(last_results, epoch)
                    self._select_best(last_results)
                self.save("last")
                summary = " ".join(f"{s} {summarize(r.metrics)}" for s, r in last_results.items())
                logger.info("epoch %d: loss %.4f, %.1f s, %s", epoch, mean_loss, time.perf_counter() - started, summary)
                if any_rank(stop.received is not None):  # a signal during the evaluation
                    self._stop(stop, saved=True)
        except OSError as error:
            if is_disk_full(error):
                raise disk_full_error(self.run_dir, error) from error
            raise
        finally:
            stop.restore()
            bar.close()
            self.trackers.finish(self.accelerator)
            self.close()
        final = {split: result.metrics for split, result in last_results.items()}
        if self.accelerator.is_main_process and final:
            write_results(self.run_dir, final, title=f"## {self.config.name}")
        return final

    def _train_epoch(
        self, epoch: int, *, total_steps: int, bar: tqdm, stop: StopSignals, pause: float
    ) -> tuple[float, bool]:
        """The optimiser steps left in ``epoch`` (up to step ``total_steps``), each logged, saved and stopped
        after as the config and the signals say (``pause``: seconds to sleep after each, a test's hook).
        Returns this process's mean training loss over the steps this call took, and whether they used up
        the epoch's micro-batches."""
        train = self.config.train
        epoch_loss, epoch_samples, started = torch.zeros(()), 0, time.perf_counter()
        loader = self._epoch_loader(epoch, self.progress.step_in_epoch * self.accumulation)
        remaining = len(loader)
        for group in _in_groups(loader, size=self.accumulation):
            remaining -= len(group)
            loss = self._optimizer_step(group)  # on the device: read only at log steps
            samples = sum(len(batch.sentences) for batch in group)
            epoch_loss = epoch_loss.to(loss.device) + loss * samples
            epoch_samples += samples
            self.progress.step_in_epoch += 1
            self.progress.global_step += 1
            bar.update(1)
            if self.progress.global_step % train.log_every_steps == 0:
                self._check_finite()
                lr = self.optimizer.param_groups[0]["lr"]
                samples_s = epoch_samples * self.accelerator.num_processes / max(time.perf_counter() - started, 1e-9)
                bar.set_postfix(epoch=epoch, loss=f"{float(loss):.4f}", lr=f"{lr:.2e}", samples_s=f"{samples_s:.1f}")
                self._log(
                    {"step": self.progress.global_step, "epoch": epoch, "train/loss": float(loss), "train/lr": lr}
                )
            saved = bool(train.save_every_steps) and self.progress.global_step % train.save_every_steps == 0
            if saved:
                self.save("last")
            if pause:
                time.sleep(pause)
            if any_rank(stop.received is not None):  # every process stops after the same step
                self._stop(stop, saved=saved)
            if self.progress.global_step >= total_steps:
                break
        return float(epoch_loss) / max(epoch_samples, 1), remaining == 0

    def _stop(self, stop: StopSignals, *, saved: bool) -> None:
        """Write ``last`` (unless this step was just saved) and raise :class:`TrainingStopped`."""
        if not saved:
            self.save("last")
        why = stop.received.name if stop.received is not None else "a stop signal to another process"
        message = (
            f"stopped after step {self.progress.global_step} ({why}): {self.run_dir / 'checkpoints' / 'last'} "
            f"holds it; continue with --resume"
        )
        raise TrainingStopped(message)

    def _select_best(self, results: dict[str, EvalResult]) -> None:
        split = self.config.data.select_split
        if split not in results:
            return
        metrics = results[split].metrics
        name = self.config.train.select_metric
        if name not in metrics:
            raise ConfigError(
                f"train.select_metric {name!r} is not a metric of split {split!r}; its metrics are {', '.join(metrics)}"
            )
        score = metrics[name]
        if score is None:  # e.g. N-acc of a split without no-target sentences
            return
        if self.progress.best_score is None or score > self.progress.best_score:
            self.progress.best_score = score
            self.save("best")

    def _optimizer_step(self, group: list[Any]) -> torch.Tensor:
        """One optimiser step over the micro-batches of ``group``; returns the mean loss, a 0-dim tensor on
        the device (reading it synchronises: the loop does so at log steps only). Finiteness is checked
        later, by :meth:`_check_finite`."""
        train = self.config.train
        lr = learning_rate(
            self.progress.global_step,
            steps_per_epoch=self.steps_per_epoch,
            epochs=train.epochs,
            base_lr=train.lr,
            config=train.schedule,
        )
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = lr
        micro_batches = []
        for batch in group:
            # Pinned host memory (pin_memory on a GPU) makes the copy asynchronous: no wait for the device.
            batch = batch.to(self.accelerator.device, non_blocking=True)
            micro_batches.append(
                MicroBatch(
                    images=batch.images,
                    masks=batch.masks,
                    prompts=mixed_prompts(batch.text, batch.masks, self.config.train),
                    no_target=batch.no_target,
                )
            )
        result = self.step(micro_batches)
        ref_ids = [[int(r) for r in batch.ref_ids] for batch in group]
        self._pending_checks.add(step=self.progress.global_step, result=result, ref_ids=ref_ids)
        return result.loss

    def _check_finite(self) -> None:
        """Raise NonFiniteLossError if a step since the last check had a non-finite loss on any process.
        The one place where training waits for the device (one flag per step, summed over processes)."""
        failure = self._pending_checks.first_failure(
            reduce_sum=lambda flags: self.accelerator.reduce(flags, reduction="sum")
        )
        if failure is None:
            return
        step, bad_refs = failure
        raise NonFiniteLossError(
            non_finite_message(
                self.run_dir,
                step=step,
                epoch=self.progress.epoch,
                bad_refs=bad_refs,
                init_checkpoint=self.config.train.init_checkpoint,
            )
        )


def train(
    config: ExperimentConfig,
    *,
    run_dir: Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    skip_bad_data: bool = False,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Train ``config``; returns the last evaluation's metrics per split.

    ``resume``: continue the run in ``run_dir`` from ``checkpoints/last``; ``overwrite``: replace the
    run there. A run folder holding checkpoints needs one of the two (:class:`RunFolderError`).
    ``skip_bad_data``: train on the records that pass the data check, instead of stopping
    (:func:`~ditsam.engine.data_check.check_data`).
    """
    return Trainer(
        config, run_dir=run_dir, resume=resume, overwrite=overwrite, skip_bad_data=skip_bad_data, progress=progress
    ).fit()
