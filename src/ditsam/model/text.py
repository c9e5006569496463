"""Text encoder: a Hugging Face BERT turned into per-token features plus a padding mask.

``name_or_path`` is a local directory (``save_pretrained`` layout) or a Hugging Face Hub id such as
``bert-base-uncased``, resolved as transformers does: from the Hub cache, downloaded when missing
(only when a model is built, never at import), and never downloaded when ``HF_HUB_OFFLINE=1`` or
``local_files_only`` is set. :func:`build_tiny_bert` writes a small randomly initialised BERT with a
given vocabulary, which the tests and the synthetic benchmark use instead of ``bert-base-uncased``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import nn

from ditsam.config import ConfigBase

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclasses.dataclass
class TextConfig(ConfigBase):
    """Which BERT to use and how its features feed DIT."""

    # Local directory with a HF BERT (config.json, weights, tokenizer files) or a Hugging Face Hub id.
    name_or_path: str = "bert-base-uncased"
    # Tokens per sentence including [CLS] and [SEP]; longer sentences are truncated with a warning.
    max_tokens: int = 20
    # Index into BERT's hidden states (0 = embeddings, 1 = first layer, -1 = last). The reference
    # code uses the output of the first layer (1) through an indexing quirk; the paper means the last.
    hidden_layer: int = -1
    # Fine-tune BERT (True) or keep it frozen (False).
    trainable: bool = True
    # Never reach the network when resolving name_or_path (a model missing from the cache is then an
    # error, not a download). False: downloads allowed, as in transformers (HF_HUB_OFFLINE=1 still wins).
    local_files_only: bool = False


@dataclasses.dataclass
class TokenizedText:
    """A batch of tokenised sentences.

    input_ids: (B, T) int64; attention_mask: (B, T) bool, True for real tokens.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def to(self, device: torch.device | str) -> "TokenizedText":
        return TokenizedText(self.input_ids.to(device), self.attention_mask.to(device))

    def without_padding_columns(self) -> "TokenizedText":
        """The same sentences without the trailing columns that are [PAD] in every sentence (at least one
        column is kept): (B, T) -> (B, T') with T' the longest sentence. Exact for a model that masks the
        padding (BERT masks it, and masked keys get exactly zero attention). Reads the mask's values: free on
        the CPU, a host-device synchronisation elsewhere, so trim before moving the tokens to an accelerator.
        """
        longest = max(int(self.attention_mask.sum(1).max()), 1) if self.attention_mask.numel() else 1
        return TokenizedText(self.input_ids[:, :longest], self.attention_mask[:, :longest])


class TextTokenizer:
    """Sentences -> :class:`TokenizedText`, padded to ``max_tokens`` (the reference code's layout)."""

    def __init__(self, *, name_or_path: str, max_tokens: int = 20, local_files_only: bool = False) -> None:
        from transformers import AutoTokenizer

        if max_tokens < 3:
            raise ValueError(f"max_tokens must be >= 3 ([CLS], one word, [SEP]), got {max_tokens}")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(
                name_or_path, local_files_only=local_files_only, use_fast=True
            )
        except OSError as error:
            raise FileNotFoundError(
                f"no tokenizer found at {name_or_path!r}: give a local BERT directory (config.json, vocab.txt) "
                f"or a Hugging Face Hub id, reachable or in the cache (HF_HUB_OFFLINE=1 / local_files_only "
                f"allow the cache only) ({error})"
            ) from error
        self.max_tokens = max_tokens
        self._warned = False

    def __call__(self, sentences: str | Sequence[str]) -> TokenizedText:
        if isinstance(sentences, str):
            sentences = [sentences]
        if len(sentences) == 0:
            raise ValueError("no sentence given: expected at least one non-empty sentence")
        for index, sentence in enumerate(sentences):
            if not isinstance(sentence, str) or not sentence.strip():
                raise ValueError(f"sentence {index} is empty ({sentence!r}): every prompt needs some text")
        full = self.tokenizer(list(sentences), add_special_tokens=True)["input_ids"]
        too_long = [i for i, ids in enumerate(full) if len(ids) > self.max_tokens]
        if too_long:
            # Warn once per tokenizer: a training loop would otherwise repeat it every batch.
            log = logger.debug if self._warned else logger.warning
            self._warned = True
            log(
                "%d sentence(s) exceed %d tokens and are truncated (first: %r, %d tokens); later truncations are logged at DEBUG",
                len(too_long),
                self.max_tokens,
                sentences[too_long[0]],
                len(full[too_long[0]]),
            )
        encoded = self.tokenizer(
            list(sentences), padding="max_length", truncation=True, max_length=self.max_tokens, return_tensors="pt"
        )
        return TokenizedText(encoded["input_ids"].long(), encoded["attention_mask"].bool())

    def save_pretrained(self, directory: str | Path) -> None:
        self.tokenizer.save_pretrained(str(directory))


class TextEncoder(nn.Module):
    """BERT -> token features.

    forward(input_ids (B,T), attention_mask (B,T) bool) -> features (B,T,hidden_size).
    """

    def __init__(self, *, config: TextConfig, load_weights: bool = True) -> None:
        super().__init__()
        from transformers import AutoConfig, BertModel

        self.config = config
        try:
            if load_weights:
                self.bert = BertModel.from_pretrained(
                    config.name_or_path, local_files_only=config.local_files_only, add_pooling_layer=False
                )
            else:
                bert_config = AutoConfig.from_pretrained(config.name_or_path, local_files_only=config.local_files_only)
                self.bert = BertModel(bert_config, add_pooling_layer=False)
        except OSError as error:
            raise FileNotFoundError(
                f"no BERT found at {config.name_or_path!r}: give a local directory saved with save_pretrained "
                f"or a Hugging Face Hub id, reachable or in the cache (HF_HUB_OFFLINE=1 / text.local_files_only "
                f"allow the cache only) ({error})"
            ) from error
        num_states = self.bert.config.num_hidden_layers + 1
        if not -num_states <= config.hidden_layer < num_states:
            raise ValueError(
                f"text.hidden_layer={config.hidden_layer} is out of range for a BERT with "
                f"{num_states - 1} layers (valid: {-num_states}..{num_states - 1})"
            )
        self.bert.requires_grad_(config.trainable)

    @property
    def hidden_size(self) -> int:
        return int(self.bert.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        output = self.bert(input_ids=input_ids, attention_mask=attention_mask.long(), output_hidden_states=True)
        return output.hidden_states[self.config.hidden_layer]


def build_tiny_bert(
    directory: str | Path,
    *,
    words: Iterable[str],
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 128,
    dropout: float = 0.1,
    seed: int = 0,
) -> Path:
    """Write a small random BERT with a word-level vocabulary (plus single letters) to ``directory``.

    Used by the tests and by the synthetic benchmark, where no pretrained BERT may be downloaded.
    Returns the directory, loadable by :class:`TextTokenizer` and :class:`TextEncoder`.
    """
    from transformers import BertConfig, BertModel

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    vocabulary = list(
        dict.fromkeys([*SPECIAL_TOKENS, *(w.lower() for w in words), *letters, *(f"##{c}" for c in letters)])
    )
    # vocab.txt + a tokenizer_config naming BertTokenizer is the layout every transformers version
    # reads; AutoTokenizer then builds the fast tokenizer from it.
    (directory / "vocab.txt").write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
    tokenizer_config = {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 512}
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config), encoding="utf-8")
    config = BertConfig(
        vocab_size=len(vocabulary),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=64,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    torch.manual_seed(seed)
    BertModel(config, add_pooling_layer=False).save_pretrained(str(directory))
    return directory
