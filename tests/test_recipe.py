"""The RefShapes recipe learns: a few dozen optimiser steps of the packaged experiment lower the loss.

The demo's real numbers live in benchmarks/refshapes_table1.py; this only guards against a change
(initialisation, schedule, loss, data stream) that silently stops the main job from learning.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ditsam.data.refshapes_stream import RefShapesStream
from ditsam.engine.config import load_experiment
from ditsam.engine.train import Trainer

STEPS = 40
# A learning recipe cuts the loss on one batch by about a third in STEPS steps; a broken one by nothing.
LOSS_RATIO = 0.8


@pytest.mark.parametrize("experiment", ["refshapes/ldit", "refshapes/default"])
def test_a_few_dozen_recipe_steps_lower_the_loss_on_a_fixed_batch(experiment: str, tmp_path: Path) -> None:
    # No evaluation split: nothing is written to disk but the generated tiny BERT.
    config = load_experiment(experiment, {"data.root": str(tmp_path / "data"), "data.eval_splits": []})
    assert config.data.train_stream_samples > 0, "the recipe trains on the endless RefShapes stream"
    trainer = Trainer(config, run_dir=tmp_path / "run", progress=False)
    assert isinstance(trainer.train_set.base, RefShapesStream)
    batch = next(iter(trainer._epoch_loader(0, 0)))
    # From the end of the warm-up (the recipe's peak learning rate), advancing the step as the loop does.
    trainer.progress.global_step = round(trainer.steps_per_epoch * config.train.schedule.warmup_epochs)
    losses = []
    for _ in range(STEPS):
        losses.append(trainer._optimizer_step([batch]))
        trainer.progress.global_step += 1
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < LOSS_RATIO * first, f"loss {first:.3f} -> {last:.3f} after {STEPS} steps"
    assert all(torch.isfinite(torch.tensor(losses)))


def test_the_stream_gives_fresh_deterministic_scenes_and_groups_them() -> None:
    stream = RefShapesStream(seed=5, preset="tiny", samples_per_epoch=8, items_per_scene=4)
    first = [stream[i] for i in range(8)]
    again = RefShapesStream(seed=5, preset="tiny", samples_per_epoch=8, items_per_scene=4)
    assert all(
        (a.pixels == b.pixels).all() and (a.mask == b.mask).all() for a, b in zip(first, (again[i] for i in range(8)))
    )
    # One picture per group of four, different pictures across groups.
    assert all(first[i].pixels is first[0].pixels for i in range(4))
    assert first[4].pixels.shape != first[0].pixels.shape or (first[4].pixels != first[0].pixels).any()
    stream.set_epoch(1)
    assert (stream[0].pixels.shape != first[0].pixels.shape) or (stream[0].pixels != first[0].pixels).any()
    for sample in first:
        assert sample.mask.shape == sample.pixels.shape[:2] and sample.mask.any() and sample.sentences
    with pytest.raises(IndexError, match="outside 0..7"):
        stream[8]
    with pytest.raises(ValueError, match="samples_per_epoch"):
        RefShapesStream(samples_per_epoch=0)


def test_fixed_sentence_replaces_every_sentence(tmp_path: Path) -> None:
    config = load_experiment("refshapes/ldit_blind", {"data.root": str(tmp_path / "data"), "data.eval_splits": []})
    trainer = Trainer(config, run_dir=tmp_path / "run", progress=False)
    batch = next(iter(trainer._epoch_loader(0, 0)))
    assert config.data.fixed_sentence and set(batch.sentences) == {config.data.fixed_sentence}
