"""Evaluation: one function used by training and by ``ditsam eval``.

Two scoring protocols (``protocol``):

- ``"exact"`` (default, DESIGN 2): the canvas logits are restored to the original image (crop the
  unpadded region, resize back bilinearly), then thresholded; P@X counts IoU >= X.
- ``"reference"``: as the authors' test code -- threshold on the canvas (the model's input
  resolution, 512 for the reference), crop the unpadded region, resize the *binary* mask bilinearly
  to the original size and count every value > 0 as foreground; P@X counts IoU > X.

The mask scored per sentence is the one :class:`ditsam.api.Segmenter` returns
(:func:`~ditsam.model.prediction.choose_prediction`: mask 0, or a multimask model's best predicted
IoU), thresholded by the same rule. Either way the masks are scored with
:class:`~ditsam.metrics.RISMetrics`, or -- for readers whose sentences may name several objects or
none (``generalized``, e.g. gRefCOCO) -- with :class:`~ditsam.metrics.GRESMetrics`: the model's
no-target flag comes from its presence head (``model.no_target_head``), else an empty mask means
"no target". Under ``"reference"`` the
generalized scores are taken at 480 x 480, the resolution gRefCOCO's reference evaluator compares
masks at (prediction resized bilinearly before the threshold, ground truth nearest).
With several processes each one scores a disjoint shard of the split (no sampler padding, so no
sample counts twice) and the sums are all-reduced.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from ditsam.data.collate import RISCollator
from ditsam.data.transforms import TransformMeta, restore_to_original
from ditsam.defaults import MASK_THRESHOLD, check_threshold
from ditsam.engine.prompts import EVAL_PROMPTS, evaluation_prompts
from ditsam.metrics import GRESMetrics, RISMetrics
from ditsam.model.prediction import choose_prediction, foreground

logger = logging.getLogger(__name__)

Protocol = Literal["exact", "reference"]
PROTOCOLS: tuple[str, ...] = ("exact", "reference")
# Side of the square gRefCOCO's reference evaluator (ReLA) scores masks at.
GRES_REFERENCE_SIZE = 480


def gres_reference_masks(
    logits: torch.Tensor, meta: TransformMeta, gt: np.ndarray, *, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, ground truth) at gRefCOCO's reference resolution, 480 x 480 (see the module docstring)."""
    size = (GRES_REFERENCE_SIZE, GRES_REFERENCE_SIZE)
    restored = restore_to_original(logits, meta).float()
    pred = F.interpolate(restored[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    target = F.interpolate(torch.from_numpy(gt)[None, None].float(), size=size, mode="nearest")[0, 0]
    return foreground(pred, threshold=threshold).cpu().numpy(), (target > 0.5).numpy()


def predicted_mask(
    logits: torch.Tensor, meta: TransformMeta, *, threshold: float, protocol: Protocol = "exact"
) -> np.ndarray:
    """(S, S) canvas logits -> boolean (H, W) mask at the original resolution, by ``protocol``
    (see the module docstring)."""
    if protocol == "exact":
        return foreground(restore_to_original(logits, meta), threshold=threshold).cpu().numpy()
    if protocol != "reference":
        raise ValueError(f"unknown evaluation protocol {protocol!r}: use one of {', '.join(PROTOCOLS)}")
    binary = foreground(logits, threshold=threshold).float()
    crop = binary[meta.pad_top : meta.pad_top + meta.resized_h, meta.pad_left : meta.pad_left + meta.resized_w]
    if meta.flipped:
        crop = crop.flip(-1)
    resized = F.interpolate(crop[None, None], size=(meta.orig_h, meta.orig_w), mode="bilinear", align_corners=False)
    return (resized[0, 0] > 0).cpu().numpy()


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
    # Generalized RIS: the model's "nothing is referred" flag (None: the model has no presence head).
    no_target: bool | None = None


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
    threshold: float = MASK_THRESHOLD,
    num_workers: int = 0,
    mixed_precision: str = "no",
    process_index: int = 0,
    num_processes: int = 1,
    all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    keep: int = 0,
    on_prediction: Callable[[SamplePrediction], None] | None = None,
    progress: bool = True,
    protocol: Protocol = "exact",
    prompt: str = "text",
) -> EvalResult:
    """Score ``model`` on an evaluation :class:`~ditsam.data.collate.RISDataset`.

    ``all_reduce`` sums a tensor over processes (e.g. ``accelerator.reduce(t, "sum")``); ``keep``
    predictions of the first samples are returned for pictures; ``on_prediction`` sees every
    sample of this process (mask dumps); ``protocol`` is ``"exact"`` or ``"reference"`` (the
    authors' test code: threshold on the canvas, binary mask resized, > 0 foreground, P@X strict);
    ``prompt`` is ``"text"`` (the sentences) or Table 4's ``"box"`` / ``"points"`` drawn from the ground
    truth (:func:`~ditsam.engine.prompts.evaluation_prompts`).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {protocol!r}: use one of {', '.join(PROTOCOLS)}")
    check_threshold(threshold)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    shard = Subset(dataset, range(process_index, len(dataset), num_processes))
    loader = DataLoader(
        shard,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=RISCollator(model.tokenizer),
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(0),  # leaves the global RNG (training's dropout) alone
    )
    generalized = bool(getattr(getattr(dataset, "base", dataset), "generalized", False))
    if prompt not in EVAL_PROMPTS:
        raise ValueError(f"unknown evaluation prompt {prompt!r}: use one of {', '.join(EVAL_PROMPTS)}")
    if generalized and prompt != "text":
        raise ValueError(
            f"{prompt} prompts are drawn from the target, and generalized data has sentences with no target: "
            "score it with text prompts"
        )
    metrics = GRESMetrics() if generalized else RISMetrics(strict=protocol == "reference")
    kept: list[SamplePrediction] = []
    position = 0
    bar = tqdm(loader, desc="eval", unit="batch", disable=not progress or process_index != 0, leave=False)
    for batch in bar:
        batch = batch.to(device)
        if prompt == "text":
            prompts = {"text": batch.text}
        else:
            prompts = evaluation_prompts(batch.masks, prompt, shard.indices[position : position + len(batch)])
        with _autocast(device, mixed_precision):
            output = model(batch.images, **prompts)
        chosen = choose_prediction(output)
        logits = chosen.logits
        flags = None if chosen.no_target is None else chosen.no_target.tolist()
        for row in range(logits.shape[0]):
            gt = batch.gt_masks[row]
            flag = None if flags is None else bool(flags[row])
            if generalized and protocol == "reference":
                pred, scored_gt = gres_reference_masks(logits[row], batch.metas[row], gt, threshold=threshold)
            else:
                pred = predicted_mask(logits[row], batch.metas[row], threshold=threshold, protocol=protocol)
                scored_gt = gt
            iou = (
                metrics.update(pred, scored_gt, flag, gt_no_target=bool(batch.no_target[row]))
                if generalized
                else metrics.update(pred, gt)
            )
            sample = SamplePrediction(
                index=shard.indices[position],
                ref_id=int(batch.ref_ids[row]),
                sent_id=int(batch.sent_ids[row]),
                sentence=batch.sentences[row],
                iou=iou,
                pred=pred,
                gt=scored_gt,
                no_target=flag,
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
