"""From model outputs to a prediction (ditsam.model.prediction) and the multimask training loss (SAM's recipe)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from ditsam.config import ConfigError
from ditsam.defaults import MASK_THRESHOLD
from ditsam.engine.config import TrainConfig
from ditsam.engine.losses import (
    iou_head_loss,
    mask_iou,
    mask_loss,
    per_mask_segmentation_loss,
    segmentation_loss,
    training_loss,
)
from ditsam.engine.step import MicroBatch
from ditsam.model.dit import DITSam, DITSamOutput
from ditsam.model.prediction import choose_prediction, final_mask, foreground
from helpers import tiny_config

SIDE = 8


def _output(logits: torch.Tensor, iou: torch.Tensor, presence: torch.Tensor | None = None) -> DITSamOutput:
    return DITSamOutput(logits=logits, low_res_logits=logits, iou_predictions=iou, presence_logits=presence)


def _labelled_masks(batch: int, masks: int) -> torch.Tensor:
    """(B, M, SIDE, SIDE) logits whose mask m of sample b is the constant 10 b + m."""
    values = 10 * torch.arange(batch)[:, None] + torch.arange(masks)[None, :]
    return values[:, :, None, None].float().expand(-1, -1, SIDE, SIDE).clone()


# ---------------------------------------------------------------------------------------------------
# Choosing the mask
# ---------------------------------------------------------------------------------------------------
def test_one_mask_is_mask_zero_whatever_its_score():
    logits = _labelled_masks(2, 1)
    chosen = choose_prediction(_output(logits, torch.tensor([[-3.0], [0.2]])))
    assert torch.equal(chosen.logits, logits[:, 0]) and chosen.logits.shape == (2, SIDE, SIDE)
    assert chosen.mask_index.tolist() == [0, 0] and chosen.score.tolist() == pytest.approx([-3.0, 0.2])
    assert chosen.presence is None and chosen.no_target is None


def test_three_masks_take_each_samples_highest_predicted_iou():
    iou = torch.tensor([[0.1, 0.9, 0.3], [0.8, 0.2, 0.1], [0.2, 0.3, 0.7]])
    chosen = choose_prediction(_output(_labelled_masks(3, 3), iou))
    assert chosen.mask_index.tolist() == [1, 0, 2]
    assert chosen.score.tolist() == pytest.approx([0.9, 0.8, 0.7])
    assert [float(chosen.logits[b, 0, 0]) for b in range(3)] == [1.0, 10.0, 22.0]


def test_low_precision_outputs_come_back_in_float32():
    chosen = choose_prediction(
        _output(
            _labelled_masks(1, 3).bfloat16(), torch.tensor([[0.1, 0.2, 0.9]]).bfloat16(), torch.tensor([1.0]).bfloat16()
        )
    )
    assert chosen.logits.dtype == chosen.score.dtype == chosen.presence.dtype == torch.float32
    assert chosen.mask_index.tolist() == [2]


def test_the_presence_head_flags_sentences_below_one_half():
    presence = torch.tensor([3.0, -3.0, 0.0])  # probability 0.5 exactly: something is referred
    chosen = choose_prediction(_output(_labelled_masks(3, 1), torch.zeros(3, 1), presence))
    assert chosen.no_target.tolist() == [False, True, False]
    assert chosen.presence.tolist() == pytest.approx([1 / (1 + math.exp(-3)), 1 / (1 + math.exp(3)), 0.5])


@pytest.mark.parametrize(
    "field, output, message",
    [
        ("logits", _output(torch.zeros(2, SIDE, SIDE), torch.zeros(2, 1)), r"logits must be \(B, M, S, S\)"),
        ("iou", _output(torch.zeros(2, 3, SIDE, SIDE), torch.zeros(2, 1)), r"iou_predictions must be \(2, 3\)"),
        (
            "presence",
            _output(torch.zeros(2, 1, SIDE, SIDE), torch.zeros(2, 1), torch.zeros(3)),
            r"presence_logits must be \(2,\)",
        ),
    ],
)
def test_outputs_of_the_wrong_shape_are_named(field, output, message):
    with pytest.raises(ValueError, match=message):
        choose_prediction(output)


# ---------------------------------------------------------------------------------------------------
# Threshold and the no-target rule
# ---------------------------------------------------------------------------------------------------
def test_foreground_is_strictly_above_the_threshold():
    assert foreground(torch.tensor([-1e-3, 0.0, 1e-3]), threshold=0.5).tolist() == [False, False, True]
    cut = math.log(MASK_THRESHOLD / (1 - MASK_THRESHOLD))
    assert foreground(torch.tensor([cut - 1e-3, cut + 1e-3]), threshold=MASK_THRESHOLD).tolist() == [False, True]


def test_final_mask_empties_a_flagged_sentence_and_reads_an_empty_mask_as_nothing_without_a_head():
    logits = torch.full((3, 4), -5.0)
    logits[1, 2] = 5.0
    mask, present = final_mask(logits, threshold=0.35, no_target=True)
    assert not mask.any() and present is False
    mask, present = final_mask(logits, threshold=0.35, no_target=False)
    assert mask.sum() == 1 and present is True
    assert final_mask(logits, threshold=0.35, no_target=None)[1] is True
    assert final_mask(torch.full((3, 4), -5.0), threshold=0.35, no_target=None)[1] is False
    assert final_mask(torch.full((3, 4), -5.0), threshold=0.35, no_target=False)[1] is True  # the head decides


# ---------------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------------
def _target(batch: int) -> torch.Tensor:
    target = torch.zeros(batch, 1, SIDE, SIDE)
    target[:, :, 2:6, 1:5] = 1
    return target


@pytest.mark.parametrize("dice_weight", [0.0, 1.0])
def test_one_mask_loss_is_the_papers_bit_for_bit(dice_weight):
    logits = torch.randn(4, 1, SIDE, SIDE, requires_grad=True)
    target = (torch.rand(4, 1, SIDE, SIDE) > 0.6).float()
    paper = segmentation_loss(logits, target, dice_weight=dice_weight)
    ours = mask_loss(logits, torch.rand(4, 1), target, dice_weight=dice_weight)
    assert torch.equal(ours, paper)
    assert torch.equal(*(torch.autograd.grad(loss, logits)[0] for loss in (ours, paper)))
    # The per-mask form agrees up to rounding (the mean is taken in another order).
    torch.testing.assert_close(per_mask_segmentation_loss(logits, target, dice_weight=dice_weight).mean(), paper)


def test_multimask_loss_takes_each_samples_best_mask_and_only_it_learns():
    target = _target(2)
    logits = torch.full((2, 3, SIDE, SIDE), 2.0)  # every pixel foreground: a poor mask
    logits[0, 2] = 10 * (2 * target[0, 0] - 1)  # sample 0: mask 2 is the target
    logits[1, 0] = 10 * (2 * target[1, 0] - 1)  # sample 1: mask 0 is
    logits.requires_grad_(True)
    for dice_weight in (0.0, 1.0):
        per_mask = per_mask_segmentation_loss(logits, target, dice_weight=dice_weight)
        assert per_mask.argmin(dim=1).tolist() == [2, 0]
        loss = mask_loss(logits, torch.zeros(2, 3), target, dice_weight=dice_weight)
        torch.testing.assert_close(loss, (per_mask[0, 2] + per_mask[1, 0]) / 2)
        (grad,) = torch.autograd.grad(loss, logits)
        learns = grad.flatten(2).abs().sum(2) > 0
        assert learns.tolist() == [[False, False, True], [True, False, False]]


def test_mask_iou_is_the_thresholded_masks_iou_with_the_target():
    target = _target(1)  # 16 pixels
    logits = torch.full((1, 4, SIDE, SIDE), -5.0)
    logits[0, 0] = 5 * (2 * target[0, 0] - 1)  # exact: 1
    logits[0, 1, 2:6, 1:3] = 5.0  # half of it: 8 / 16
    logits[0, 2, 0:2, :] = 5.0  # disjoint: 0
    iou = mask_iou(logits, target, threshold=MASK_THRESHOLD)  # mask 3 empty against a target: 0
    assert iou.tolist() == [[1.0, 0.5, 0.0, 0.0]]
    assert mask_iou(logits[:, 3:], torch.zeros(1, 1, SIDE, SIDE), threshold=MASK_THRESHOLD).tolist() == [[1.0]]
    predicted = torch.tensor([[1.0, 0.5, 0.5, 0.0]])
    assert float(iou_head_loss(predicted, logits, target, threshold=MASK_THRESHOLD)) == pytest.approx(0.25 / 4)


def _iou_head_gradient(model: DITSam, **loss_options) -> float:
    images, text = torch.randn(2, 3, 64, 64), ["the red circle", "a blue star"]
    target = torch.zeros(2, 1, 64, 64)
    target[:, :, 10:30, 20:40] = 1
    output = model(images, text=text)
    mask_loss(output.logits, output.iou_predictions, target, **loss_options).backward()
    grads = [p.grad for p in model.mask_decoder.iou_prediction_head.parameters()]
    model.zero_grad(set_to_none=True)
    return sum(0.0 if g is None else float(g.abs().sum()) for g in grads)


def test_the_iou_head_learns_from_the_multimask_loss_and_from_nothing_else(tiny_bert_dir):
    multimask = DITSam(tiny_config(tiny_bert_dir, multimask_output=True, injection_options=dict(dropout=0.0))).train()
    assert _iou_head_gradient(multimask, iou_weight=1.0) > 0
    assert _iou_head_gradient(multimask, iou_weight=0.0) == 0
    single = DITSam(tiny_config(tiny_bert_dir, injection_options=dict(dropout=0.0))).train()
    assert _iou_head_gradient(single, iou_weight=1.0) > 0


def _trainer_loss(config_overrides: dict, multimask: bool, output: DITSamOutput, target: torch.Tensor) -> torch.Tensor:
    """The Trainer's loss (:func:`training_loss`) for a config; it reads only ``train`` and ``model.multimask_output``."""
    config = SimpleNamespace(
        train=TrainConfig.from_dict(config_overrides), model=SimpleNamespace(multimask_output=multimask)
    )
    micro = MicroBatch(images=torch.zeros(0), masks=target, prompts={})
    return training_loss(output, micro, config=config)  # type: ignore[arg-type]


def test_the_trainer_adds_the_iou_loss_to_multimask_models_only_unless_asked():
    target = _target(2)
    iou = torch.full((2, 1), 0.3)
    one = _output(torch.randn(2, 1, SIDE, SIDE), iou)
    paper = segmentation_loss(one.logits, target, dice_weight=1.0)
    assert torch.equal(_trainer_loss({"dice_weight": 1.0}, False, one, target), paper)
    asked = _trainer_loss({"dice_weight": 1.0, "iou_loss_single_mask": True}, False, one, target)
    assert float(asked) == pytest.approx(
        float(paper + iou_head_loss(iou, one.logits, target, threshold=MASK_THRESHOLD))
    )
    three = _output(torch.randn(2, 3, SIDE, SIDE), torch.rand(2, 3))
    best = mask_loss(three.logits, three.iou_predictions, target)
    with_iou = _trainer_loss({"iou_loss_weight": 2.0}, True, three, target)
    expected = best + 2.0 * iou_head_loss(three.iou_predictions, three.logits, target, threshold=MASK_THRESHOLD)
    assert float(with_iou) == pytest.approx(float(expected))


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("iou_loss_weight", -1.0, r"train\.iou_loss_weight must be a weight >= 0, got -1\.0"),
        ("dice_weight", float("nan"), r"train\.dice_weight must be a weight >= 0, got nan"),
        ("threshold", 1.0, r"train\.threshold must lie strictly between 0 and 1, got 1\.0"),
    ],
)
def test_bad_loss_settings_are_named(key, value, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict({key: value})
