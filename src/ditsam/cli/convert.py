"""``ditsam convert SRC DST``: any model source into a self-contained ``save_pretrained`` folder.

SRC is whatever :func:`ditsam.model.checkpoints.load_pretrained` accepts: the authors' released DIT ``.pth``
(architecture read from its shapes; BERT's config and tokenizer from ``--text-model``, default
``bert-base-uncased`` through the Hub cache), a Hugging Face Hub id, or another folder. DST gets
``config.json``, ``model.safetensors`` (every weight, BERT included), ``text_encoder/`` (BERT's config and
tokenizer) and a model card ``README.md``: it then loads with no network at all. The key report (what was
loaded, resized, ignored) is printed. The folder is written beside DST first and moved into place only
once it has been read back and matches, so a failed conversion leaves nothing half-written.

SRC may also be an official SAM checkpoint (a ``.pth`` file, or ``sam_vit_b`` / ``sam_vit_l`` / ``sam_vit_h``
by name, fetched into torch's hub cache) *with* ``--text-model NAME_OR_DIR``: the reference config of the
SAM's ViT size (``--injection``, default layerwise = L-DIT), SAM's weights loaded strictly, BERT's weights from
the text model, the text injection and W_o freshly initialised. That folder is an untrained starting point
for ``ditsam train EXPERIMENT train.init_checkpoint=DST`` (its model card says so), not a model to predict
with. Without ``--text-model`` a SAM file is refused: it holds no text model. An official EfficientSAM file
(``efficient_sam_vit{t,s}.pt``, or ``efficientsam_ti`` / ``efficientsam_s`` by name) works the same way.
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from ditsam.cli.errors import CLIError
from ditsam.cli.source_args import SOURCE_HELP, add_source_arguments, source_options

#: Prefix of the temporary folder written beside DST before it is moved into place.
STAGING_PREFIX = ".ditsam-convert-"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="turn the authors' .pth (or a Hub id / folder) into a self-contained save_pretrained folder",
        description="Load SRC (the authors' DIT .pth with no config, a Hugging Face Hub id or a save_pretrained folder) "
        "and write it as a save_pretrained folder DST (config, safetensors, BERT config + tokenizer, model "
        "card) that loads without network. Prints what was loaded, resized and ignored. An official SAM "
        ".pth (or sam_vit_b / sam_vit_l / sam_vit_h / efficientsam_ti / efficientsam_s by name) plus --text-model "
        "BERT gives an untrained "
        "starting point for `ditsam train ... train.init_checkpoint=DST` (text injection and W_o fresh).",
    )
    parser.add_argument(
        "source",
        metavar="SRC",
        help=SOURCE_HELP
        + "; or an official SAM / EfficientSAM file / sam_vit_b|sam_vit_l|sam_vit_h|efficientsam_ti|efficientsam_s "
        "together with --text-model",
    )
    parser.add_argument("destination", metavar="DST", help="the folder to write (must not exist or be empty)")
    add_source_arguments(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace DST when it exists and is not empty")
    parser.add_argument(
        "--training-data",
        action="append",
        default=None,
        metavar="NAME",
        help="dataset the weights were trained on, for the model card (repeatable, e.g. refcoco)",
    )
    parser.set_defaults(func=run)


def _origin(source: str, revision: str | None) -> str:
    """How the card names where the weights came from: a Hub id (with its revision) or the file/folder name."""
    from ditsam.model.checkpoints import hub_reference

    if not Path(source).expanduser().exists() and hub_reference(source) is not None:
        return source if revision is None else f"{source}@{revision}"
    return Path(source).expanduser().name or source


def _check_destination(destination: Path, source: str, *, overwrite: bool) -> None:
    if destination.exists() and not destination.is_dir():
        raise CLIError(f"DST {destination} is a file; give a folder to write")
    if destination.is_dir() and any(destination.iterdir()) and not overwrite:
        raise CLIError(f"DST {destination} exists and is not empty; pass --overwrite to replace it")
    local = Path(source).expanduser()
    if local.exists():
        source_path, target = local.resolve(), destination.resolve()
        if source_path == target or target in source_path.parents or source_path in target.parents:
            raise CLIError(f"DST {destination} overlaps SRC {source}: write the converted folder elsewhere")


def _same_weights(first: dict, second: dict) -> list[str]:
    """Keys whose tensors differ between two state dicts (missing keys included)."""
    import torch

    keys = set(first) | set(second)
    return sorted(k for k in keys if k not in first or k not in second or not torch.equal(first[k], second[k]))


def convert(
    source: str,
    destination: str | Path,
    *,
    overwrite: bool = False,
    revision: str | None = None,
    injection: str | None = None,
    text_name_or_path: str | None = None,
    training_data: Sequence[str] | None = None,
) -> str:
    """Convert ``source`` into the save_pretrained folder ``destination``; returns the load report's text.

    Raises :class:`CLIError` for a destination that is a file, not empty (unless ``overwrite``) or overlaps
    the source, and when the written folder does not read back with the same weights; loading errors
    (FileNotFoundError, :class:`~ditsam.model.checkpoints.CheckpointError`) pass through.
    """
    from ditsam.model.checkpoints import load_pretrained_with_report
    from ditsam.model.dit import DITSam

    destination = Path(destination).expanduser()
    _check_destination(destination, source, overwrite=overwrite)
    model, report = load_pretrained_with_report(
        DITSam,
        source,
        revision=revision,
        injection=injection,  # type: ignore[arg-type]
        text_name_or_path=text_name_or_path,
        sam_start=True,
    )
    origin = _origin(source, revision)
    notes = [
        f"Converted with `ditsam convert` from `{origin}` ({report.kind} checkpoint): "
        f"{len(report.loaded)} tensors loaded, {len(report.resized)} resized, {len(report.ignored)} ignored."
    ]
    if report.kind == "sam":
        untrained = (
            "W_o (`text_proj`)" if model.config.injection == "none" else "the text injection and W_o (`text_proj`)"
        )
        notes.append(
            f"**Untrained starting point, not a text-prompted model yet.** The SAM weights come from `{origin}`, the "
            f"BERT weights from `{model.config.text.name_or_path}`; {untrained} are freshly initialised "
            f"({len(report.fresh)} tensors) and untrained, so the masks do not follow the sentence. Fine-tune it "
            f"first: `ditsam train EXPERIMENT train.init_checkpoint={destination}` (e.g. the `custom/finetune_ldit` "
            f"experiment on your data)."
        )
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = destination.parent / f"{STAGING_PREFIX}{destination.name}-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    try:
        model.save_pretrained(staging, training_data=training_data, base_model=origin, card_notes=notes)
        written = DITSam.from_pretrained(staging)
        differing = _same_weights(model.state_dict(), written.state_dict())
        if differing:
            raise CLIError(
                f"the written folder does not read back the same weights ({', '.join(differing[:4])}"
                f"{' ...' if len(differing) > 4 else ''}); nothing was written to {destination}"
            )
        if destination.exists():
            shutil.rmtree(destination)
        staging.rename(destination)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return str(report)


def run(args: argparse.Namespace) -> int:
    options = source_options(args)
    report = convert(
        args.source,
        args.destination,
        overwrite=args.overwrite,
        revision=options["revision"],
        injection=options["injection"],
        text_name_or_path=options["text_name_or_path"],
        training_data=args.training_data,
    )
    print(report)
    if report.startswith("sam checkpoint"):
        print(
            f"wrote {args.destination}: an UNTRAINED starting point (text injection and W_o fresh); train it with "
            f"ditsam train EXPERIMENT train.init_checkpoint={args.destination}"
        )
        return 0
    print(
        f"wrote {args.destination}: load it with DITSam.from_pretrained({str(args.destination)!r}) or "
        f"ditsam predict --checkpoint {args.destination} (no network needed)"
    )
    return 0
