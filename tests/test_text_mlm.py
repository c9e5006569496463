"""Masked-language-model pretraining of the text encoder (the tiny SAM's BERT in miniature)."""

from __future__ import annotations

import pytest
import torch

from ditsam.engine.text_mlm import pretrain_text_encoder
from ditsam.model.dit import DITSam
from helpers import tiny_config

SENTENCES = [
    "the small red triangle",
    "the leftmost blue circle",
    "the circle left of the green star",
    "the second square from the top",
    "the large yellow heart",
    "the shape below the red diamond",
]


def _sentences(step: int) -> list[str]:
    return [SENTENCES[(step + i) % len(SENTENCES)] for i in range(16)]


def test_mlm_lowers_its_loss_and_touches_only_the_text_encoder(tiny_bert_dir) -> None:
    model = DITSam(tiny_config(tiny_bert_dir, text=dict(trainable=False)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.random.get_rng_state()
    losses = pretrain_text_encoder(model, _sentences, steps=80, lr=3e-3, warmup_steps=5, progress=False)
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("text_encoder.") for k in changed)
    assert set(after) == set(before)  # no head left behind
    assert not any(p.requires_grad for p in model.text_encoder.parameters())  # flags restored
    assert torch.equal(torch.random.get_rng_state(), rng)  # the caller's random stream untouched


def test_mlm_needs_a_step(tiny_bert_dir) -> None:
    with pytest.raises(ValueError, match="steps must be >= 1"):
        pretrain_text_encoder(DITSam(tiny_config(tiny_bert_dir)), _sentences, steps=0)
