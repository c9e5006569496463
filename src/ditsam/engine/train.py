"""Training loop on Hugging Face Accelerate: one CPU, one GPU, DDP over GPUs or nodes.

Run folder layout::

    <run>/config.yaml           resolved experiment config
    <run>/metrics.jsonl         one JSON record per log step and per evaluation
    <run>/tensorboard/          loss, lr, metrics, prediction pictures
    <run>/predictions/          prediction pictures per evaluation
    <run>/checkpoints/last/     resumable (written atomically)
    <run>/checkpoints/best/     best on data.select_split by train.select_metric
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from ditsam.config import ConfigError
from ditsam.data.collate import RISCollator
from ditsam.engine.checkpoint import load_training_state, save_training_state, write_atomically
from ditsam.engine.config import ExperimentConfig
from ditsam.engine.data import resolve_text_encoder, ris_dataset
from ditsam.engine.ema import EMA
from ditsam.engine.evaluate import EvalResult, evaluate
from ditsam.engine.finetune import merged_copy, prepare_for_finetuning
from ditsam.engine.schedule import learning_rate
from ditsam.engine.step import MicroBatch, StepResult, TrainingStep, build_adam
from ditsam.metrics import format_table
from ditsam.model.dit import DITSam

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class RunFolderError(OSError):
    """The run folder cannot be created or written."""


@dataclasses.dataclass
class Progress:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_score: float | None = None


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, *, dice_weight: float = 0.0) -> torch.Tensor:
    """Binary cross-entropy on mask logits over the padded canvas (the paper's loss), plus
    ``dice_weight`` times a soft Dice loss: (B,1,S,S) x (B,1,S,S) -> scalar."""
    logits, target = logits.float(), target.float()
    loss = F.binary_cross_entropy_with_logits(logits, target)
    if dice_weight:
        probabilities = torch.sigmoid(logits).flatten(1)
        target = target.flatten(1)
        overlap = (probabilities * target).sum(1)
        dice = 1 - (2 * overlap + 1) / (probabilities.sum(1) + target.sum(1) + 1)
        loss = loss + dice_weight * dice.mean()
    return loss


def prompts_from_masks(masks: torch.Tensor, kind: str, generator: torch.Generator | None = None) -> dict[str, Any]:
    """Point or box prompts derived from (B,1,S,S) target masks on the canvas (Table 4 "Mix").

    "point": one positive point at a random foreground pixel centre; "box": the mask's extent
    (x1, y1, x2, y2). Returns keyword arguments for :class:`DITSam`'s forward.
    """
    foreground = masks[:, 0] > 0.5
    batch = foreground.shape[0]
    if kind == "point":
        coords = torch.zeros(batch, 1, 2, device=masks.device)
        for row in range(batch):
            ys, xs = torch.nonzero(foreground[row], as_tuple=True)
            pick = int(torch.randint(len(ys), (1,), generator=generator))
            coords[row, 0] = torch.stack([xs[pick], ys[pick]]).float() + 0.5
        return {"points": (coords, torch.ones(batch, 1, device=masks.device))}
    boxes = torch.zeros(batch, 4, device=masks.device)
    for row in range(batch):
        ys, xs = torch.nonzero(foreground[row], as_tuple=True)
        boxes[row] = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
    return {"boxes": boxes}


def build_model(config: ExperimentConfig) -> DITSam:
    model = DITSam(config.model)
    if config.train.init_checkpoint:
        from ditsam.model.sources import resolve_init_checkpoint
        from ditsam.model.weights import load_checkpoint

        report = load_checkpoint(model, resolve_init_checkpoint(config.train.init_checkpoint))
        logger.info("initial weights from %s: %s", config.train.init_checkpoint, report)
    return model


def prepare_run_folder(config: ExperimentConfig, run_dir: Path | None) -> Path:
    run_dir = Path(run_dir) if run_dir is not None else Path(config.output_dir) / config.name
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok", encoding="utf-8")
        probe.unlink()
    except OSError as error:
        raise RunFolderError(f"run folder {run_dir} is not writable: {error.strerror or error}") from error
    return run_dir


class Trainer:
    """Builds everything from an :class:`ExperimentConfig` and runs the loop. See :func:`train`."""

    def __init__(self, config: ExperimentConfig, *, run_dir: Path | None = None, resume: bool = False,
                 progress: bool = True) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.config = config
        train = config.train
        mixed = train.mixed_precision
        if mixed == "auto":
            mixed = "bf16" if torch.cuda.is_available() else "no"
        self.accelerator = Accelerator(mixed_precision=mixed)
        self.mixed_precision = mixed
        world = self.accelerator.num_processes
        if train.batch_size % (train.micro_batch_size * world):
            raise ConfigError(
                f"train.batch_size {train.batch_size} is not a multiple of train.micro_batch_size "
                f"{train.micro_batch_size} x {world} process(es)"
            )
        self.accumulation = train.batch_size // (train.micro_batch_size * world)
        self.progress_bars = progress and self.accelerator.is_main_process
        self.run_dir = prepare_run_folder(config, run_dir) if self.accelerator.is_main_process else Path(
            run_dir or Path(config.output_dir) / config.name
        )
        set_seed(train.seed)

        with self.accelerator.main_process_first():  # the first process generates RefShapes and its BERT
            self.train_set = ris_dataset(config, config.data.train_split, train=True)
            self.eval_sets = {split: ris_dataset(config, split, train=False) for split in config.data.eval_splits}
            config = self.config = resolve_text_encoder(config)
        if len(self.train_set) < train.micro_batch_size * world:
            raise ConfigError(
                f"the training split has {len(self.train_set)} samples, fewer than one batch "
                f"({train.micro_batch_size} x {world})"
            )

        model = prepare_for_finetuning(build_model(config), train)
        self.ema = EMA(model, decay=train.ema_decay, warmup=train.ema_warmup) if train.ema_decay > 0 else None
        optimizer = build_adam((p for p in model.parameters() if p.requires_grad), train, device=self.accelerator.device)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        if self.ema is not None:
            self.ema.to(self.accelerator.device)
        self.step = TrainingStep(accelerator=self.accelerator, model=self.model, optimizer=self.optimizer,
                                 loss_fn=self._loss, ema=self.ema, grad_clip=train.grad_clip)
        # Steps not yet checked for a finite loss: (global step, result, ref_ids per micro-batch).
        self._unchecked: list[tuple[int, StepResult, list[list[int]]]] = []
        self.progress = Progress()
        if resume:
            self._resume()
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
        generator = torch.Generator().manual_seed(self.config.train.seed * 100_003 + epoch)
        if getattr(self.train_set.base, "presorted", False):  # a stream in random order already
            order = torch.arange(len(self.train_set))
        else:
            order = torch.randperm(len(self.train_set), generator=generator)
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        per_process = len(self.train_set) // world
        mine = order[rank * per_process:(rank + 1) * per_process]
        mine = mine[skip_micro_batches * self.config.train.micro_batch_size:]
        self.train_set.set_epoch(epoch)
        return DataLoader(
            Subset(self.train_set, mine.tolist()), batch_size=self.config.train.micro_batch_size, shuffle=False,
            num_workers=self.config.data.num_workers, collate_fn=self.collator,
            pin_memory=self.accelerator.device.type == "cuda", persistent_workers=False,
            # Its own generator: creating an iterator must not draw from the global RNG, or a resumed
            # run's dropout masks would differ from an uninterrupted run's.
            generator=torch.Generator().manual_seed(self.config.train.seed + epoch),
        )

    def _log(self, record: dict[str, Any]) -> None:
        if not self.accelerator.is_main_process:
            return
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    self.writer.add_scalar(key, value, record.get("step", self.progress.global_step))

    # -- checkpoints ---------------------------------------------------------------------------
    def _training_state(self) -> dict[str, Any]:
        state = {
            "progress": dataclasses.asdict(self.progress),
            "model": self.unwrapped.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }
        if self.ema is not None:
            state["ema"] = self.ema.shadow.state_dict()
            state["ema_updates"] = self.ema.updates
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state()
        return state

    def save(self, name: str) -> Path | None:
        self._check_finite()  # never write weights that a non-finite loss has touched
        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            return None
        state = self._training_state()

        def write(directory: Path) -> None:
            merged_copy(self.eval_model).save_pretrained(directory)  # LoRA adapters merged: no peft to load
            save_training_state(directory, state)
            (directory / "experiment.yaml").write_text(yaml.safe_dump(self.config.to_dict(), sort_keys=False))

        return write_atomically(self.run_dir / "checkpoints" / name, write)

    def _resume(self) -> None:
        state = load_training_state(self.run_dir / "checkpoints" / "last")
        self.unwrapped.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            self.ema.shadow.load_state_dict(state["ema"])
            self.ema.updates = int(state["ema_updates"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda_rng"])
        self.progress = Progress(**state["progress"])
        logger.info("resumed at epoch %d, step %d", self.progress.epoch, self.progress.global_step)

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate_all(self, *, keep: int = 0) -> dict[str, EvalResult]:
        results = {}
        for split, dataset in self.eval_sets.items():
            results[split] = evaluate(
                self.eval_model, dataset, batch_size=self.config.train.micro_batch_size,
                threshold=self.config.train.threshold, num_workers=self.config.data.num_workers,
                mixed_precision=self.mixed_precision, process_index=self.accelerator.process_index,
                num_processes=self.accelerator.num_processes,
                all_reduce=lambda t: self.accelerator.reduce(t, reduction="sum"), keep=keep,
                progress=self.progress_bars,
            )
        return results

    def _after_evaluation(self, results: dict[str, EvalResult], epoch: int) -> None:
        from ditsam.engine.pictures import save_prediction_pictures

        for split, result in results.items():
            self._log({"step": self.progress.global_step, "epoch": epoch, "split": split,
                       **{f"{split}/{k}": v for k, v in result.metrics.items()}})
        if self.accelerator.is_main_process:
            for split, result in results.items():
                if result.kept:
                    path = save_prediction_pictures(
                        result.kept, self.eval_sets[split], self.run_dir / "predictions" / f"epoch{epoch:03d}_{split}.png"
                    )
                    if self.writer is not None:
                        import numpy as np
                        from PIL import Image

                        picture = np.asarray(Image.open(path).convert("RGB"))
                        self.writer.add_image(f"predictions/{split}", picture, self.progress.global_step, dataformats="HWC")

    # -- the loop ------------------------------------------------------------------------------
    def fit(self) -> dict[str, dict[str, float]]:
        train = self.config.train
        self.writer = None
        if self.accelerator.is_main_process:
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(self.config.to_dict(), sort_keys=False))
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        total_steps = self.steps_per_epoch * train.epochs
        if train.max_steps is not None:
            total_steps = min(total_steps, train.max_steps)
        last_results: dict[str, EvalResult] = {}
        bar = tqdm(total=total_steps, initial=self.progress.global_step, desc="train", unit="step",
                   disable=not self.progress_bars, dynamic_ncols=True)
        self.model.train()
        try:
            while self.progress.epoch < train.epochs and self.progress.global_step < total_steps:
                epoch = self.progress.epoch
                epoch_loss, epoch_samples, started = torch.zeros(()), 0, time.perf_counter()
                loader = self._epoch_loader(epoch, self.progress.step_in_epoch * self.accumulation)
                remaining = len(loader)
                group: list[Any] = []
                for batch in loader:
                    group.append(batch)
                    remaining -= 1
                    if len(group) < self.accumulation and remaining > 0:
                        continue
                    loss = self._optimizer_step(group)  # on the device: read only at log steps
                    epoch_loss = epoch_loss.to(loss.device) + loss * sum(len(b.sentences) for b in group)
                    epoch_samples += sum(len(b.sentences) for b in group)
                    group = []
                    self.progress.step_in_epoch += 1
                    self.progress.global_step += 1
                    lr = self.optimizer.param_groups[0]["lr"]
                    bar.update(1)
                    if self.progress.global_step % train.log_every_steps == 0:
                        self._check_finite()
                        elapsed = time.perf_counter() - started
                        bar.set_postfix(epoch=epoch, loss=f"{float(loss):.4f}", lr=f"{lr:.2e}",
                                        samples_s=f"{epoch_samples * self.accelerator.num_processes / max(elapsed, 1e-9):.1f}")
                        self._log({"step": self.progress.global_step, "epoch": epoch, "train/loss": float(loss), "train/lr": lr})
                    if train.save_every_steps and self.progress.global_step % train.save_every_steps == 0:
                        self.save("last")
                    if self.progress.global_step >= total_steps:
                        break
                epoch_finished = self.progress.global_step < total_steps or remaining == 0
                if epoch_finished:
                    self.progress.epoch += 1
                    self.progress.step_in_epoch = 0
                done = self.progress.global_step >= total_steps or self.progress.epoch >= train.epochs
                if done or (epoch_finished and self.progress.epoch % train.eval_every_epochs == 0):
                    last_results = self.evaluate_all(keep=train.num_visualizations)
                    self._after_evaluation(last_results, epoch)
                    self._select_best(last_results)
                self.save("last")
                mean_loss = float(epoch_loss) / max(epoch_samples, 1)
                summary = " ".join(f"{s} mIoU {r.metrics['miou']:.2f} oIoU {r.metrics['oiou']:.2f}" for s, r in last_results.items())
                logger.info("epoch %d: loss %.4f, %.1f s, %s", epoch, mean_loss, time.perf_counter() - started, summary)
        finally:
            bar.close()
            if self.writer is not None:
                self.writer.close()
        final = {split: result.metrics for split, result in last_results.items()}
        if self.accelerator.is_main_process and final:
            (self.run_dir / "results.json").write_text(json.dumps(final, indent=2))
            (self.run_dir / "results.md").write_text(format_table(final, title=f"## {self.config.name}") + "\n")
        return final

    def _select_best(self, results: dict[str, EvalResult]) -> None:
        split = self.config.data.select_split
        if split not in results:
            return
        score = results[split].metrics[self.config.train.select_metric]
        if self.progress.best_score is None or score > self.progress.best_score:
            self.progress.best_score = score
            self.save("best")

    def _prompts(self, batch: Any) -> dict[str, Any]:
        """Text, or for a Mix experiment sometimes a point or a box from the target mask."""
        mix = self.config.train.prompt_mix
        if mix[1] == 0 and mix[2] == 0:
            return {"text": batch.text}
        kind = ("text", "point", "box")[int(torch.multinomial(torch.tensor(mix, dtype=torch.float), 1))]
        if kind == "text" or not bool((batch.masks.flatten(1) > 0.5).any(1).all()):
            return {"text": batch.text}
        return prompts_from_masks(batch.masks, kind)

    def _loss(self, output: Any, micro: MicroBatch) -> torch.Tensor:
        return segmentation_loss(output.logits, micro.masks, dice_weight=self.config.train.dice_weight)

    def _optimizer_step(self, group: list[Any]) -> torch.Tensor:
        """One optimiser step over the micro-batches of ``group``; returns the mean loss, a 0-dim tensor on
        the device (reading it synchronises: the loop does so at log steps only). Finiteness is checked
        later, by :meth:`_check_finite`."""
        train = self.config.train
        lr = learning_rate(self.progress.global_step, steps_per_epoch=self.steps_per_epoch, epochs=train.epochs,
                           base_lr=train.lr, config=train.schedule)
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = lr
        micro_batches = []
        for batch in group:
            # Pinned host memory (pin_memory on a GPU) makes the copy asynchronous: no wait for the device.
            batch = batch.to(self.accelerator.device, non_blocking=True)
            micro_batches.append(MicroBatch(images=batch.images, masks=batch.masks, prompts=self._prompts(batch)))
        result = self.step(micro_batches)
        self._unchecked.append((self.progress.global_step, result, [[int(r) for r in b.ref_ids] for b in group]))
        return result.loss

    def _check_finite(self) -> None:
        """Raise NonFiniteLossError if a step since the last check had a non-finite loss on any process.
        The one place where training waits for the device (one flag per step, summed over processes)."""
        unchecked, self._unchecked = self._unchecked, []
        if not unchecked:
            return
        local = torch.stack([~result.finite.all() for _, result, _ in unchecked]).float()
        bad = self.accelerator.reduce(local, reduction="sum").cpu()
        if not bool(bad.any()):
            return
        first = int(bad.nonzero()[0])
        step, result, ref_ids = unchecked[first]
        finite = result.finite.cpu()
        if bool(finite.all()):
            where = "on another process"
        else:
            where = f"batch ref_ids {ref_ids[int((~finite).nonzero()[0])]}"
        raise NonFiniteLossError(
            f"non-finite loss at step {step} (epoch {self.progress.epoch}), {where}; "
            f"the last good checkpoint in {self.run_dir / 'checkpoints'} is kept"
        )


def train(config: ExperimentConfig, *, run_dir: Path | None = None, resume: bool = False,
          progress: bool = True) -> dict[str, dict[str, float]]:
    """Train ``config``; returns the last evaluation's metrics per split."""
    return Trainer(config, run_dir=run_dir, resume=resume, progress=progress).fit()
