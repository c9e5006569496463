"""Point and box prompts from masks (SAM's training, Table 4's scoring) and scoring a model with them."""

from __future__ import annotations

import pytest
import torch

from ditsam.engine.config import ConfigError, ExperimentConfig
from ditsam.engine.data import ris_dataset
from ditsam.engine.evaluate import evaluate
from ditsam.engine.prompts import (
    EVAL_POINTS,
    NEGATIVE_LABEL,
    POSITIVE_LABEL,
    box_prompts,
    evaluation_prompts,
    point_prompts,
    training_prompts,
)
from ditsam.engine.train import train
from ditsam.model.dit import DITSam
from ditsam.model.sam.prompt_encoder import PADDING_LABEL
from helpers import tiny_experiment


def _masks() -> torch.Tensor:
    masks = torch.zeros(2, 1, 8, 8)
    masks[0, 0, 2:4, 1:6] = 1
    masks[1, 0, 7, 7] = 1
    return masks


def test_boxes_are_the_extent_one_past_the_last_pixel():
    assert box_prompts(_masks()).tolist() == [[1.0, 2.0, 6.0, 4.0], [7.0, 7.0, 8.0, 8.0]]


def test_jittered_boxes_stay_on_the_canvas_and_keep_a_pixel():
    boxes = box_prompts(_masks().repeat(50, 1, 1, 1), noise=2.0, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(boxes, box_prompts(_masks().repeat(50, 1, 1, 1)))
    assert boxes.min() >= 0 and boxes.max() <= 8
    assert ((boxes[:, 2:] - boxes[:, :2]) >= 1 - 1e-6).all()


def test_clicks_land_on_and_off_the_mask_and_short_rows_are_padded():
    masks = _masks()
    coords, labels = point_prompts(
        masks, positives=[3, 1], negatives=[2, 0], generators=[torch.Generator().manual_seed(1)] * 2
    )
    assert coords.shape == (2, 5, 2)
    assert labels.tolist() == [[POSITIVE_LABEL] * 3 + [NEGATIVE_LABEL] * 2, [POSITIVE_LABEL] + [PADDING_LABEL] * 4]
    for row in range(2):
        for (x, y), label in zip(coords[row].floor().long().tolist(), labels[row].tolist()):
            if label != PADDING_LABEL:
                assert masks[row, 0, y, x] == (label == POSITIVE_LABEL)
    assert coords[1, 0].tolist() == [7.5, 7.5]  # the pixel's centre, as the Segmenter takes clicks


def test_a_full_mask_gets_no_negative_click():
    coords, labels = point_prompts(torch.ones(1, 1, 4, 4), positives=[1], negatives=[2], generators=[None])
    assert labels.tolist() == [[POSITIVE_LABEL, PADDING_LABEL, PADDING_LABEL]]


def test_training_prompts_draw_counts_in_range():
    masks = _masks().repeat(20, 1, 1, 1)
    coords, labels = training_prompts(
        masks, "point", max_points=4, max_negatives=2, generator=torch.Generator().manual_seed(0)
    )["points"]
    positives = (labels == POSITIVE_LABEL).sum(1)
    negatives = (labels == NEGATIVE_LABEL).sum(1)
    assert positives.min() >= 1 and positives.max() <= 4 and negatives.max() <= 2
    assert len(set(positives.tolist())) > 1  # the count varies
    assert set(training_prompts(masks, "box")) == {"boxes"}


def test_evaluation_points_depend_on_the_sample_not_on_its_batch():
    masks = _masks()
    both = evaluation_prompts(masks, "points", [10, 11])["points"]
    alone = evaluation_prompts(masks[1:], "points", [11])["points"]
    assert both[0].shape == (2, EVAL_POINTS, 2)
    assert torch.equal(both[0][1:], alone[0]) and torch.equal(both[1][1:], alone[1])
    assert (both[1] == POSITIVE_LABEL).all()
    with pytest.raises(ValueError, match="unknown evaluation prompt 'clicks'"):
        evaluation_prompts(masks, "clicks", [0, 1])


def test_prompt_sampling_rejects_bad_values():
    with pytest.raises(ConfigError, match="max_points must be an integer >= 1"):
        ExperimentConfig.from_dict({"train": {"prompt_sampling": {"max_points": 0}}})
    with pytest.raises(ConfigError, match="box_noise must be >= 0"):
        ExperimentConfig.from_dict({"train": {"prompt_sampling": {"box_noise": -0.1}}})
    with pytest.raises(ConfigError, match="prompt_mix must be 3 weights"):
        ExperimentConfig.from_dict({"train": {"prompt_mix": [0, 0, 0]}})


def test_scoring_feeds_the_model_the_chosen_prompt(refshapes_root, tiny_bert_dir, tmp_path):
    config = tiny_experiment(refshapes_root, tiny_bert_dir, max_steps=2, prompt_mix=[0.0, 0.5, 0.5], eval_prompt="box")
    results = train(config, run_dir=tmp_path / "run", progress=False)
    assert set(results) == {"val", "testB"}
    model = DITSam.from_pretrained(tmp_path / "run" / "checkpoints" / "last")
    dataset = ris_dataset(config, "val", train=False)
    seen: list[dict] = []
    forward = model.forward

    def spy(images, **prompts):
        seen.append(prompts)
        return forward(images, **prompts)

    model.forward = spy  # type: ignore[method-assign]
    for prompt in ("text", "box", "points"):
        seen.clear()
        result = evaluate(model, dataset, batch_size=4, prompt=prompt, progress=False)
        assert result.count == len(dataset)
        given = {key for prompts in seen for key, value in prompts.items() if value is not None}
        assert given == {"text": {"text"}, "box": {"boxes"}, "points": {"points"}}[prompt]
    coords, labels = seen[0]["points"]
    assert coords.shape == (4, EVAL_POINTS, 2) and (labels == POSITIVE_LABEL).all()
    with pytest.raises(ValueError, match="unknown evaluation prompt"):
        evaluate(model, dataset, prompt="scribble", progress=False)
