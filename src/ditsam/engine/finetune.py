"""Fine-tuning modes (``train.finetune``): which parameters train, and LoRA adapters.

- ``full``: what the model config leaves trainable (``freeze_image_encoder``, ``text.trainable``).
- ``frozen``: only the text injection, the mask decoder and W_o (``text_proj``) train
  (:meth:`DITSam.apply_freezing` with ``head_only=True``).
- ``lora``: as ``frozen``, plus LoRA adapters (the ``peft`` library, ``pip install "ditsam[finetune]"``)
  on the ViT attention projections ``image_encoder.blocks.*.attn.qkv`` / ``.proj``.

Training keeps the adapters separate; :func:`merged_copy` gives a plain :class:`DITSam` with the
adapters merged into the weights, which is what checkpoints store, so inference and
``DITSam.from_pretrained`` never need ``peft``.
"""

from __future__ import annotations

import copy
import logging

from torch import nn

from ditsam.engine.config import TrainConfig
from ditsam.model.dit import DITSam

logger = logging.getLogger(__name__)

FINETUNE_MODES = ("full", "frozen", "lora")
# Module names (full match) that get LoRA adapters: the ViT blocks' attention projections.
LORA_TARGET_MODULES = r"image_encoder\.blocks\.\d+\.attn\.(qkv|proj)"


def prepare_for_finetuning(model: DITSam, train: TrainConfig) -> DITSam:
    """Set what trains in ``model`` for ``train.finetune`` (adds the LoRA adapters in place); returns it."""
    mode = train.finetune
    if mode not in FINETUNE_MODES:
        raise ValueError(f"unknown train.finetune {mode!r}: use one of {', '.join(FINETUNE_MODES)}")
    if mode == "full":
        model.apply_freezing()
    else:
        if mode == "lora":
            _add_lora(model, rank=train.lora_rank, alpha=train.lora_alpha)
        model.apply_freezing(head_only=True)
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.requires_grad_(True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info(
        "finetune=%s: %d of %d parameters train (%.2f%%)", mode, trainable, total, 100.0 * trainable / max(total, 1)
    )
    return model


def _add_lora(model: DITSam, *, rank: int, alpha: float) -> None:
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError('train.finetune=lora needs the peft library: pip install "ditsam[finetune]"') from error
    if rank < 1:
        raise ValueError(f"train.lora_rank must be >= 1, got {rank}")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none", target_modules=LORA_TARGET_MODULES)
    inject_adapter_in_model(config, model)


def _adapter_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every peft adapter layer in ``model`` (none without peft installed)."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return []
    return [(name, module) for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)]


def has_adapters(model: nn.Module) -> bool:
    return bool(_adapter_layers(model))


def merged_copy(model: DITSam) -> DITSam:
    """``model`` itself when it has no adapters; otherwise a copy with every LoRA adapter merged into its
    base layer and the base layer put back in its place (the original keeps training, unmerged)."""
    if not has_adapters(model):
        return model
    merged = copy.deepcopy(model)
    for name, layer in _adapter_layers(merged):
        layer.merge(safe_merge=True)
        parent_name, _, child = name.rpartition(".")
        setattr(merged.get_submodule(parent_name), child, layer.get_base_layer())
    return merged
