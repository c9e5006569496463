"""``ditsam eval --protocol``: our exact protocol against the authors' test code, on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ditsam.data.transforms import TransformMeta
from ditsam.engine.evaluate import predicted_mask
from ditsam.metrics import RISMetrics


def _meta(*, orig: int, canvas: int, flipped: bool = False) -> TransformMeta:
    return TransformMeta(
        orig_h=orig,
        orig_w=orig,
        resized_h=canvas,
        resized_w=canvas,
        pad_top=0,
        pad_left=0,
        flipped=flipped,
        input_size=canvas,
    )


def test_strict_precision_drops_an_iou_of_exactly_one_half():
    gt = np.zeros((2, 2), bool)
    gt[0, :] = True
    pred = np.zeros((2, 2), bool)
    pred[0, 0] = True  # I = 1, U = 2: IoU exactly 0.5
    exact, reference = RISMetrics(), RISMetrics(strict=True)
    assert exact.update(pred, gt) == reference.update(pred, gt) == 0.5
    assert exact.compute()["p@0.5"] == 100.0 and reference.compute()["p@0.5"] == 0.0
    assert exact.compute()["miou"] == reference.compute()["miou"] == 50.0
    perfect = gt.copy()
    exact.update(perfect, gt), reference.update(perfect, gt)
    assert exact.compute()["p@0.9"] == reference.compute()["p@0.9"] == 50.0  # IoU 1 counts in both


def test_upsampled_single_pixel_grows_under_the_reference_rule():
    # Canvas 8 -> original 16 (x2). One confident pixel at (3, 3). Exact protocol: the logits are resized
    # first; output rows 6, 7 sample canvas rows 2.75 / 3.25 -> 0.25 * -10 + 0.75 * 10 = 5 > logit(0.35),
    # rows 5 and 8 give -5. Reference: the binary mask is resized; rows 5..8 get weights 0.25 / 0.75 > 0.
    logits = torch.full((8, 8), -10.0)
    logits[3, 3] = 10.0
    meta = _meta(orig=16, canvas=8)
    exact = predicted_mask(logits, meta, threshold=0.35, protocol="exact")
    reference = predicted_mask(logits, meta, threshold=0.35, protocol="reference")
    expected_exact = np.zeros((16, 16), bool)
    expected_exact[6:8, 6:8] = True
    expected_reference = np.zeros((16, 16), bool)
    expected_reference[5:9, 5:9] = True
    np.testing.assert_array_equal(exact, expected_exact)
    np.testing.assert_array_equal(reference, expected_reference)
    # Against a ground truth equal to the exact prediction: IoU 1 vs 4 / 16.
    exact_metrics, reference_metrics = RISMetrics(), RISMetrics(strict=True)
    assert exact_metrics.update(exact, expected_exact) == 1.0
    assert reference_metrics.update(reference, expected_exact) == 0.25


def test_thin_mask_survives_the_reference_downscale_only():
    # Canvas 8 -> original 4 (x0.5). A one-pixel line on canvas row 3. Exact: the antialiased resize of the
    # logits averages rows 1..4 with weights 1/8, 3/8, 3/8, 1/8 -> 3/8 * 10 - 5/8 * 10 = -2.5: nothing left.
    # Reference: plain bilinear of the binary mask, output row 1 = mean of canvas rows 2 and 3 = 0.5 > 0.
    logits = torch.full((8, 8), -10.0)
    logits[3, :] = 10.0
    meta = _meta(orig=4, canvas=8)
    gt = np.zeros((4, 4), bool)
    gt[1, :] = True
    exact = predicted_mask(logits, meta, threshold=0.35, protocol="exact")
    reference = predicted_mask(logits, meta, threshold=0.35, protocol="reference")
    assert not exact.any()
    np.testing.assert_array_equal(reference, gt)
    exact_metrics, reference_metrics = RISMetrics(), RISMetrics(strict=True)
    exact_metrics.update(exact, gt), reference_metrics.update(reference, gt)
    assert exact_metrics.compute() == {"oiou": 0.0, "miou": 0.0, **{f"p@{t}": 0.0 for t in (0.5, 0.6, 0.7, 0.8, 0.9)}}
    assert reference_metrics.compute() == {
        "oiou": 100.0,
        "miou": 100.0,
        **{f"p@{t}": 100.0 for t in (0.5, 0.6, 0.7, 0.8, 0.9)},
    }


def test_reference_protocol_crops_the_padding_and_undoes_the_flip():
    logits = torch.full((8, 8), -10.0)
    logits[2, 0] = 10.0  # row 2 of the canvas = row 0 of the image (pad_top 2); column 0 = last column once unflipped
    meta = TransformMeta(
        orig_h=4, orig_w=8, resized_h=4, resized_w=8, pad_top=2, pad_left=0, flipped=True, input_size=8
    )
    reference = predicted_mask(logits, meta, threshold=0.35, protocol="reference")
    expected = np.zeros((4, 8), bool)
    expected[0, 7] = True
    np.testing.assert_array_equal(reference, expected)
    np.testing.assert_array_equal(predicted_mask(logits, meta, threshold=0.35, protocol="exact"), expected)


def test_unknown_protocol_is_refused():
    with pytest.raises(ValueError, match="unknown evaluation protocol 'paper'"):
        predicted_mask(torch.zeros(8, 8), _meta(orig=8, canvas=8), threshold=0.35, protocol="paper")  # type: ignore[arg-type]


def test_cli_offers_the_protocol():
    import argparse

    from ditsam.cli import eval as eval_cli

    parser = argparse.ArgumentParser()
    eval_cli.register(parser.add_subparsers())
    assert parser.parse_args(["eval", "model"]).protocol == "exact"
    assert parser.parse_args(["eval", "model", "--protocol", "reference"]).protocol == "reference"
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "model", "--protocol", "paper"])
