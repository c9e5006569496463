"""Our own format: the folder :func:`save_pretrained` writes (behind
:meth:`DITSam.save_pretrained <ditsam.model.dit.DITSam.save_pretrained>` and ``push_to_hub``), and reading it back.

A folder holds ``config.json`` (``{"format_version", "model": config, "versions": {"ditsam", "torch"}}``;
folders written before ``versions`` was recorded load too), ``model.safetensors``,
``text_encoder/`` (BERT config + tokenizer) and a model card. :func:`read_pretrained_folder` validates one and
returns the config and the paths; :func:`load_folder_with_report` builds a model from it and
:func:`load_folder_into` loads it into a built one, both strictly -- except that a folder of another
variant of the same SAM (e.g. the decoder-only ``refshapes-sam`` under an L-DIT) is a training start: its
weights load into the shared parts and the parts only the new variant has (text injection, decoder layers
beyond SAM's two, the presence head) stay fresh, as from a SAM checkpoint; a model whose generated text
encoder has another vocabulary keeps its own. A flat state dict of ours (a
``.pth`` of ``DITSam.state_dict()``) loads strictly too (:func:`load_ditsam_state_dict`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ditsam.config import ConfigError
from ditsam.model.checkpoints.card import build_model_card, facts_of, write_model_card
from ditsam.model.checkpoints.files import safetensors_load, strip_module_prefix
from ditsam.model.checkpoints.keys import INJECTION_PREFIX, TEXT_PREFIX, only_in_dit_variants
from ditsam.model.checkpoints.loadable import LoadableModel
from ditsam.model.checkpoints.matching import apply_state_dict
from ditsam.model.checkpoints.report import CheckpointError, LoadReport
from ditsam.model.config import DITSamConfig
from ditsam.schema import is_integer
from ditsam.versions import VERSIONS_KEY, software_versions

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TEXT_DIR = "text_encoder"
FORMAT_VERSION = 1
#: The JSON indent of config.json: readable by people, diffable.
CONFIG_INDENT = 2


def read_pretrained_folder(directory: Path) -> tuple[DITSamConfig, Path, Path]:
    """Validate a save_pretrained folder; returns (config with text.name_or_path set, text dir, weights file)."""
    if not directory.exists():
        raise FileNotFoundError(f"no ditsam checkpoint folder at {directory}")
    if not directory.is_dir():
        raise NotADirectoryError(
            f"{directory} is a file, not a ditsam checkpoint folder "
            f"(SAM / reference .pth files load with load_checkpoint)"
        )
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"checkpoint folder without config: {config_path} is missing")
    try:
        payload = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{config_path} is not valid JSON: {error}") from error
    if not isinstance(payload, dict) or "model" not in payload or "format_version" not in payload:
        raise CheckpointError(f"{config_path} must be an object with 'format_version' and 'model' entries")
    unknown = sorted(set(payload) - {"format_version", "model", VERSIONS_KEY})
    if unknown:
        raise CheckpointError(f"{config_path}: unknown top-level key(s) {', '.join(unknown)}")
    if not isinstance(payload.get(VERSIONS_KEY, {}), dict):
        raise CheckpointError(f"{config_path}: {VERSIONS_KEY!r} must map a package to its version")
    version = payload["format_version"]
    if not is_integer(version) or not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(
            f"{config_path}: format_version {version!r} is not supported (this ditsam reads 1..{FORMAT_VERSION})"
        )
    try:
        config = DITSamConfig.from_dict(payload["model"], prefix="model.")
    except ConfigError as error:
        raise ConfigError(f"{config_path}: {error}") from error
    text_dir = directory / TEXT_DIR
    if not (text_dir / "config.json").is_file():
        raise FileNotFoundError(f"{text_dir}/config.json is missing: the folder lacks its text encoder config")
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing: the checkpoint folder has no weights")
    config.text.name_or_path = str(text_dir)
    return config, text_dir, weights


def load_ditsam_state_dict(
    model: LoadableModel, state_dict: Mapping[str, torch.Tensor], *, source: str = "<state dict>"
) -> LoadReport:
    """Load a state dict in our own names into ``model``, strictly (no key may be missing, extra or resized)."""
    return apply_state_dict(
        model,
        strip_module_prefix(state_dict),
        kind="ditsam",
        source=source,
        classify_missing=lambda key: None,
        allow_resize=False,
    )


def load_folder_with_report(cls: type[LoadableModel], directory: Path) -> tuple[LoadableModel, LoadReport]:
    """A model built from a save_pretrained folder (on the CPU) and the report of its strict load."""
    config, _, weights = read_pretrained_folder(directory)
    model = cls(config, load_text_weights=False)
    return model, load_ditsam_state_dict(model, safetensors_load(weights), source=str(weights))


#: Config fields in which a training start may differ from the folder it starts from (the DIT parts a
#: variant adds on the same SAM; see the module docstring).
#: What trains and how much memory it takes may differ too (Table 1's frozen rows, the frozen-text table).
VARIANT_FIELDS = frozenset(
    {
        "injection",
        "injection_options",
        "extra_decoder_layers",
        "no_target_head",
        "multimask_output",
        "freeze_image_encoder",
        "gradient_checkpointing",
        "text.trainable",
        "text.local_files_only",
    }
)


def _start_missing(key: str, *, text_kept: bool = False) -> str | None:
    """A model key absent from a folder of another variant: fresh if only a variant has it, kept for a text
    encoder not taken from the folder (``text_kept``), else an error."""
    if key.startswith(TEXT_PREFIX):
        return "kept" if text_kept else None
    return "fresh" if only_in_dit_variants(key) else None


def _other_vocabulary(model: LoadableModel, state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """Why the folder's text encoder cannot serve ``model`` (a vocabulary of another size), or None."""
    key = f"{TEXT_PREFIX}bert.embeddings.word_embeddings.weight"
    own = model.state_dict().get(key)
    if own is None or key not in state_dict or state_dict[key].shape == own.shape:
        return None
    return (
        f"the folder's text encoder has a vocabulary of {state_dict[key].shape[0]} tokens, the model's "
        f"{own.shape[0]} (e.g. a generated BERT that took the training sentences' words): the model keeps its own "
        f"text encoder (listed as kept), everything else starts from the folder"
    )


def _variant_start(
    model: LoadableModel, state_dict: Mapping[str, torch.Tensor], *, source: str, text_kept: bool
) -> LoadReport:
    """The shared weights of a folder of another variant; its injection the model lacks is ignored, and so is
    its text encoder when ``text_kept``."""
    own = model.state_dict()
    ignored = sorted(
        key
        for key in state_dict
        if (key.startswith(INJECTION_PREFIX) and key not in own) or (text_kept and key.startswith(TEXT_PREFIX))
    )
    taken = {key: value for key, value in state_dict.items() if key not in ignored}
    return apply_state_dict(
        model,
        taken,
        kind="ditsam",
        source=source,
        classify_missing=lambda key: _start_missing(key, text_kept=text_kept),
        allow_resize=False,
        ignored=ignored,
    )


def config_differences(saved: DITSamConfig, current: DITSamConfig) -> list[str]:
    """The fields in which two model configs differ in effect (``model.text.*`` as ``text.<field>``): the text
    model's path is left out, and fields whose None means "the family's choice" compare as resolved."""
    old, new = saved.resolved_dict(), current.resolved_dict()
    for values in (old, new):
        values["text"].pop("name_or_path")
    return sorted(
        [k for k in old if k != "text" and old[k] != new[k]]
        + [f"text.{k}" for k in old["text"] if old["text"][k] != new["text"][k]]
    )


def load_folder_into(model: LoadableModel, directory: Path) -> LoadReport:
    """A save_pretrained folder's weights loaded into a built ``model`` as a training start: strictly from a
    folder of the same architecture, into the shared parts from a folder of another variant (see the module
    docstring), the model's own text encoder kept when the folder's has another vocabulary; config
    differences are noted."""
    config, _, weights = read_pretrained_folder(directory)
    differences = config_differences(config, model.config)
    state_dict = strip_module_prefix(safetensors_load(weights))
    vocabulary = _other_vocabulary(model, state_dict)
    if any(key not in VARIANT_FIELDS for key in differences) or not (differences or vocabulary):
        report = load_ditsam_state_dict(model, state_dict, source=str(weights))
    else:
        report = _variant_start(model, state_dict, source=str(weights), text_kept=vocabulary is not None)
    if vocabulary is not None:
        logger.warning("%s: %s", directory, vocabulary)
        report.notes.append(vocabulary)
    if differences:
        note = f"the model's config differs from the saved one in {', '.join(differences)}"
        logger.warning("%s: %s", directory, note)
        report.notes.append(note)
    return report


def save_pretrained(
    model: LoadableModel,
    directory: str | Path,
    *,
    metrics: Mapping[str, Mapping[str, object]] | None = None,
    training_data: str | Sequence[str] | None = None,
    base_model: str | None = None,
    model_id: str | None = None,
    card_notes: Sequence[str] = (),
) -> Path:
    """Write ``model`` as a folder: config.json, model.safetensors, the text tokenizer/config and a model card
    (README.md, :func:`~ditsam.model.checkpoints.card.build_model_card`); the arguments are
    :meth:`DITSam.save_pretrained <ditsam.model.dit.DITSam.save_pretrained>`'s."""
    from safetensors.torch import save_file

    card = build_model_card(
        model.config,
        facts=facts_of(model),
        metrics=metrics,
        training_data=training_data,
        base_model=base_model,
        model_id=model_id,
        notes=card_notes,
    )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    text_dir = directory / TEXT_DIR
    model.text_encoder.bert.config.save_pretrained(str(text_dir))
    model.tokenizer.save_pretrained(text_dir)
    payload = {"format_version": FORMAT_VERSION, "model": model.config.to_dict(), VERSIONS_KEY: software_versions()}
    (directory / CONFIG_FILE).write_text(json.dumps(payload, indent=CONFIG_INDENT), encoding="utf-8")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    write_model_card(directory, card)
    return directory
