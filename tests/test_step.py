"""The engine's optimiser step (engine/step.py): accumulation, EMA, results left on the device; the
all-[PAD] columns trimmed on the CPU."""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import Accelerator

from ditsam.engine.config import TrainConfig
from ditsam.engine.ema import EMA
from ditsam.engine.losses import segmentation_loss
from ditsam.engine.step import MicroBatch, PendingFiniteChecks, StepResult, TrainingStep, build_adam
from ditsam.model.dit import DITSam
from ditsam.model.text import TokenizedText
from helpers import tiny_config


def _micro(model: DITSam, sentences: list[str], seed: int) -> MicroBatch:
    generator = torch.Generator().manual_seed(seed)
    size = model.config.image_size
    return MicroBatch(
        images=torch.randn(len(sentences), 3, size, size, generator=generator),
        masks=(torch.rand(len(sentences), 1, size, size, generator=generator) > 0.5).float(),
        prompts={"text": model.tokenize(sentences)},
    )


def _step(model: DITSam, loss_fn) -> TrainingStep:
    accelerator = Accelerator(cpu=True)
    optimizer = build_adam(model.parameters(), TrainConfig(lr=1e-2), device=accelerator.device)
    prepared, optimizer = accelerator.prepare(model, optimizer)
    ema = EMA(model, decay=0.5, warmup=False)
    return TrainingStep(
        accelerator=accelerator, model=prepared, optimizer=optimizer, loss_fn=loss_fn, ema=ema, grad_clip=0.15
    )


def test_step_updates_weights_and_ema_and_returns_device_tensors(tiny_bert_dir: Path) -> None:
    model = DITSam(tiny_config(tiny_bert_dir, injection_options=dict(zero_init=False))).train()
    step = _step(model, lambda output, micro: segmentation_loss(output.logits, micro.masks))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    ema_before = step.ema.shadow.image_encoder.patch_embed.proj.weight.clone()
    micro = [_micro(model, ["the red circle", "a star"], seed=1), _micro(model, ["the blue square", "left"], seed=2)]

    result = step(micro)

    assert result.loss.shape == () and result.finite.shape == (2,) and bool(result.finite.all())
    with torch.no_grad():
        expected = sum(segmentation_loss(model(m.images, **m.prompts).logits, m.masks) for m in micro) / 2
    assert torch.isfinite(result.loss) and abs(float(result.loss) - float(expected)) < 0.5  # weights moved since
    moved = [name for name, p in model.named_parameters() if not torch.equal(p, before[name])]
    assert "image_encoder.patch_embed.proj.weight" in moved
    assert all(p.grad is None for p in model.parameters())  # zero_grad(set_to_none)
    assert not torch.equal(step.ema.shadow.image_encoder.patch_embed.proj.weight, ema_before)


def test_a_non_finite_loss_is_flagged_not_raised(tiny_bert_dir: Path) -> None:
    model = DITSam(tiny_config(tiny_bert_dir)).train()
    calls = {"n": 0}

    def second_is_nan(output, micro):
        calls["n"] += 1
        loss = segmentation_loss(output.logits, micro.masks)
        return loss * float("nan") if calls["n"] == 2 else loss

    result = _step(model, second_is_nan)([_micro(model, ["a"], seed=1), _micro(model, ["the star"], seed=2)])
    assert result.finite.tolist() == [True, False] and torch.isnan(result.loss)


def test_pending_finite_checks_name_the_first_bad_step_and_micro_batch_then_forget() -> None:
    def result(*finite: bool) -> StepResult:
        return StepResult(loss=torch.zeros(()), finite=torch.tensor(finite))

    checks = PendingFiniteChecks()
    checks.add(step=4, result=result(True, True), ref_ids=[[1, 2], [3, 4]])
    checks.add(step=5, result=result(True, False), ref_ids=[[5, 6], [7, 8]])
    checks.add(step=6, result=result(False, False), ref_ids=[[9], [10]])
    assert checks.first_failure(reduce_sum=lambda flags: flags) == (5, [7, 8])
    assert checks.first_failure(reduce_sum=lambda flags: flags) is None  # read once, then forgotten

    # Finite here, not finite on another process (its flag arrives through the sum): no ref_ids to name.
    checks.add(step=7, result=result(True, True), ref_ids=[[11], [12]])
    checks.add(step=8, result=result(True, True), ref_ids=[[13], [14]])
    assert checks.first_failure(reduce_sum=lambda flags: flags + torch.tensor([0.0, 1.0])) == (8, None)
    checks.add(step=9, result=result(True), ref_ids=[[15]])
    assert checks.first_failure(reduce_sum=lambda flags: flags) is None


def test_padding_columns_are_trimmed_on_the_cpu(tiny_bert_dir: Path) -> None:
    model = DITSam(tiny_config(tiny_bert_dir))
    tokens = model.tokenizer(["the red circle", "a"])
    assert tokens.input_ids.shape[1] == model.config.text.max_tokens
    trimmed = tokens.without_padding_columns()
    assert trimmed.input_ids.shape[1] == int(tokens.attention_mask.sum(1).max()) == 5  # [CLS] the red circle [SEP]
    assert model.tokenize(["the red circle", "a"]).input_ids.shape[1] == 5
    reference = DITSam(tiny_config(tiny_bert_dir, mask_text_padding=False))  # attends to [PAD]: never trimmed
    assert reference.tokenize(["a"]).input_ids.shape[1] == model.config.text.max_tokens
    empty = TokenizedText(torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0, dtype=torch.bool))
    assert empty.without_padding_columns().input_ids.shape == (2, 0)


def test_the_trainer_reads_the_loss_only_at_log_steps_and_checkpoints(tmp_path: Path, monkeypatch) -> None:
    from ditsam.engine.config import load_experiment
    from ditsam.engine.train import Trainer

    config = load_experiment(
        "refshapes/ldit",
        {
            "data.root": str(tmp_path / "data"),
            "data.eval_splits": [],
            "data.num_workers": 0,
            "train.max_steps": 7,
            "train.log_every_steps": 3,
            "train.epochs": 1,
        },
    )
    trainer = Trainer(config, run_dir=tmp_path / "run", progress=False)
    checked_at: list[int] = []
    real_check = Trainer._check_finite

    def counting(self) -> None:
        checked_at.append(self.progress.global_step)
        real_check(self)

    monkeypatch.setattr(Trainer, "_check_finite", counting)
    trainer.fit()
    # Steps 3 and 6 (log steps), then step 7 before the final checkpoint: not once per step.
    assert checked_at[:2] == [3, 6] and set(checked_at[2:]) == {7}
