"""train.finetune = full | frozen | lora: what trains, and LoRA checkpoints saved merged (no peft to load)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from ditsam.engine.config import TrainConfig, load_experiment
from ditsam.engine.finetune import has_adapters, merged_copy, prepare_for_finetuning
from ditsam.model.dit import DITSam
from helpers import tiny_config, tiny_experiment

HEAD = ("image_encoder.injection.", "mask_decoder.", "text_proj.")
SENTENCES = ["the red circle on the left", "a small blue square"]


def _model(bert_dir: Path, mode: str, **train) -> DITSam:
    torch.manual_seed(0)
    model = DITSam(tiny_config(bert_dir, injection="layerwise", injection_options=dict(zero_init=False)))
    return prepare_for_finetuning(model, TrainConfig(finetune=mode, **train))


def _grads(model: DITSam) -> set[str]:
    model.train()
    output = model(torch.randn(2, 3, 64, 64), text=SENTENCES)
    (output.logits.square().mean() + output.iou_predictions.square().mean()).backward()
    return {name for name, p in model.named_parameters() if p.grad is not None and bool(p.grad.abs().sum() > 0)}


def test_frozen_trains_exactly_the_injection_decoder_and_w_o(tiny_bert_dir):
    model = _model(tiny_bert_dir, "frozen")
    expected = {name for name, _ in model.named_parameters() if name.startswith(HEAD)}
    assert set(model.trainable_parameter_names()) == expected
    assert any(n.startswith("image_encoder.injection.") for n in expected)
    got = _grads(model)
    assert got <= expected, sorted(got - expected)
    assert {"text_proj.weight", "text_proj.bias"} <= got
    assert any(n.startswith("image_encoder.injection.") for n in got) and any(
        n.startswith("mask_decoder.") for n in got
    )
    assert not has_adapters(model) and merged_copy(model) is model


def test_full_keeps_todays_behaviour(tiny_bert_dir):
    model = _model(tiny_bert_dir, "full")
    assert set(model.trainable_parameter_names()) == {name for name, _ in model.named_parameters()}
    frozen_vit = DITSam(tiny_config(tiny_bert_dir, freeze_image_encoder=True, text={"trainable": False}))
    prepare_for_finetuning(frozen_vit, TrainConfig(finetune="full"))
    names = frozen_vit.trainable_parameter_names()
    assert not any(n.startswith(("text_encoder.", "image_encoder.blocks.")) for n in names)
    assert any(n.startswith("prompt_encoder.") for n in names)


def test_lora_adds_trainable_adapters_to_the_vit_attention_only(tiny_bert_dir):
    model = _model(tiny_bert_dir, "lora", lora_rank=2, lora_alpha=4.0)
    trainable = set(model.trainable_parameter_names())
    adapters = {n for n in trainable if "lora_" in n}
    # 2 blocks x (qkv, proj) x (A, B)
    assert len(adapters) == 8 and all(n.startswith("image_encoder.blocks.") and ".attn." in n for n in adapters)
    assert trainable - adapters == {n for n, _ in model.named_parameters() if n.startswith(HEAD)}
    assert model.image_encoder.blocks[0].attn.qkv.lora_A["default"].weight.shape == (2, 32)
    got = _grads(model)
    assert got <= trainable and any("lora_A" in n or "lora_B" in n for n in got)


def test_lora_training_saves_merged_weights_that_load_without_peft(refshapes_root, tiny_bert_dir, tmp_path):
    from ditsam.engine.train import Trainer

    config = tiny_experiment(
        refshapes_root, tiny_bert_dir, max_steps=3, eval_every_epochs=100, finetune="lora", lora_rank=4, lora_alpha=8.0
    )
    trainer = Trainer(config, run_dir=tmp_path / "run", progress=False)
    before = {n: p.detach().clone() for n, p in trainer.unwrapped.named_parameters()}
    trainer.fit()
    after = dict(trainer.unwrapped.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all("lora_" in n or n.startswith(HEAD) for n in changed), sorted(changed)
    assert any("lora_B" in n for n in changed), "the adapters trained"
    assert has_adapters(trainer.unwrapped), "training keeps the adapters unmerged"

    saved = tmp_path / "run" / "checkpoints" / "last"
    from safetensors.torch import load_file

    keys = load_file(saved / "model.safetensors").keys()
    assert not any("lora_" in k or "base_layer" in k for k in keys)

    torch.manual_seed(1)
    images = torch.randn(2, 3, 32, 32)
    adapter_model = trainer.eval_model.eval()
    with torch.no_grad():
        expected = adapter_model(images, text=SENTENCES).logits
    loaded = DITSam.from_pretrained(saved).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, text=SENTENCES).logits, expected, rtol=0, atol=1e-5)

    # A fresh interpreter where `import peft` fails loads the folder and gives the same logits.
    torch.save({"images": images, "expected": expected}, tmp_path / "io.pt")
    script = (
        "import sys; sys.modules['peft'] = None\n"
        "import torch\n"
        "from ditsam.model.dit import DITSam\n"
        f"io = torch.load({str(tmp_path / 'io.pt')!r})\n"
        f"model = DITSam.from_pretrained({str(saved)!r}).eval()\n"
        f"with torch.no_grad(): logits = model(io['images'], text={SENTENCES!r}).logits\n"
        "torch.testing.assert_close(logits, io['expected'], rtol=0, atol=1e-5)\n"
        "assert 'peft' not in sys.modules or sys.modules['peft'] is None\n"
        "print('ok')\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
    )
    assert completed.returncode == 0 and "ok" in completed.stdout, completed.stderr[-3000:]


def test_packaged_custom_finetune_experiment(capsys):
    config = load_experiment("custom/finetune_ldit", {"data.root": "mine.jsonl"})
    assert config.data.format == "custom" and config.data.root == "mine.jsonl" and config.train.finetune == "lora"
    assert config.train.init_checkpoint.endswith(".pth") and config.model.injection == "layerwise"
    assert config.train.batch_size % config.train.micro_batch_size == 0
    from ditsam.cli.main import main

    assert main(["train", "--list"]) == 0
    assert "custom/finetune_ldit" in capsys.readouterr().out.split()
