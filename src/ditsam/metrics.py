"""Referring-segmentation metrics, exactly as the RIS literature reports them.

Per sample: I = |pred AND gt|, U = |pred OR gt|, at the original image resolution.

- oIoU (a.k.a. cIoU) = sum(I) / sum(U) over the split;
- mIoU = mean over samples of I / U (a sample with U = 0 — empty prediction and empty ground
  truth — scores 1);
- P@X = share of samples with IoU >= X (``strict=True``: IoU > X, as the authors' test code).

All values are returned in percent. For several processes, :meth:`RISMetrics.state` gives the
sums as one float64 tensor to all-reduce (``sum``), and :meth:`RISMetrics.load_state` puts the
reduced sums back: intersections, unions and counts are summed, never per-rank scores averaged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
METRIC_NAMES = ("oiou", "miou", *(f"p@{t}" for t in THRESHOLDS))


def _as_bool_array(mask: Any, name: str) -> np.ndarray:
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise ValueError(f"{name} must be a boolean mask, got dtype {mask.dtype} (threshold logits first)")
    if mask.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) mask, got shape {mask.shape}")
    return mask


class RISMetrics:
    """Accumulates oIoU, mIoU and P@X over samples of any sizes.

    ``strict``: a sample counts for P@X when its IoU is > X instead of >= X (the authors' test
    code; see ``ditsam eval --protocol reference``).
    """

    def __init__(self, *, strict: bool = False) -> None:
        self.strict = strict
        self.reset()

    def reset(self) -> None:
        self.intersection = 0
        self.union = 0
        self.count = 0
        self.iou_sum = 0.0
        self.hits = [0] * len(THRESHOLDS)

    def update(self, pred: Any, gt: Any) -> float:
        """Add one sample (boolean (H, W) masks of the same size); returns its IoU."""
        pred_mask = _as_bool_array(pred, "pred")
        gt_mask = _as_bool_array(gt, "gt")
        if pred_mask.shape != gt_mask.shape:
            raise ValueError(
                f"pred {pred_mask.shape} and gt {gt_mask.shape} differ in size: metrics are computed at the "
                "original image resolution (restore the prediction first)"
            )
        intersection = int(np.count_nonzero(pred_mask & gt_mask))
        union = int(np.count_nonzero(pred_mask | gt_mask))
        iou = intersection / union if union else 1.0
        self.intersection += intersection
        self.union += union
        self.count += 1
        self.iou_sum += iou
        for index, threshold in enumerate(THRESHOLDS):
            self.hits[index] += int(iou > threshold if self.strict else iou >= threshold)
        return iou

    def state(self) -> torch.Tensor:
        """The sums as a float64 tensor [I, U, count, sum IoU, hits...] (exact for counts < 2**53)."""
        return torch.tensor([self.intersection, self.union, self.count, self.iou_sum, *self.hits], dtype=torch.float64)

    def load_state(self, state: torch.Tensor) -> None:
        """Replace the sums by ``state`` (e.g. after an all-reduce of :meth:`state` over processes)."""
        values = state.detach().cpu().double().tolist()
        if len(values) != 4 + len(THRESHOLDS):
            raise ValueError(f"expected a state of {4 + len(THRESHOLDS)} values, got {len(values)}")
        self.intersection, self.union, self.count = (int(round(v)) for v in values[:3])
        self.iou_sum = values[3]
        self.hits = [int(round(v)) for v in values[4:]]

    def compute(self) -> dict[str, float]:
        """{"oiou", "miou", "p@0.5", ..., "p@0.9"} in percent; ``count`` samples must be > 0."""
        if self.count == 0:
            raise ValueError("no samples were added: nothing to compute")
        result = {
            "oiou": 100.0 * self.intersection / self.union if self.union else 100.0,
            "miou": 100.0 * self.iou_sum / self.count,
        }
        for threshold, hits in zip(THRESHOLDS, self.hits):
            result[f"p@{threshold}"] = 100.0 * hits / self.count
        return result


def format_table(results: dict[str, dict[str, float]], *, title: str = "") -> str:
    """A Markdown table, one row per split, two decimals like the paper."""
    header = "| split | " + " | ".join(n if n != "oiou" else "oIoU" for n in METRIC_NAMES).replace("miou", "mIoU") + " |"
    lines = [title] if title else []
    lines += [header, "|" + "---|" * (len(METRIC_NAMES) + 1)]
    for split, values in results.items():
        lines.append(f"| {split} | " + " | ".join(f"{values[n]:.2f}" for n in METRIC_NAMES) + " |")
    return "\n".join(lines)
