"""The model-source options shared by ``predict``, ``serve``, ``eval`` and ``export-onnx``.

Every one of them loads through :func:`ditsam.model.checkpoints.load_pretrained`, so each accepts a
``save_pretrained`` folder, a Hugging Face Hub id ``owner/name``, the authors' DIT ``.pth`` or a released
name (``dit-refcoco``, ...).
"""

from __future__ import annotations

import argparse
from typing import Any

SOURCE_HELP = (
    "the model: a checkpoint folder (save_pretrained / runs/NAME/checkpoints/best), a Hugging Face Hub id "
    "owner/name (or owner/name/file.pth), the authors' DIT .pth (no config needed), or a released name "
    "(dit-refcoco, dit-refcoco+, dit-refcocog, dit-grefcoco: downloaded and converted once)"
)
INJECTION_CHOICES = ("layerwise", "e2e", "none")


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """``--revision``, ``--injection`` and ``--text-model``; the source itself is the command's own argument."""
    parser.add_argument("--revision", default=None, help="branch, tag or commit of a Hub id (default: main)")
    parser.add_argument(
        "--injection",
        default=None,
        choices=INJECTION_CHOICES,
        help="for an authors' .pth: how its text enters the ViT (default layerwise = L-DIT, the released weights; "
        "e2e for an E-DIT file, whose keys are the same; none for decoder-only)",
    )
    parser.add_argument(
        "--text-model",
        default=None,
        metavar="NAME_OR_DIR",
        help="for an authors' .pth: the BERT whose config and tokenizer go with it (default: bert-base-uncased, "
        "from the Hugging Face cache or downloaded; HF_HUB_OFFLINE=1 allows the cache only)",
    )


def source_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of ``from_pretrained`` from the parsed options (None where not given)."""
    return {"revision": args.revision, "injection": args.injection, "text_name_or_path": args.text_model}


#: ``--dtype`` values of the commands that run a Segmenter (``predict``, ``serve``).
DTYPE_CHOICES = ("auto", "fp32", "bf16", "fp16", "int8", "openvino")


def add_dtype_argument(parser: argparse.ArgumentParser) -> None:
    """``--dtype``: the Segmenter's precision (see :class:`ditsam.api.Segmenter`)."""
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPE_CHOICES,
        help="auto (default): bf16 autocast on a GPU with bf16 and on a CPU with AMX-BF16 / AVX512-BF16, fp32 "
        "elsewhere (the choice is logged); fp32; bf16: autocast (GPU, also CPU); fp16: autocast (GPU); int8: "
        "the CPU only, text prompts only, through ONNX Runtime (the model is quantised at start, ~1 minute "
        "for ViT-B; pip install 'ditsam[int8]'); openvino: the CPU only, text prompts only, the exported model "
        "compiled by OpenVINO (bf16 on CPUs with bf16 hardware; pip install 'ditsam[openvino]')",
    )
