"""The model card (``README.md``) written into every
:meth:`DITSam.save_pretrained <ditsam.model.dit.DITSam.save_pretrained>` folder: what the model is, what it was trained on and how well it scores when that is known, how to load it,
and the paper to cite. The Hugging Face Hub shows this file as the repository's page; its YAML header
(``library_name``, ``license``, ``pipeline_tag``, ``tags``, ``datasets``, ``base_model`` and, with metrics, a
``model-index`` of the scores per split) is what the Hub indexes.

Nothing here touches the network or the weights: the card is built from the config and a parameter count.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from ditsam.defaults import MASK_THRESHOLD
from ditsam.metrics import COLUMN_TITLES
from ditsam.model.checkpoints.keys import SAM_DECODER_LAYERS
from ditsam.model.checkpoints.loadable import LoadableModel
from ditsam.model.config import DITSamConfig

#: File name of the card inside a save_pretrained folder (the Hub renders it as the repository page).
CARD_FILE = "README.md"
#: The Hub task the model solves.
PIPELINE_TAG = "image-segmentation"
#: Library name the Hub shows for the repository.
LIBRARY_NAME = "ditsam"
#: Hub tags every card carries.
CARD_TAGS = ("referring-image-segmentation", "segment-anything", "dit-sam", "text-prompted-segmentation")
#: Decimal places of the metrics table.
METRIC_DECIMALS = 2
#: The licence the Hub shows (its identifier for Apache-2.0, the package's licence).
CARD_LICENSE = "apache-2.0"
#: What P@X counts under each evaluation protocol of ``ditsam eval`` (README, Metrics).
P_AT_X_RULES = {"exact": "IoU >= X", "reference": "IoU > X"}
DEFAULT_PROTOCOL = "exact"
#: Entries of a results.json row that are not scores (the table keeps ``count``; the model-index drops it).
NOT_SCORES = frozenset({"protocol", "processes", "versions", "data_source", "dtype"})
#: The model-index's name for the dataset when the training data names none (or several).
UNNAMED_DATASET = "evaluation data"
#: Sentence used in the loading examples.
EXAMPLE_SENTENCE = "the man on the left"

PAPER_TITLE = "Deep Instruction Tuning for Segment Anything Model"
PAPER_AUTHORS = ("Xiaorui Huang", "Gen Luo", "Chaoyang Zhu", "Bo Tong", "Yiyi Zhou", "Xiaoshuai Sun", "Rongrong Ji")
PAPER_VENUE = "Proceedings of the 32nd ACM International Conference on Multimedia (ACM MM 2024)"
PAPER_YEAR = 2024
PAPER_ARXIV = "2404.00650"

_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_INJECTIONS = {
    "none": "none: SAM with a text baseline; the BERT words enter the mask decoder only (projected by W_o as "
    "sparse prompts)",
    "e2e": "E-DIT (end-to-end): the projected BERT tokens are prepended to the image tokens once and run through "
    "every ViT block",
    "layerwise": "L-DIT (layer-wise): before every ViT block the text positions are replaced by a fresh, "
    "per-layer projection of the BERT features",
    "crossattn": "per-layer cross-attention from the image tokens to the text (Table 3, CrossAtt)",
    "crossattn_ffn": "per-layer cross-attention + FFN from the image tokens to the text (Table 3)",
}


@dataclasses.dataclass(frozen=True)
class CardFacts:
    """What the card says about a model beyond its config: ``num_parameters`` (all tensors of the model),
    ``text_hidden_size`` / ``text_layers`` (its BERT)."""

    num_parameters: int
    text_hidden_size: int
    text_layers: int


def facts_of(model: LoadableModel) -> CardFacts:
    """The :class:`CardFacts` of a built model."""
    bert = model.text_encoder.bert.config
    return CardFacts(
        num_parameters=sum(parameter.numel() for parameter in model.parameters()),
        text_hidden_size=int(bert.hidden_size),
        text_layers=int(bert.num_hidden_layers),
    )


def citation_bibtex() -> str:
    """The paper's BibTeX entry."""
    return (
        "@inproceedings{huang2024dit,\n"
        f"  title     = {{{PAPER_TITLE}}},\n"
        f"  author    = {{{' and '.join(PAPER_AUTHORS)}}},\n"
        f"  booktitle = {{{PAPER_VENUE}}},\n"
        f"  year      = {{{PAPER_YEAR}}},\n"
        f"  eprint    = {{{PAPER_ARXIV}}},\n"
        "  archivePrefix = {arXiv}\n"
        "}"
    )


def _yaml_string(value: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(value)


def _is_dataset_id(name: str) -> bool:
    """A name the Hub header can list (``refcoco``, ``owner/name``), not a sentence about the data."""
    return bool(name) and not any(character.isspace() for character in name)


def _is_score(name: str, value: object) -> bool:
    return name not in NOT_SCORES and (
        value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
    )


def _model_index(
    name: str, metrics: Mapping[str, Mapping[str, object]], *, dataset: str, protocol: str
) -> list[dict[str, object]]:
    """The Hub's ``model-index``: one result per split, its scores (percent) as the metrics."""
    results = []
    for split, values in metrics.items():
        scores = [
            {"type": metric, "name": COLUMN_TITLES.get(metric, metric.replace("p@", "P@")), "value": value}
            for metric, value in values.items()
            if _is_score(metric, value) and metric != "count" and value is not None
        ]
        results.append(
            {
                "task": {"type": PIPELINE_TAG, "name": "Referring image segmentation"},
                "dataset": {"type": dataset, "name": dataset, "split": str(split)},
                "metrics": scores,
                "source": {"name": f"ditsam eval ({protocol} protocol)", "url": f"https://arxiv.org/abs/{PAPER_ARXIV}"},
            }
        )
    return [{"name": name, "results": results}]


def _front_matter(
    *, datasets: Sequence[str], base_model: str | None, model_index: list[dict[str, object]] | None = None
) -> str:
    lines = [
        "---",
        f"library_name: {LIBRARY_NAME}",
        f"license: {CARD_LICENSE}",
        f"pipeline_tag: {PIPELINE_TAG}",
        "tags:",
    ]
    lines += [f"  - {tag}" for tag in CARD_TAGS]
    if datasets:
        lines.append("datasets:")
        lines += [f"  - {_yaml_string(name)}" for name in datasets]
    if base_model and _HUB_ID.fullmatch(base_model):  # the Hub header takes repo ids only, not file names
        lines.append(f"base_model: {_yaml_string(base_model)}")
    if model_index:
        lines.append(yaml.safe_dump({"model-index": model_index}, sort_keys=False, allow_unicode=True).rstrip())
    lines.append("---")
    return "\n".join(lines)


#: Whose mask decoder each family has, as the card names it.
_DECODER_OWNERS = {"sam": "SAM's", "efficientsam": "EfficientSAM's"}
#: How the card names EfficientSAM's backbones (SAM's are "SAM ViT-B", ...).
_EFFICIENTSAM_NAMES = {"efficientsam_ti": "EfficientSAM-Ti ViT", "efficientsam_s": "EfficientSAM-S ViT"}


def _backbone_name(config: DITSamConfig) -> str:
    """``SAM ViT-B`` / ... / ``EfficientSAM-Ti ViT`` / ..., or ``custom ViT`` (``custom EfficientSAM ViT``)."""
    if config.backbone == "custom":
        return "custom EfficientSAM ViT" if config.model_family == "efficientsam" else "custom ViT"
    return _EFFICIENTSAM_NAMES.get(config.backbone) or "SAM ViT-" + config.backbone.removeprefix("vit_").upper()


def _architecture(config: DITSamConfig, facts: CardFacts) -> list[str]:
    size = config.size
    name = _backbone_name(config)
    if config.attention == "global":
        attention = "global attention in every block (as the authors' code)"
    else:
        attention = (
            f"SAM's layout: {config.window_size}x{config.window_size} windows, global attention in blocks "
            f"{', '.join(str(index) for index in size.global_attn_indexes)}"
        )
    layer = config.text.hidden_layer
    which = (
        "the first layer's output (as the authors' code)"
        if layer == 1
        else ("the last layer's output" if layer == -1 else f"hidden state {layer}")
    )
    padding = (
        "[PAD] positions masked" if config.mask_text_padding else "[PAD] positions attended (as the authors' code)"
    )
    decoder_depth = SAM_DECODER_LAYERS + config.extra_decoder_layers
    outputs = "three masks + IoU scores" if config.multimask_output else "one mask + IoU score"
    if config.no_target_head:
        outputs += "; a no-target head says whether the sentence refers to anything (generalized RIS)"
    injection = _INJECTIONS.get(config.injection, config.injection)
    if config.injection_options.static_tokens:
        injection += f", plus {config.injection_options.static_tokens} learnable static prompt tokens"
    rows = [
        (
            "Image encoder",
            f"{name}: width {size.embed_dim}, {size.depth} blocks, {size.num_heads} heads, patch "
            f"{config.patch_size}, {config.image_size} px input; {attention}",
        ),
        ("Text injection", injection),
        (
            "Text encoder",
            f"BERT (hidden {facts.text_hidden_size}, {facts.text_layers} layers), features from {which}; "
            f"at most {config.text.max_tokens} tokens; {padding}",
        ),
        (
            "Mask decoder",
            f"{_DECODER_OWNERS[config.model_family]} two-way transformer, depth {decoder_depth}, width "
            f"{config.prompt_embed_dim}; {outputs}",
        ),
        ("Parameters", f"{facts.num_parameters:,}"),
    ]
    table = ["| part | |", "|---|---|"] + [f"| {part} | {text} |" for part, text in rows]
    return [
        "## Architecture",
        "",
        "SAM with Deep Instruction Tuning (DIT): BERT text tokens are fused *inside* SAM's ViT image encoder, "
        "so the sentence shapes the image features, not just the decoder's prompts. Input: an image (long side "
        f"resized to {config.image_size}, zero-padded, ImageNet mean/std) and a sentence; output: mask logits "
        f"(sigmoid > {MASK_THRESHOLD} is the reference threshold).",
        "",
        *table,
    ]


def _format_metric(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.{METRIC_DECIMALS}f}" if isinstance(value, float) else str(value)


def _metrics(metrics: Mapping[str, Mapping[str, object]]) -> list[str]:
    columns: list[str] = []
    for values in metrics.values():
        columns += [name for name, value in values.items() if _is_score(name, value) and name not in columns]
    table = ["| split | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for split, values in metrics.items():
        table.append(f"| {split} | " + " | ".join(_format_metric(values.get(name, "")) for name in columns) + " |")
    return table


def _protocol_of(metrics: Mapping[str, Mapping[str, object]] | None, protocol: str | None) -> str:
    """The protocol the scores were computed with: given, else recorded in them (``ditsam eval``'s rows), else exact."""
    recorded = {str(values["protocol"]) for values in (metrics or {}).values() if "protocol" in values}
    if protocol is None:
        if len(recorded) > 1:
            raise ValueError(f"the metrics mix evaluation protocols ({', '.join(sorted(recorded))}): give one per card")
        protocol = recorded.pop() if recorded else DEFAULT_PROTOCOL
    if protocol not in P_AT_X_RULES:
        raise ValueError(f"unknown evaluation protocol {protocol!r}: use one of {', '.join(P_AT_X_RULES)}")
    return protocol


def _check_metrics(metrics: Mapping[str, Mapping[str, object]]) -> None:
    if not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must map a split to {{metric: value}}, got {type(metrics).__name__}")
    for split, values in metrics.items():
        if not isinstance(values, Mapping):
            raise TypeError(f"metrics[{split!r}] must map metric names to values, got {type(values).__name__}")


def build_model_card(
    config: DITSamConfig,
    *,
    facts: CardFacts,
    metrics: Mapping[str, Mapping[str, object]] | None = None,
    training_data: str | Sequence[str] | None = None,
    base_model: str | None = None,
    model_id: str | None = None,
    notes: Sequence[str] = (),
    protocol: str | None = None,
) -> str:
    """The model card's Markdown text.

    ``metrics``: split -> {metric: value} (as a training run's ``results.json``: ``{"val": {"oiou": 72.1,
    "miou": 74.3, "p@0.5": ...}}``), shown as a table. ``training_data``: the dataset name(s) (listed in the
    Hub header) or a sentence describing the data. ``base_model``: what the weights came from (a Hub id or a
    file name). ``model_id``: how to load the model in the examples (a Hub id or a folder; default: this
    folder). ``notes``: extra lines for a "Notes" section (e.g. how the folder was converted). ``protocol``:
    the evaluation protocol of the metrics ("exact" or "reference"; default: what their rows record, else
    "exact"), which decides the P@X definition the card states.
    """
    if metrics is not None:
        _check_metrics(metrics)
    protocol = _protocol_of(metrics, protocol)
    if isinstance(training_data, str):
        datasets: list[str] = [training_data] if training_data.strip() else []
    else:
        datasets = [str(name) for name in training_data or ()]
    reference = model_id or "path/to/this/folder"
    title = {"layerwise": "L-DIT", "e2e": "E-DIT", "none": "SAM text baseline"}.get(config.injection, "DIT-SAM")
    backbone = _backbone_name(config)
    dataset_ids = [name for name in datasets if _is_dataset_id(name)]
    model_index = (
        _model_index(
            model_id or f"DIT-SAM {title}",
            metrics,
            dataset=dataset_ids[0] if len(dataset_ids) == 1 else UNNAMED_DATASET,
            protocol=protocol,
        )
        if metrics
        else None
    )
    lines = [
        _front_matter(datasets=dataset_ids, base_model=base_model, model_index=model_index),
        "",
        f"# DIT-SAM: {title} ({backbone}, {config.image_size} px)",
        "",
        "Referring image segmentation with the Segment Anything Model: give an image and a sentence, get the "
        "mask of the object the sentence describes. An implementation of *Deep Instruction Tuning for Segment "
        f"Anything Model* (Huang et al., ACM MM 2024, [arXiv {PAPER_ARXIV}](https://arxiv.org/abs/{PAPER_ARXIV})) "
        "in the `ditsam` package.",
        "",
        *_architecture(config, facts),
        "",
        "## Training data",
        "",
    ]
    if datasets:
        lines += [f"- {name}" for name in datasets]
    else:
        lines.append("Not recorded with this checkpoint.")
    lines += ["", "## Metrics", ""]
    if metrics:
        lines += [
            f"oIoU (overall IoU), mIoU (mean IoU) and P@X (share of sentences with {P_AT_X_RULES[protocol]}) in "
            f"percent, as `ditsam eval --protocol {protocol}` computes them.",
            "",
            *_metrics(metrics),
        ]
    else:
        lines.append("Not recorded with this checkpoint: run `ditsam eval` on your data.")
    lines += ["", "## Base model", ""]
    if base_model:
        lines.append(f"Weights from `{base_model}`.")
    else:
        lines.append(
            f"Not recorded with this checkpoint. DIT-SAM models start from an official SAM {backbone} "
            "checkpoint (`train.init_checkpoint=sam_vit_b`) and a BERT (`bert-base-uncased`)."
        )
    lines += [
        "",
        "## How to load",
        "",
        "```bash",
        "# with the ditsam package installed (pip install -e . in a clone of its repository)",
        f'ditsam predict --checkpoint {reference} --image photo.jpg --text "{EXAMPLE_SENTENCE}"',
        "```",
        "",
        "```python",
        "from ditsam import DITSam, Segmenter",
        "",
        f'segmenter = Segmenter.from_pretrained("{reference}")',
        f'result = segmenter.predict(image, "{EXAMPLE_SENTENCE}")  # image: a path, PIL image or RGB array',
        f'model = DITSam.from_pretrained("{reference}")  # the torch module',
        "```",
        "",
        "The folder is self-contained: `config.json` (the architecture), `model.safetensors` (every weight, BERT "
        "included) and `text_encoder/` (BERT's config and tokenizer); loading it needs no network.",
        "",
        _by_name(model_id),
    ]
    if notes:
        lines += ["", "## Notes", "", *(f"- {note}" for note in notes)]
    lines += ["", "## Citation", "", "```bibtex", citation_bibtex(), "```", ""]
    return "\n".join(lines)


def _by_name(model_id: str | None) -> str:
    """How to load the model by its Hub name, with the keywords transformers users type."""
    if model_id and _HUB_ID.fullmatch(model_id):
        return (
            f'By name, `DITSam.from_pretrained("{model_id}", revision="main")` downloads it once into the '
            "Hugging Face cache; `token=`, `cache_dir=`, `local_files_only=True` and `force_download=True` work "
            "as in transformers, and `HF_HUB_OFFLINE=1` uses the cache only."
        )
    return (
        'Uploaded with `model.push_to_hub("owner/name")`, it loads by that name: '
        '`DITSam.from_pretrained("owner/name")` (`revision=`, `token=`, `cache_dir=`, `local_files_only=True`).'
    )


def write_model_card(directory: str | Path, text: str) -> Path:
    """Write ``text`` as the card of a save_pretrained ``directory``; returns the file."""
    path = Path(directory) / CARD_FILE
    path.write_text(text, encoding="utf-8")
    return path
