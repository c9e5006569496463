"""model.multimask_output=true end to end: training (SAM's recipe), evaluation and the Segmenter choose the same mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ditsam.api import Segmenter
from ditsam.data.sample import load_sample_image
from ditsam.engine.data import ris_dataset
from ditsam.engine.evaluate import SamplePrediction, evaluate, predicted_mask
from ditsam.engine.step import MicroBatch
from ditsam.engine.train import Trainer, train
from ditsam.model.dit import DITSam
from helpers import tiny_experiment

MULTIMASK = dict(multimask_output=True)
# Decoder token whose mask a biased IoU head always picks: token 3 = the third of the multimask masks.
PICKED_TOKEN = 3
# The tiny models' logits sit near 0 after a few steps: at one half their masks differ, at 0.35 they are all full.
THRESHOLD = 0.5


@pytest.fixture(scope="module")
def multimask_run(refshapes_root, tiny_bert_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("multimask") / "run"
    config = tiny_experiment(refshapes_root, tiny_bert_dir, model=MULTIMASK, max_steps=3, log_every_steps=1)
    results = train(config, run_dir=run, progress=False)
    assert set(results) == {"val", "testB"} and all(0.0 <= r["miou"] <= 100.0 for r in results.values())
    return run


def test_a_multimask_model_trains_and_is_evaluated(multimask_run):
    assert (multimask_run / "checkpoints" / "last" / "model.safetensors").is_file()
    assert DITSam.from_pretrained(multimask_run / "checkpoints" / "last").config.multimask_output is True


def test_steps_on_one_batch_lower_the_multimask_loss_and_train_the_iou_head(refshapes_root, tiny_bert_dir, tmp_path):
    config = tiny_experiment(refshapes_root, tiny_bert_dir, model=MULTIMASK, ema_decay=0.0)
    trainer = Trainer(config, run_dir=tmp_path / "run", progress=False)
    batch = next(iter(trainer._epoch_loader(0, 0)))
    micro = MicroBatch(images=batch.images, masks=batch.masks, prompts={"text": batch.text})
    head = trainer.unwrapped.mask_decoder.iou_prediction_head
    before = [p.detach().clone() for p in head.parameters()]
    losses = [float(trainer.step([micro]).loss) for _ in range(12)]
    assert losses[-1] < losses[0], losses
    assert any(not torch.equal(old, new) for old, new in zip(before, head.parameters()))


def test_segmenter_and_evaluation_give_the_same_masks(multimask_run, refshapes_root, tiny_bert_dir):
    model = DITSam.from_pretrained(multimask_run / "checkpoints" / "last").eval()
    last = model.mask_decoder.iou_prediction_head.layers[-1]
    with torch.no_grad():  # an IoU head that always prefers one mask, so the choice is known
        last.weight.zero_()
        last.bias.copy_(torch.arange(last.bias.numel()) == PICKED_TOKEN)
    dataset = ris_dataset(tiny_experiment(refshapes_root, tiny_bert_dir, model=MULTIMASK), "val", train=False)
    evaluated: list[SamplePrediction] = []
    evaluate(model, dataset, batch_size=1, threshold=THRESHOLD, on_prediction=evaluated.append, progress=False)
    segmenter = Segmenter(model, device="cpu", batch_size=1, threshold=THRESHOLD)
    differs_from_mask_zero = False
    for sample in evaluated:
        base = dataset.base[sample.index]
        result = segmenter.predict(load_sample_image(base), base.sentences[0])
        np.testing.assert_array_equal(result.mask, sample.pred)
        item = dataset[sample.index]
        with torch.no_grad():
            logits = model(item.image[None], text=[item.sentence]).logits[0]
        assert result.score == pytest.approx(1.0)
        mask_zero = predicted_mask(logits[0], item.meta, threshold=THRESHOLD)
        differs_from_mask_zero |= not np.array_equal(mask_zero, sample.pred)
    assert evaluated and differs_from_mask_zero, "the chosen mask must matter for this test to mean anything"
