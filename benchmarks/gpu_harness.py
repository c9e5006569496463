"""Timing and model building for ``gpu_suite.py``: CUDA-event timers, precision contexts, random models
and inputs (nothing downloaded)."""

from __future__ import annotations

import contextlib
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

MAX_TOKENS = 20
CLS_ID, SEP_ID = 101, 102  # bert-base-uncased's [CLS] and [SEP]
FIRST_WORD_ID = 1000  # bert-base ids below are [PAD], [unused*] and specials
# Sentence lengths ([CLS] + words + [SEP]) cycled through a batch: padding in every batch but the longest row.
BATCH_LENGTHS = (8, 5, 12, 20, 7, 10, 6, 15)
WARMUP_CALLS = 3


# ---------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], Any], *, device: torch.device, iters: int, warmup: int = WARMUP_CALLS) -> dict[str, float]:
    """Per-call times of ``fn`` (CUDA events on a GPU, so the host may run ahead): median, min, calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: list[float] = []
    events = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            events.append((start, end))
        else:
            began = time.perf_counter()
            fn()
            times.append((time.perf_counter() - began) * 1e3)
    synchronize(device)
    times += [start.elapsed_time(end) for start, end in events]
    return {"median_ms": statistics.median(times), "min_ms": min(times), "calls": len(times)}


def precision(name: str, device: torch.device) -> contextlib.ExitStack:
    """fp32 (strict), tf32 (fp32 with TF32 matmuls on a GPU) or bf16 (autocast)."""
    stack = contextlib.ExitStack()
    if name == "bf16":
        stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16))
    if name == "tf32" and device.type == "cuda":
        old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

        def restore() -> None:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old

        stack.callback(restore)
    return stack


# ---------------------------------------------------------------------------------------------------
# Models and inputs (random weights, nothing downloaded)
# ---------------------------------------------------------------------------------------------------
class Models:
    """Builds the packaged ``refcoco/<variant>`` models, with ``model`` overrides of their config and a random
    BERT of ``bert``'s size (BertConfig keyword arguments; {} = bert-base), written to ``folder``."""

    def __init__(self, *, model: dict[str, Any], bert: dict[str, Any], device: torch.device, folder: Path) -> None:
        from transformers import BertConfig

        self.model_overrides, self.device = model, device
        self.bert_dir = folder / "bert"
        BertConfig(**bert).save_pretrained(str(self.bert_dir))
        self.vocab = BertConfig(**bert).vocab_size
        write_vocab(self.bert_dir, self.vocab)
        self._cache: dict[str, Any] = {}

    def experiment(self, variant: str, **model_overrides: Any):
        from ditsam.engine.config import load_experiment

        overrides = {f"model.{k}": v for k, v in {**self.model_overrides, **model_overrides}.items()}
        overrides.update(
            {
                "model.text.name_or_path": str(self.bert_dir),
                "model.text.local_files_only": True,
                "model.text.max_tokens": MAX_TOKENS,
            }
        )
        return load_experiment(f"refcoco/{variant}", overrides)

    def build(self, variant: str = "ldit", **model_overrides: Any):
        """A fresh DITSam (eval mode) on the device, random weights; L-DIT projections non-zero."""
        from ditsam.model.dit import DITSam

        config = self.experiment(variant, **model_overrides).model
        torch.manual_seed(0)
        with torch.device(self.device):
            model = DITSam(config, load_text_weights=False)
            with torch.no_grad():  # zero-initialised parts (rel-pos tables, L-DIT projections) would hide work
                for name, parameter in model.named_parameters():
                    if "rel_pos" in name or ".writers." in name:
                        parameter.normal_(0.0, 0.02)
        return model.eval()

    def cached(self, variant: str = "ldit") -> Any:
        if variant not in self._cache:
            self._cache[variant] = self.build(variant)
        return self._cache[variant]

    def drop(self) -> None:
        self._cache.clear()

    def tokens(self, batch: int, *, lengths: tuple[int, ...] = BATCH_LENGTHS, seed: int = 0):
        """Random sentences of the given lengths ([CLS] ... [SEP], then [PAD]), all-[PAD] columns dropped."""
        from ditsam.model.text import TokenizedText

        generator = torch.Generator().manual_seed(seed)
        ids = torch.zeros(batch, MAX_TOKENS, dtype=torch.long)
        keep = torch.zeros(batch, MAX_TOKENS, dtype=torch.bool)
        low = min(FIRST_WORD_ID, self.vocab // 2)
        cls_id, sep_id = (CLS_ID, SEP_ID) if self.vocab > FIRST_WORD_ID else (2, 3)
        for row in range(batch):
            length = lengths[row % len(lengths)]
            ids[row, 1 : length - 1] = torch.randint(low, self.vocab, (length - 2,), generator=generator)
            ids[row, 0], ids[row, length - 1] = cls_id, sep_id
            keep[row, :length] = True
        return TokenizedText(ids, keep).without_padding_columns().to(self.device)

    def images(self, batch: int, size: int, *, seed: int = 0) -> torch.Tensor:
        """Random (batch, 3, size, size) canvases, drawn on the device (batch 2048 at 512 px is 6 GB)."""
        generator = torch.Generator(device=self.device).manual_seed(seed)
        return torch.randn(batch, 3, size, size, generator=generator, device=self.device)


# Words of the generated vocabulary (w0, w1, ...) beside BERT's special tokens: enough for a tokenizer to load.
VOCAB_WORDS = 100
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def write_vocab(folder: Path, vocab_size: int) -> None:
    """A ``vocab.txt`` (special tokens, then w0, w1, ...) so that ``Segmenter.predict`` can tokenize sentences for
    the random BERT; its ids stay below ``vocab_size``."""
    words = [f"w{i}" for i in range(min(VOCAB_WORDS, vocab_size - len(SPECIAL_TOKENS)))]
    (folder / "vocab.txt").write_text("\n".join([*SPECIAL_TOKENS, *words]) + "\n", encoding="utf-8")


def model_call(model: Any, images: torch.Tensor, tokens: Any) -> Callable[[], Any]:
    def call() -> Any:
        with torch.inference_mode():
            return model(images, text=tokens)

    return call


def encoder_call(model: Any, images: torch.Tensor, tokens: Any) -> Callable[[], Any]:
    """The image encoder alone on precomputed BERT features."""
    with torch.inference_mode():
        features = model.text_encoder(tokens.input_ids, tokens.attention_mask)
    keep = tokens.attention_mask

    def call() -> Any:
        with torch.inference_mode():
            return model.image_encoder(images, features.to(images.dtype), keep)

    return call


def in_precision(name: str, device: torch.device, fn: Callable[[], Any]) -> Callable[[], Any]:
    def call() -> Any:
        with precision(name, device):
            return fn()

    return call
