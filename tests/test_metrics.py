"""Metric values on hand-made masks (DESIGN §2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ditsam.metrics import RISMetrics, format_table


def box(shape, y0, y1, x0, x1):
    mask = np.zeros(shape, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_hand_made_samples_of_different_sizes():
    metrics = RISMetrics()
    # Sample 1 (4x4): gt 8 px, pred 4 px inside it -> I 4, U 8, IoU 0.5.
    assert metrics.update(box((4, 4), 0, 2, 0, 4), box((4, 4), 0, 2, 0, 4) & box((4, 4), 0, 4, 0, 2)) == pytest.approx(
        0.5
    )
    # Sample 2 (3x5): perfect, 6 px -> I 6, U 6, IoU 1.
    assert metrics.update(box((3, 5), 0, 2, 0, 3), box((3, 5), 0, 2, 0, 3)) == 1.0
    # Sample 3 (10x2): disjoint, 2 px each -> I 0, U 4, IoU 0.
    assert metrics.update(box((10, 2), 0, 2, 0, 1), box((10, 2), 5, 7, 1, 2)) == 0.0
    # Sample 4: both empty -> U 0, IoU 1, adds nothing to oIoU.
    assert metrics.update(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 1.0
    # Sample 5: 10 gt px, pred covers 7 of them plus 0 extra -> IoU 0.7.
    gt = box((1, 10), 0, 1, 0, 10)
    assert metrics.update(box((1, 10), 0, 1, 0, 7), gt) == pytest.approx(0.7)
    result = metrics.compute()
    assert result["oiou"] == pytest.approx(100 * (4 + 6 + 0 + 0 + 7) / (8 + 6 + 4 + 0 + 10))
    assert result["miou"] == pytest.approx(100 * (0.5 + 1 + 0 + 1 + 0.7) / 5)
    assert result["p@0.5"] == pytest.approx(80.0)
    assert result["p@0.6"] == pytest.approx(60.0)
    assert result["p@0.7"] == pytest.approx(60.0)
    assert result["p@0.8"] == pytest.approx(40.0)
    assert result["p@0.9"] == pytest.approx(40.0)


def test_prediction_on_empty_gt_scores_zero():
    metrics = RISMetrics()
    assert metrics.update(box((4, 4), 0, 1, 0, 1), np.zeros((4, 4), bool)) == 0.0
    assert metrics.compute()["miou"] == 0.0


def test_state_sums_across_processes_equal_one_process():
    rng = np.random.default_rng(0)
    samples = [(rng.random((h, w)) > 0.5, rng.random((h, w)) > 0.4) for h, w in [(5, 7), (9, 3), (4, 4), (6, 11)]]
    single = RISMetrics()
    ranks = [RISMetrics(), RISMetrics()]
    for index, (pred, gt) in enumerate(samples):
        single.update(pred, gt)
        ranks[index % 2].update(torch.from_numpy(pred), torch.from_numpy(gt))
    merged = RISMetrics()
    merged.load_state(ranks[0].state() + ranks[1].state())
    assert merged.compute() == pytest.approx(single.compute())
    # Averaging per-rank oIoUs would be wrong; the merged value is the global ratio.
    assert merged.intersection == single.intersection and merged.union == single.union


def test_bad_inputs():
    metrics = RISMetrics()
    with pytest.raises(ValueError, match="differ in size"):
        metrics.update(np.zeros((2, 3), bool), np.zeros((3, 2), bool))
    with pytest.raises(ValueError, match="boolean"):
        metrics.update(np.zeros((2, 2), np.float32), np.zeros((2, 2), bool))
    with pytest.raises(ValueError, match="2-D"):
        metrics.update(np.zeros((1, 2, 2), bool), np.zeros((1, 2, 2), bool))
    with pytest.raises(ValueError, match="no samples"):
        RISMetrics().compute()


def test_table_has_two_decimals():
    table = format_table(
        {"val": {"oiou": 12.3456, "miou": 1, "p@0.5": 0, "p@0.6": 0, "p@0.7": 0, "p@0.8": 0, "p@0.9": 0}}
    )
    assert "| val | 12.35 | 1.00 |" in table


# --- generalized RIS (gRefCOCO's rules, see GRESMetrics) ---------------------------------------


def test_gres_every_branch_by_hand():
    from ditsam.metrics import GRESMetrics

    metrics = GRESMetrics()
    empty = np.zeros((4, 4), bool)
    # 1. no-target GT, flagged (empty prediction, flag derived): IoU 1, nothing added to I or U.
    assert metrics.update(empty, empty) == 1.0
    # 2. no-target GT, not flagged: IoU 0, U grows by the predicted area (3 px).
    assert metrics.update(box((4, 4), 0, 1, 0, 3), empty) == 0.0
    # 3. no-target GT, explicitly flagged although the mask has pixels: IoU 1, U unchanged.
    assert metrics.update(box((4, 4), 0, 4, 0, 4), empty, pred_no_target=True) == 1.0
    # 4. target GT (8 px), flagged no-target; pred 4 px inside gt: IoU 0, I += 0, U += |pred OR gt| = 8.
    gt = box((4, 4), 0, 2, 0, 4)
    assert metrics.update(box((4, 4), 0, 1, 0, 4), gt, pred_no_target=True) == 0.0
    # 5. target GT rows 0-1 (8 px), pred rows 1-2 (8 px), not flagged: I 4, U 12, IoU 1/3.
    assert metrics.update(box((4, 4), 1, 3, 0, 4), gt, pred_no_target=False) == pytest.approx(1 / 3)
    # 6. target GT, exact: I 6, U 6, IoU 1 (pred_no_target None, mask not empty -> not flagged).
    gt6 = box((3, 5), 0, 2, 0, 3)
    assert metrics.update(gt6.copy(), gt6) == 1.0
    # 7. target GT, empty prediction with no flag given -> counts as "no target": IoU 0, U += |gt| = 10.
    gt7 = box((2, 5), 0, 2, 0, 5)
    assert metrics.update(np.zeros((2, 5), bool), gt7) == 0.0
    result = metrics.compute()
    ious = [1.0, 0.0, 1.0, 0.0, 1 / 3, 1.0, 0.0]
    assert result["giou"] == pytest.approx(100 * sum(ious) / 7)
    assert result["ciou"] == pytest.approx(100 * (0 + 0 + 0 + 0 + 4 + 6 + 0) / (0 + 3 + 0 + 8 + 12 + 6 + 10))
    assert result["n_acc"] == pytest.approx(100 * 2 / 3)
    assert result["t_acc"] == pytest.approx(100 * 2 / 4)
    assert result["p@0.7"] == pytest.approx(25.0) and result["p@0.9"] == pytest.approx(25.0)


def test_gres_splits_without_a_kind_report_none():
    from ditsam.metrics import GRESMetrics

    only_targets = GRESMetrics()
    only_targets.update(box((3, 3), 0, 1, 0, 1), box((3, 3), 0, 1, 0, 1))
    result = only_targets.compute()
    assert result["n_acc"] is None and result["t_acc"] == 100.0 and result["giou"] == 100.0
    only_empty = GRESMetrics()
    only_empty.update(np.zeros((2, 2), bool), np.zeros((2, 2), bool))
    result = only_empty.compute()
    assert result["t_acc"] is None and result["p@0.7"] is None and result["n_acc"] == 100.0
    # No union anywhere: cIoU is 100 (nothing was predicted or expected).
    assert result["ciou"] == 100.0
    table = format_table({"val": result})
    assert "| gIoU | cIoU | N-acc | T-acc |" in table and "n/a" in table
    with pytest.raises(ValueError, match="no samples"):
        GRESMetrics().compute()


def test_gres_state_sums_across_processes_equal_one_process():
    from ditsam.metrics import GRESMetrics

    rng = np.random.default_rng(1)
    samples = []
    for index, (h, w) in enumerate([(5, 7), (9, 3), (4, 4), (6, 11), (3, 3), (7, 2)]):
        gt = rng.random((h, w)) > 0.5 if index % 3 else np.zeros((h, w), bool)
        samples.append((rng.random((h, w)) > 0.4, gt, None if index % 2 else bool(rng.random() > 0.5)))
    single = GRESMetrics()
    ranks = [GRESMetrics(), GRESMetrics()]
    for index, (pred, gt, flag) in enumerate(samples):
        single.update(pred, gt, flag)
        ranks[index % 2].update(torch.from_numpy(pred), torch.from_numpy(gt), flag)
    merged = GRESMetrics()
    merged.load_state(ranks[0].state() + ranks[1].state())
    assert merged.compute() == pytest.approx(single.compute())
    with pytest.raises(ValueError, match="differ in size"):
        single.update(np.zeros((2, 3), bool), np.zeros((3, 2), bool))
    with pytest.raises(ValueError, match="expected a state"):
        merged.load_state(torch.zeros(3))


def test_gres_annotation_flag_decides_the_kind_of_sample():
    """A target whose mask came out empty (a sliver lost to down-scaling, crowd parts only) stays a target."""
    from ditsam.metrics import GRESMetrics

    metrics = GRESMetrics()
    empty = np.zeros((3, 3), bool)
    assert metrics.update(empty, empty, gt_no_target=False) == 0.0  # not an IoU-1 "no target" hit
    assert metrics.update(empty, empty, gt_no_target=True) == 1.0
    result = metrics.compute()
    assert result["t_acc"] == 0.0 and result["n_acc"] == 100.0 and result["giou"] == 50.0
