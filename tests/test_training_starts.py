"""Training starts from a save_pretrained folder of another variant (as every refshapes/* run starts from
refshapes-sam): the shared weights load, what only the new variant has stays fresh."""

from __future__ import annotations

import pytest
import torch

from ditsam.model.checkpoints import CheckpointError, load_checkpoint
from ditsam.model.dit import DITSam
from ditsam.model.text import build_tiny_bert
from helpers import tiny_config


def test_an_ldit_starts_from_a_decoder_only_folder(tiny_bert_dir, tmp_path):
    """A folder of another variant (a decoder-only model, as refshapes-sam) is a training start: the shared
    weights load, the injection stays fresh and is reported so; a different SAM is still refused."""
    source = DITSam(tiny_config(tiny_bert_dir, injection="none"))
    source.save_pretrained(tmp_path / "sam")
    target = DITSam(tiny_config(tiny_bert_dir, injection="layerwise"), load_text_weights=False)
    report = load_checkpoint(target, tmp_path / "sam")
    assert report.fresh and all(key.startswith("image_encoder.injection.") for key in report.fresh)
    own = target.state_dict()
    for key, value in source.state_dict().items():
        assert torch.equal(own[key], value), key
    assert any("injection" in note for note in report.notes)
    deeper = DITSam(tiny_config(tiny_bert_dir, injection="layerwise", depth=3), load_text_weights=False)
    with pytest.raises(CheckpointError):
        load_checkpoint(deeper, tmp_path / "sam")


def test_a_start_with_another_vocabulary_keeps_its_own_text_encoder(tiny_bert_dir, tmp_path):
    source = DITSam(tiny_config(tiny_bert_dir, injection="none"))
    source.save_pretrained(tmp_path / "sam")
    wider = build_tiny_bert(tmp_path / "bert", words=["zebra", "quokka", "the", "red"], hidden_size=32)
    target = DITSam(tiny_config(wider, injection="layerwise"), load_text_weights=True)
    own_text = {k: v.clone() for k, v in target.state_dict().items() if k.startswith("text_encoder.")}
    report = load_checkpoint(target, tmp_path / "sam")
    assert set(report.kept) == set(own_text)
    assert any("vocabulary" in note for note in report.notes)
    after = target.state_dict()
    assert all(torch.equal(after[k], v) for k, v in own_text.items())
    shared = [k for k in source.state_dict() if not k.startswith("text_encoder.")]
    assert all(torch.equal(after[k], source.state_dict()[k]) for k in shared)


def test_a_run_saved_before_the_family_defaults_resumes(tmp_path):
    """A checkpoint whose experiment says use_rel_pos: true (the old default) resumes into today's config, whose
    None means the same for SAM; a real change is still refused."""
    import yaml

    from ditsam.config import ConfigError
    from ditsam.engine.config import load_experiment
    from ditsam.engine.run_folder import check_resumed_architecture

    config = load_experiment("refshapes/sam")
    assert config.model.use_rel_pos is None
    saved = config.to_dict()
    saved["model"]["use_rel_pos"] = True
    saved["model"].pop("family")
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(saved))
    check_resumed_architecture(tmp_path, config, {}, {})
    saved["model"]["depth"] = 6
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(ConfigError, match="model.depth: 6 in the checkpoint, 4 now"):
        check_resumed_architecture(tmp_path, config, {}, {})
