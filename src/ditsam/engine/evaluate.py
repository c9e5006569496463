"""Evaluation: one function used by training and by ``ditsam eval``.

Predictions are thresholded on the padded canvas' logits after restoring them to the original
image (crop the unpadded region, resize back), then scored with :class:`~ditsam.metrics.RISMetrics`.
With several processes each one scores a disjoint shard of the split (no sampler padding, so no
sample counts twice) and the sums are all-reduced.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from ditsam.data.collate import RISCollator
from ditsam.data.transforms import restore_to_original
from ditsam.metrics import RISMetrics

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class SamplePrediction:
    """One evaluated sentence: predicted and ground-truth masks at original resolution."""

    index: int
    ref_id: int
    sent_id: int
    sentence: str
    iou: float
    pred: np.ndarray
    gt: np.ndarray


@dataclasses.dataclass
class EvalResult:
    metrics: dict[str, float]
    count: int
    kept: list[SamplePrediction]


def _autocast(device: torch.device, mixed_precision: str):
    if mixed_precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if mixed_precision == "bf16" else torch.float16
        return torch.autocast(device.type, dtype=dtype)
    return torch.autocast(device.type, enabled=False)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset: Any,
    *,
    batch_size: int = 16,
    threshold: float = 0.35,
    num_workers: int = 0,
    mixed_precision: str = "no",
    process_index: int = 0,
    num_processes: int = 1,
    all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    keep: int = 0,
    on_prediction: Callable[[SamplePrediction], None] | None = None,
    progress: bool = True,
) -> EvalResult:
    """Score ``model`` on an evaluation :class:`~ditsam.data.collate.RISDataset`.

    ``all_reduce`` sums a tensor over processes (e.g. ``accelerator.reduce(t, "sum")``); ``keep``
    predictions of the first samples are returned for pictures; ``on_prediction`` sees every
    sample of this process (mask dumps).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    shard = Subset(dataset, range(process_index, len(dataset), num_processes))
    loader = DataLoader(
        shard, batch_size=batch_size, shuffle=False, num_workers=num_workers,
        collate_fn=RISCollator(model.tokenizer), pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(0),  # leaves the global RNG (training's dropout) alone
    )
    metrics = RISMetrics()
    kept: list[SamplePrediction] = []
    position = 0
    bar = tqdm(loader, desc="eval", unit="batch", disable=not progress or process_index != 0, leave=False)
    for batch in bar:
        batch = batch.to(device)
        with _autocast(device, mixed_precision):
            logits = model(batch.images, text=batch.text).logits[:, 0].float()
        for row in range(logits.shape[0]):
            restored = restore_to_original(logits[row], batch.metas[row])
            pred = (torch.sigmoid(restored) > threshold).cpu().numpy()
            gt = batch.gt_masks[row]
            iou = metrics.update(pred, gt)
            sample = SamplePrediction(
                index=shard.indices[position], ref_id=int(batch.ref_ids[row]), sent_id=int(batch.sent_ids[row]),
                sentence=batch.sentences[row], iou=iou, pred=pred, gt=gt,
            )
            position += 1
            if len(kept) < keep:
                kept.append(sample)
            if on_prediction is not None:
                on_prediction(sample)
    state = metrics.state().to(device)
    if all_reduce is not None:
        state = all_reduce(state)
    metrics.load_state(state.cpu())
    model.train(was_training)
    return EvalResult(metrics=metrics.compute(), count=metrics.count, kept=kept)
