"""Referring-segmentation metrics, exactly as the RIS literature reports them.

Per sample: I = |pred AND gt|, U = |pred OR gt|, at the original image resolution.

- oIoU (a.k.a. cIoU) = sum(I) / sum(U) over the split;
- mIoU = mean over samples of I / U (a sample with U = 0 — empty prediction and empty ground
  truth — scores 1);
- P@X = share of samples with IoU >= X (``strict=True``: IoU > X, as the authors' test code).

All values are returned in percent. For several processes, :meth:`RISMetrics.state` gives the
sums as one float64 tensor to all-reduce (``sum``), and :meth:`RISMetrics.load_state` puts the
reduced sums back: intersections, unions and counts are summed, never per-rank scores averaged.

Generalized RIS (gRefCOCO: a sentence may name several objects or none) is scored by
:class:`GRESMetrics` with gIoU, cIoU, N-acc and T-acc as gRefCOCO's reference evaluator defines them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
METRIC_NAMES = ("oiou", "miou", *(f"p@{t}" for t in THRESHOLDS))
# gRefCOCO's evaluator reports precision at these IoUs only.
GRES_THRESHOLDS = (0.7, 0.8, 0.9)
GRES_METRIC_NAMES = ("giou", "ciou", "n_acc", "t_acc", *(f"p@{t}" for t in GRES_THRESHOLDS))
COLUMN_TITLES = {"oiou": "oIoU", "miou": "mIoU", "giou": "gIoU", "ciou": "cIoU", "n_acc": "N-acc", "t_acc": "T-acc"}


def _as_bool_array(mask: Any, name: str) -> np.ndarray:
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise ValueError(f"{name} must be a boolean mask, got dtype {mask.dtype} (threshold logits first)")
    if mask.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) mask, got shape {mask.shape}")
    return mask


def _mask_pair(pred: Any, gt: Any) -> tuple[np.ndarray, np.ndarray]:
    """Both masks as boolean (H, W) arrays, checked to be of the same size."""
    pred_mask = _as_bool_array(pred, "pred")
    gt_mask = _as_bool_array(gt, "gt")
    if pred_mask.shape != gt_mask.shape:
        raise ValueError(
            f"pred {pred_mask.shape} and gt {gt_mask.shape} differ in size: metrics are computed at the "
            "original image resolution (restore the prediction first)"
        )
    return pred_mask, gt_mask


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
        pred_mask, gt_mask = _mask_pair(pred, gt)
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


class GRESMetrics:
    """Generalized-RIS metrics over samples whose ground truth may be several objects or none.

    Per sample, with "no target" as the positive class (the rules of gRefCOCO's reference
    evaluator, ReLA):

    - no-target GT, flagged no-target: IoU 1; adds nothing to the cumulative I and U;
    - no-target GT, not flagged: IoU 0; U grows by the predicted area;
    - target GT, flagged no-target: IoU 0; I adds 0, U adds |pred OR gt|;
    - otherwise IoU = I / U (0 when U = 0), I and U added.

    gIoU = mean IoU; cIoU = sum I / sum U (100 when U is 0 over the whole split); N-acc = no-target
    samples flagged / no-target samples; T-acc = target samples not flagged / target samples;
    P@X = share of *target* samples with IoU >= X. A split without samples of a kind has no N-acc
    (or T-acc, P@X): :meth:`compute` reports None there. ``state`` / ``load_state`` sum over
    processes exactly as :class:`RISMetrics` does.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.intersection = 0
        self.union = 0
        self.count = 0
        self.iou_sum = 0.0
        self.no_target_count = 0
        self.no_target_flagged = 0
        self.target_count = 0
        self.target_kept = 0
        self.hits = [0] * len(GRES_THRESHOLDS)

    def update(
        self, pred: Any, gt: Any, pred_no_target: bool | None = None, *, gt_no_target: bool | None = None
    ) -> float:
        """Add one sample; returns its IoU.

        ``pred``, ``gt``: boolean (H, W) masks at the original size; an all-False ``gt`` is a
        no-target sample. ``pred_no_target``: the model's "nothing is referred" flag; None derives
        it from ``pred`` (no foreground pixel = no target). ``gt_no_target``: the annotation's own
        flag, when the data has one; it decides the kind of sample instead of the mask (a target whose
        mask is empty -- a sliver lost to down-scaling, crowd parts only -- stays a target).
        """
        pred_mask, gt_mask = _mask_pair(pred, gt)
        flagged = not pred_mask.any() if pred_no_target is None else bool(pred_no_target)
        self.count += 1
        if (not gt_mask.any()) if gt_no_target is None else bool(gt_no_target):
            self.no_target_count += 1
            if flagged:
                self.no_target_flagged += 1
                iou = 1.0
            else:
                self.union += int(np.count_nonzero(pred_mask))
                iou = 0.0
            self.iou_sum += iou
            return iou
        self.target_count += 1
        union = int(np.count_nonzero(pred_mask | gt_mask))
        self.union += union
        if flagged:
            iou = 0.0
        else:
            self.target_kept += 1
            intersection = int(np.count_nonzero(pred_mask & gt_mask))
            self.intersection += intersection
            iou = intersection / union if union else 0.0
        self.iou_sum += iou
        for index, threshold in enumerate(GRES_THRESHOLDS):
            self.hits[index] += int(iou >= threshold)
        return iou

    def state(self) -> torch.Tensor:
        """The sums as a float64 tensor [I, U, count, sum IoU, no-target count, flagged, target count,
        kept, hits...] (exact for counts < 2**53)."""
        return torch.tensor(
            [
                self.intersection,
                self.union,
                self.count,
                self.iou_sum,
                self.no_target_count,
                self.no_target_flagged,
                self.target_count,
                self.target_kept,
                *self.hits,
            ],
            dtype=torch.float64,
        )

    def load_state(self, state: torch.Tensor) -> None:
        """Replace the sums by ``state`` (e.g. after an all-reduce of :meth:`state` over processes)."""
        values = state.detach().cpu().double().tolist()
        expected = 8 + len(GRES_THRESHOLDS)
        if len(values) != expected:
            raise ValueError(f"expected a state of {expected} values, got {len(values)}")
        counts = [int(round(v)) for v in values]
        self.intersection, self.union, self.count = counts[:3]
        self.iou_sum = values[3]
        self.no_target_count, self.no_target_flagged, self.target_count, self.target_kept = counts[4:8]
        self.hits = counts[8:]

    def compute(self) -> dict[str, float | None]:
        """{"giou", "ciou", "n_acc", "t_acc", "p@0.7", "p@0.8", "p@0.9"} in percent (None: no sample
        of the kind the value is about); ``count`` samples must be > 0."""
        if self.count == 0:
            raise ValueError("no samples were added: nothing to compute")

        def percent(part: float, whole: int) -> float | None:
            return 100.0 * part / whole if whole else None

        result: dict[str, float | None] = {
            "giou": 100.0 * self.iou_sum / self.count,
            "ciou": 100.0 * self.intersection / self.union if self.union else 100.0,
            "n_acc": percent(self.no_target_flagged, self.no_target_count),
            "t_acc": percent(self.target_kept, self.target_count),
        }
        for threshold, hits in zip(GRES_THRESHOLDS, self.hits):
            result[f"p@{threshold}"] = percent(hits, self.target_count)
        return result


def format_table(results: dict[str, dict[str, Any]], *, title: str = "") -> str:
    """A Markdown table, one row per split, two decimals like the paper; the RIS columns, or the
    generalized-RIS ones when the rows hold ``giou`` (None shows as ``n/a``)."""
    names = GRES_METRIC_NAMES if any("giou" in values for values in results.values()) else METRIC_NAMES
    header = "| split | " + " | ".join(COLUMN_TITLES.get(name, name) for name in names) + " |"
    lines = [title] if title else []
    lines += [header, "|" + "---|" * (len(names) + 1)]
    for split, values in results.items():
        cells = ("n/a" if values[name] is None else f"{values[name]:.2f}" for name in names)
        lines.append(f"| {split} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(folder: Path, results: dict[str, dict[str, Any]], *, title: str) -> None:
    """``results.json`` (the metrics per split) and ``results.md`` (:func:`format_table` under ``title``) in
    ``folder``."""
    (folder / "results.json").write_text(json.dumps(results, indent=2))
    (folder / "results.md").write_text(format_table(results, title=title) + "\n")


def summarize(values: dict[str, Any]) -> str:
    """The headline metrics of one split on one line, e.g. "mIoU 30.12 oIoU 28.40" or, for generalized
    RIS, "gIoU 41.20 cIoU 38.00 N-acc 60.00 T-acc 90.00" (``n/a`` where a value is None)."""
    names = ("giou", "ciou", "n_acc", "t_acc") if "giou" in values else ("miou", "oiou")
    return " ".join(
        f"{COLUMN_TITLES[name]} {'n/a' if values[name] is None else format(values[name], '.2f')}" for name in names
    )
