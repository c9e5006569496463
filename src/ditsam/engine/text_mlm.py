"""Masked-language-model pretraining of a model's text encoder: BERT's own objective, at RefShapes scale.

The paper's text encoder is a pretrained BERT; the generated tiny BERT of RefShapes starts random. So that
the tiny SAM (``refshapes-sam``) carries a pretrained text encoder as SAM + BERT do -- and "frozen text" means
a frozen *pretrained* BERT, as in the paper -- its text encoder is pretrained on the benchmark's training
sentences with masked-language modelling: 15 % of the word tokens chosen, of those 80 % replaced by [MASK],
10 % by a random token, 10 % kept (transformers' ``DataCollatorForLanguageModeling``), predicted through
BERT's tied output head (``BertForMaskedLM``, discarded afterwards). Only ``text_encoder.*`` changes.
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

# BERT's masking rate and AdamW weight decay.
MASK_PROBABILITY = 0.15
BERT_WEIGHT_DECAY = 0.01


def _warmup_cosine(warmup_steps: int, steps: int) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up over ``warmup_steps``, then cosine decay to 0 at ``steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, steps - warmup_steps)))

    return factor


def pretrain_text_encoder(
    model: torch.nn.Module,
    sentences: Callable[[int], Sequence[str]],
    *,
    steps: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    warmup_steps: int = 100,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Train ``model.text_encoder`` (a :class:`~ditsam.model.text.TextEncoder`) with masked-language modelling
    on ``sentences(step)`` (``batch_size`` sentences per step), AdamW with linear warm-up and cosine decay.

    Returns the loss of every step. The MLM head is built for this call and dropped; nothing but the text
    encoder's parameters is touched. Raises ValueError for ``steps`` < 1.
    """
    from transformers import BertForMaskedLM, DataCollatorForLanguageModeling

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    bert, tokenizer = model.text_encoder.bert, model.tokenizer
    collate = DataCollatorForLanguageModeling(tokenizer.tokenizer, mlm_probability=MASK_PROBABILITY)
    generator_state = torch.random.get_rng_state()
    was_training, trainable = bert.training, [p.requires_grad for p in bert.parameters()]
    losses: list[float] = []
    try:
        torch.manual_seed(seed)  # the head's initialisation and the collator's masks use torch's global generator
        head = BertForMaskedLM(bert.config)
        head.bert = bert  # BertForMaskedLM's encoder has no pooling layer either: ours slots in
        head.tie_weights()  # the output projection is the word-embedding matrix, as in BERT
        bert.requires_grad_(True)
        head.train()
        optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=BERT_WEIGHT_DECAY)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(warmup_steps, steps))
        for step in tqdm(range(steps), desc="text MLM", unit="step", disable=not progress, leave=False):
            tokens = tokenizer(list(sentences(step)))
            features = [
                {"input_ids": ids[mask], "attention_mask": torch.ones(int(mask.sum()), dtype=torch.long)}
                for ids, mask in zip(tokens.input_ids, tokens.attention_mask)
            ]
            loss = head(**collate(features)).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
    finally:
        torch.random.set_rng_state(generator_state)
        for parameter, flag in zip(bert.parameters(), trainable):
            parameter.requires_grad_(flag)
        bert.train(was_training)
    logger.info("text MLM: loss %.3f -> %.3f over %d steps", losses[0], losses[-1], steps)
    return losses
