"""The generated text encoder: ``model.text.name_or_path = "generated:refshapes"`` names a tiny random BERT
built locally (nothing is downloaded), whose folder is known from the config and the run folder alone
(:func:`resolve_text_encoder`, so the config is final before anything is written) and whose files are
written when the data has been read (:meth:`GeneratedTextEncoder.build`)."""

from __future__ import annotations

import dataclasses
import importlib
import re
from pathlib import Path
from typing import Iterable

from ditsam.engine.config import ExperimentConfig
from ditsam.engine.generated import GENERATED_FORMATS

GENERATED_TEXT_PREFIX = "generated:"
#: Name after "generated:" in model.text.name_or_path -> the vocabulary's module and constant.
GENERATED_VOCABULARIES = {
    "refshapes": ("ditsam.data.refshapes", "REFSHAPES_WORDS"),
    "grefshapes": ("ditsam.data.grefshapes", "GREFSHAPES_WORDS"),
}
#: Sizes of the generated text encoder (a tiny random BERT, trained from scratch with the model).
GENERATED_BERT_SIZES = dict(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128)
#: Folder of the generated text encoder: under data.root for RefShapes, under the run folder otherwise.
GENERATED_BERT_DIR = "tiny_bert"
_WORD = re.compile(r"[^\W_]+")


@dataclasses.dataclass(frozen=True)
class GeneratedTextEncoder:
    """A generated text encoder still to be written: ``directory`` (what the config points at), the named
    vocabulary's ``words``, and whether the training sentences' words join them (data other than the
    generated formats)."""

    directory: Path
    words: tuple[str, ...]
    add_training_words: bool

    def build(self, sentences: Iterable[str] = ()) -> None:
        """Write the tiny BERT into :attr:`directory` unless it is there already. Words outside the vocabulary
        still split into letters, so no sentence is lost to [UNK]."""
        from ditsam.model.text import build_tiny_bert

        if (self.directory / "config.json").is_file():
            return
        words = list(self.words)
        if self.add_training_words:
            known = set(words)
            found = {word for sentence in sentences for word in _WORD.findall(sentence.lower())}
            words += sorted(found - known)
        build_tiny_bert(self.directory, words=words, **GENERATED_BERT_SIZES)


def resolve_text_encoder(
    config: ExperimentConfig, *, run_dir: Path | None = None
) -> tuple[ExperimentConfig, GeneratedTextEncoder | None]:
    """The config with ``model.text.name_or_path = "generated:refshapes"`` (or ``"generated:grefshapes"``)
    replaced by the folder of its tiny random BERT, and that encoder to :meth:`~GeneratedTextEncoder.build`
    once the data is read; ``(config, None)`` for any other text encoder. Writes nothing.

    On generated data (RefShapes, gRefShapes) the vocabulary is the benchmark's, under ``<data.root>/tiny_bert``
    (``tiny_bert_grefshapes``). On other data (``data.format`` refer / grefcoco / simrec / custom) it is the
    named vocabulary plus every word of the training sentences, under ``<run_dir>/tiny_bert``.
    """
    from ditsam.config import ConfigError

    name = config.model.text.name_or_path
    if not name.startswith(GENERATED_TEXT_PREFIX):
        return config, None
    vocabulary = name[len(GENERATED_TEXT_PREFIX) :]
    if vocabulary not in GENERATED_VOCABULARIES:
        raise ConfigError(
            f"model.text.name_or_path {name!r}: generated text encoders are "
            f"{', '.join(GENERATED_TEXT_PREFIX + v for v in GENERATED_VOCABULARIES)}"
        )
    module, constant = GENERATED_VOCABULARIES[vocabulary]
    words = tuple(getattr(importlib.import_module(module), constant))
    generated_data = config.data.format in GENERATED_FORMATS
    if generated_data:
        suffix = "" if vocabulary == "refshapes" else f"_{vocabulary}"
        directory = Path(config.data.root) / f"{GENERATED_BERT_DIR}{suffix}"
    elif run_dir is None:
        raise ConfigError(
            f"model.text.name_or_path {name!r} on data.format={config.data.format} builds its vocabulary from the "
            f"training sentences into the run folder, and none was given; set model.text.name_or_path to a BERT "
            f"(a Hub id such as bert-base-uncased, or a local folder)"
        )
    else:
        directory = Path(run_dir) / GENERATED_BERT_DIR
    encoder = GeneratedTextEncoder(directory=directory, words=words, add_training_words=not generated_data)
    return config.with_overrides({"model.text.name_or_path": str(directory)}), encoder
