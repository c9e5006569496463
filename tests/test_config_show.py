"""``ditsam config show``: the composed experiment as YAML, the same errors as ``ditsam train``."""

from __future__ import annotations

import yaml

from ditsam.cli.main import main
from ditsam.engine.config import ExperimentConfig, load_experiment


def test_show_prints_the_composed_experiment_with_overrides(capsys):
    assert main(["config", "show", "refshapes/ldit", "train.epochs=3", "model.text.max_tokens=12"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    expected = load_experiment("refshapes/ldit", {"train.epochs": 3, "model.text.max_tokens": 12})
    assert ExperimentConfig.from_dict(shown) == expected  # a round trip: the YAML is a complete experiment
    assert shown["name"] == "refshapes-ldit" and shown["train"]["epochs"] == 3
    assert shown["model"]["injection"] == "layerwise"  # from the variant, laid on the scale's base
    assert shown["model"]["text"]["max_tokens"] == 12
    assert list(shown) == ["name", "output_dir", "model", "data", "train"]  # the dataclass order, not sorted


def test_show_reads_a_yaml_file_through_its_base(tmp_path, capsys):
    (tmp_path / "base.yaml").write_text("train:\n  epochs: 7\n  lr: 0.001\n")
    (tmp_path / "mine.yaml").write_text("base: base.yaml\nname: mine\ntrain:\n  epochs: 2\n")
    assert main(["config", "show", str(tmp_path / "mine.yaml")]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert (shown["name"], shown["train"]["epochs"], shown["train"]["lr"]) == ("mine", 2, 0.001)


def test_show_refuses_unknown_experiments_keys_and_values(capsys):
    assert main(["config", "show", "refshapes/nope"]) == 2
    assert "unknown experiment 'refshapes/nope'" in capsys.readouterr().err
    assert main(["config", "show", "refshapes/ldit", "train.epoch=3"]) == 2
    assert "unknown config key 'train.epoch'" in capsys.readouterr().err
    assert main(["config", "show", "refshapes/ldit", "train.epochs=many"]) == 2
    assert "train.epochs" in capsys.readouterr().err
    assert main(["config", "show", "refshapes/ldit", "train.epochs"]) == 2
    assert "not of the form key=value" in capsys.readouterr().err
