"""One optimiser step -- forward, loss and backward over the micro-batches, gradient clipping, Adam,
EMA -- that never waits for the device.

The step reads no tensor value on the host: the loss and a finiteness flag per micro-batch stay on
the device in the returned :class:`StepResult`, for the caller to read when it logs (the Trainer
checks them every ``train.log_every_steps`` steps and before every checkpoint). So on a GPU the
host queues step after step while the device works. The price: a non-finite loss is noticed at the
next check instead of at once, and the steps in between have already been applied (to weights that
are then abandoned: the check raises, and no checkpoint is written from them).

:class:`TrainingStep` is what :class:`ditsam.engine.train.Trainer` runs per optimiser step, and what
``benchmarks/gpu_suite.py`` times; :class:`PendingFiniteChecks` holds the flags of the steps not yet read.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import torch
from torch import nn

if TYPE_CHECKING:
    from accelerate import Accelerator

    from ditsam.engine.config import TrainConfig
    from ditsam.engine.ema import EMA
    from ditsam.model.dit import DITSamOutput


@dataclasses.dataclass
class MicroBatch:
    """One forward's worth of training data, on the device.

    images: (B, 3, S, S) normalised canvases; masks: (B, 1, S, S) targets in {0, 1}; prompts: keyword
    arguments of :meth:`DITSam.forward <ditsam.model.dit.DITSam.forward>` (``text=`` a TokenizedText,
    or ``points=`` / ``boxes=``); no_target: (B,) bool, True where the sentence names nothing
    (generalized RIS; None when the data has no such sentences).
    """

    images: torch.Tensor
    masks: torch.Tensor
    prompts: dict[str, Any]
    no_target: torch.Tensor | None = None


@dataclasses.dataclass
class StepResult:
    """What one step leaves on the device (reading either value synchronises).

    loss: () mean training loss over the micro-batches; finite: (M,) bool, one per micro-batch.
    """

    loss: torch.Tensor
    finite: torch.Tensor


LossFunction = Callable[["DITSamOutput", MicroBatch], torch.Tensor]


def build_adam(parameters: Iterable[nn.Parameter], train: "TrainConfig", *, device: torch.device) -> torch.optim.Adam:
    """Adam as the config says; on a GPU the fused implementation (one kernel for all parameters,
    no host-side loop over them)."""
    return torch.optim.Adam(
        list(parameters),
        lr=train.lr,
        betas=train.betas,
        eps=train.eps,
        weight_decay=train.weight_decay,
        fused=True if device.type == "cuda" else None,
    )


def _tie_every_output(output: "DITSamOutput") -> torch.Tensor:
    """0, computed from every tensor of ``output``: DDP wants each output that depends on parameters in the
    loss (the IoU head's predictions are not, unless supervised), else it waits for their gradients
    forever. Zero gradients leave Adam's update of those parameters at exactly 0."""
    values = (getattr(output, field.name) for field in dataclasses.fields(output))
    return sum(value.sum() for value in values if isinstance(value, torch.Tensor) and value.requires_grad) * 0


class TrainingStep:
    """forward + loss + backward per micro-batch (gradients accumulated, DDP synchronised on the last
    one), clipping, ``optimizer.step()``, ``zero_grad``, EMA update.

    ``loss_fn(output, micro_batch)`` -> scalar loss; ``model`` as prepared by ``accelerator`` (its
    unwrapped module feeds the EMA); ``grad_clip`` 0 = no clipping.
    """

    def __init__(
        self,
        *,
        accelerator: "Accelerator",
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: LossFunction,
        ema: "EMA | None" = None,
        grad_clip: float = 0.0,
    ) -> None:
        self.accelerator = accelerator
        self.model = model
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.ema = ema
        self.grad_clip = grad_clip

    def __call__(self, micro_batches: Sequence[MicroBatch]) -> StepResult:
        if not micro_batches:
            raise ValueError("an optimiser step needs at least one micro-batch")
        losses = []
        for index, micro in enumerate(micro_batches):
            last = index == len(micro_batches) - 1
            with contextlib.nullcontext() if last else self.accelerator.no_sync(self.model):
                with self.accelerator.autocast():
                    output = self.model(micro.images, **micro.prompts)
                    loss = self.loss_fn(output, micro)
                    if self.accelerator.num_processes > 1:
                        loss = loss + _tie_every_output(output)
                self.accelerator.backward(loss / len(micro_batches))
            losses.append(loss.detach().float())
        if self.grad_clip > 0:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.accelerator.unwrap_model(self.model))
        stacked = torch.stack(losses)
        return StepResult(loss=stacked.mean(), finite=torch.isfinite(stacked))


# Sums a tensor over the processes of the run (accelerator.reduce(t, reduction="sum")).
ReduceSum = Callable[[torch.Tensor], torch.Tensor]


class PendingFiniteChecks:
    """The steps whose finiteness flags nobody has read yet (reading one waits for the device, so the
    Trainer reads them all at once: at log steps and before a checkpoint)."""

    def __init__(self) -> None:
        # (global step, its result, the ref_ids of each of its micro-batches)
        self._pending: list[tuple[int, StepResult, list[list[int]]]] = []

    def add(self, *, step: int, result: StepResult, ref_ids: list[list[int]]) -> None:
        """Keep global step ``step``'s ``result`` unread; ``ref_ids``: one list per micro-batch of the step."""
        self._pending.append((step, result, ref_ids))

    def first_failure(self, *, reduce_sum: ReduceSum) -> tuple[int, list[int] | None] | None:
        """Read and forget the pending flags. None when every pending step was finite on every process
        (``reduce_sum`` sums the (N,) float flags, 1 = not finite here, one per pending step, over them); else
        the first step that was not, with the ref_ids of its first non-finite micro-batch here (None when only
        another process saw it)."""
        pending, self._pending = self._pending, []
        if not pending:
            return None
        local = torch.stack([~result.finite.all() for _, result, _ in pending]).float()
        bad = reduce_sum(local).cpu()
        if not bool(bad.any()):
            return None
        step, result, ref_ids = pending[int(bad.nonzero()[0])]
        finite = result.finite.cpu()
        return step, None if bool(finite.all()) else ref_ids[int((~finite).nonzero()[0])]
