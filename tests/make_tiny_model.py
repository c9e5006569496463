"""Save a tiny random L-DIT (and its generated tiny BERT) as a save_pretrained folder: the model the wheel
test predicts with, using whatever ``ditsam`` the running interpreter imports (the installed wheel there).

Usage: ``python tests/make_tiny_model.py OUT_DIR``; prints nothing, writes ``OUT_DIR/model``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ditsam.model.dit import DITSam
from ditsam.model.text import build_tiny_bert
from helpers import WORDS, tiny_config

#: Width and depth of the generated BERT: the smallest that runs.
TINY_BERT_HIDDEN = 32
TINY_BERT_LAYERS = 2


def save_tiny_model(out: Path) -> Path:
    """The tiny model's folder under ``out`` (with the BERT it was built from beside it)."""
    torch.manual_seed(0)
    bert = build_tiny_bert(out / "bert", words=WORDS, hidden_size=TINY_BERT_HIDDEN, num_layers=TINY_BERT_LAYERS)
    return DITSam(tiny_config(bert)).save_pretrained(out / "model")


if __name__ == "__main__":
    save_tiny_model(Path(sys.argv[1]))
