"""Experiment configs, schedules and EMA."""

from __future__ import annotations

import math

import pytest
import torch

from ditsam.config import ConfigError, parse_override
from ditsam.engine.config import (
    ExperimentConfig,
    ScheduleConfig,
    list_experiments,
    load_experiment,
    packaged_config_dir,
)
from ditsam.engine.ema import EMA
from ditsam.engine.schedule import learning_rate

PAPER_EXPERIMENTS = [
    "default",
    "default_frozen",
    "dec2",
    "dec2_frozen",
    "dec4",
    "dec4_frozen",
    "edit",
    "edit_frozen",
    "ldit",
    "ldit_frozen",
    "edit_static",
    "ldit_static",
    "crossatt",
    "crossatt_ffn",
    "mix",
    "reference",
]


@pytest.mark.parametrize("scale", ["refcoco", "refshapes"])
def test_every_paper_experiment_loads(scale):
    names = set(list_experiments())
    for experiment in PAPER_EXPERIMENTS:
        assert f"{scale}/{experiment}" in names
        config = load_experiment(f"{scale}/{experiment}")
        assert config.name.startswith(scale)
    assert load_experiment("refcoco/ldit").model.injection == "layerwise"
    assert load_experiment("refcoco/dec4_frozen").model.extra_decoder_layers == 4
    assert load_experiment("refcoco/ldit_vith").model.backbone == "vit_h"
    reference = load_experiment("refcoco/reference").model
    assert reference.text.hidden_layer == 1 and not reference.mask_text_padding


def test_shared_variants_are_one_file_laid_on_each_base():
    for experiment in PAPER_EXPERIMENTS:
        coco, shapes = load_experiment(f"refcoco/{experiment}"), load_experiment(f"refshapes/{experiment}")
        assert coco.name == f"refcoco-{experiment.replace('_', '-')}" and shapes.name.startswith("refshapes-")
        assert coco.model.injection == shapes.model.injection
        assert coco.model.backbone == "vit_b" and shapes.model.backbone == "custom"
    assert not any(name.startswith("variants/") for name in list_experiments())


def test_overrides_and_errors(tmp_path):
    config = load_experiment(
        "refshapes/ldit", dict([parse_override("train.epochs=3"), parse_override("model.text.max_tokens=12")])
    )
    assert config.train.epochs == 3 and config.model.text.max_tokens == 12
    with pytest.raises(ConfigError, match="train.epocs"):
        load_experiment("refshapes/ldit", {"train.epocs": 3})
    with pytest.raises(ConfigError, match="unknown experiment 'refshapes/nope'"):
        load_experiment("refshapes/nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: fast\n")
    with pytest.raises(ConfigError, match="train.lr"):
        load_experiment(str(bad))
    typo = tmp_path / "typo.yaml"
    typo.write_text("modle: {}\n")
    with pytest.raises(ConfigError, match="modle"):
        load_experiment(str(typo))
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("train.epochs")
    round_trip = ExperimentConfig.from_dict(config.to_dict())
    assert round_trip == config


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("x=no", "no"),
        ("x=off", "off"),
        ("x=true", True),
        ("x=False", False),
        ("x=1e-3", 0.001),
        ("x=-2.5E+2", -250.0),
        ("x=.inf", float("inf")),
        ("x=010", 10),
        ("x=0x1f", 31),
        ("x=1_000", "1_000"),
        ("x=[1, no, 5e-4]", [1, "no", 0.0005]),
    ],
)
def test_overrides_read_yaml_12_scalars(text, value):
    assert parse_override(text)[1] == value


def test_no_and_exponent_floats_reach_the_config(tmp_path):
    """``mixed_precision: no`` and ``lr: 1e-3`` mean what they say, on the command line and in a file."""
    overrides = dict([parse_override("train.mixed_precision=no"), parse_override("train.lr=1e-3")])
    config = load_experiment("refshapes/ldit", overrides)
    assert config.train.mixed_precision == "no" and config.train.lr == 0.001
    written = tmp_path / "mine.yaml"
    base = packaged_config_dir() / "refshapes" / "_base.yaml"
    written.write_text(f"base: {base}\ntrain:\n  mixed_precision: no\n  lr: 5e-4\n")
    from_file = load_experiment(str(written))
    assert from_file.train.mixed_precision == "no" and from_file.train.lr == 0.0005
    with pytest.raises(ConfigError, match=r"train.ema_warmup: expected true or false, got 'off'"):
        load_experiment("refshapes/ldit", dict([parse_override("train.ema_warmup=off")]))


def test_cosine_schedule_values():
    config = ScheduleConfig(kind="cosine", warmup_epochs=3, warmup_start_lr=1e-7, min_lr=1e-6)
    lr = lambda step: learning_rate(step, steps_per_epoch=10, epochs=40, base_lr=1e-4, config=config)  # noqa: E731
    assert lr(0) == pytest.approx(1e-7)
    assert lr(15) == pytest.approx(1e-7 + (1e-4 - 1e-7) * 0.5)
    assert lr(30) == pytest.approx(1e-4)
    assert lr(30 + 185) == pytest.approx(1e-6 + (1e-4 - 1e-6) * 0.5)
    assert lr(400) == pytest.approx(1e-6)
    assert lr(100) == pytest.approx(1e-6 + (1e-4 - 1e-6) * 0.5 * (1 + math.cos(math.pi * 70 / 370)))


def test_step_schedule_values():
    config = ScheduleConfig(kind="step", warmup_epochs=3, decay_epochs=(30, 35), decay_factor=0.2)
    lr = lambda step: learning_rate(step, steps_per_epoch=10, epochs=40, base_lr=1e-4, config=config)  # noqa: E731
    assert lr(29) == pytest.approx(1e-7 + (1e-4 - 1e-7) * 29 / 30)
    assert lr(299) == pytest.approx(1e-4)
    assert lr(300) == pytest.approx(2e-5)
    assert lr(349) == pytest.approx(2e-5)
    assert lr(350) == pytest.approx(4e-6)


def test_ema_follows_weights_and_copies_buffers():
    model = torch.nn.BatchNorm1d(2)
    ema = EMA(model, decay=0.9, warmup=False)
    with torch.no_grad():
        model.weight.fill_(2.0)
        model.num_batches_tracked.fill_(7)
    ema.update(model)
    assert torch.allclose(ema.shadow.weight, torch.full((2,), 1.1))
    assert int(ema.shadow.num_batches_tracked) == 7
    assert not any(p.requires_grad for p in ema.shadow.parameters())
    with pytest.raises(ValueError, match="decay"):
        EMA(model, decay=1.0)
    ramped = EMA(model, decay=0.9997)
    assert ramped.current_decay == pytest.approx(0.1)
    ramped.update(model)
    assert ramped.current_decay == pytest.approx(2 / 11)
    ramped.updates = 10**6
    assert ramped.current_decay == 0.9997
