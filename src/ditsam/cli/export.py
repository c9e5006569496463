"""``ditsam export-onnx --checkpoint C --out model.onnx``: the whole model as one ONNX file.

Inputs of the graph: ``image`` (B, 3, S, S) normalised canvas, ``input_ids`` (B, T) int64,
``attention_mask`` (B, T) int64 (or bool with ``--mask-dtype bool``); outputs: ``masks``
(B, 1, S, S) logits and ``iou`` (B, 1). See :mod:`ditsam.export`. After writing, the file is run
with onnxruntime and compared with PyTorch (``--no-verify`` skips that).

``--quantize int8`` writes ONNX Runtime's int8 model instead (:mod:`ditsam.int8`; inputs int64 attention
mask): the one ``Segmenter(dtype="int8")`` runs, taken from (or built into) the int8 cache
(:mod:`ditsam.int8_cache`), so that later int8 segmenters of the same weights load it at once. It is loaded
with onnxruntime, not compared with PyTorch (int8 differs by design; ``benchmarks/int8_cpu.py`` measures
how much).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from ditsam.cli.errors import CLIError
from ditsam.cli.source_args import SOURCE_HELP, add_source_arguments, source_options
from ditsam.outputs import OutputFolderError, describe_write_failure, ensure_writable_folder

#: File names of model checkpoints: an --out like these is most likely the checkpoint given in the wrong place,
#: and writing an ONNX graph over it would destroy it.
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export-onnx",
        help="export a checkpoint to ONNX (image + tokens -> mask logits, IoU)",
        description="Export a model (a checkpoint folder, a Hub id or the authors' .pth) to one ONNX model and check "
        "it against PyTorch with onnxruntime.",
    )
    parser.add_argument("--checkpoint", required=True, help=SOURCE_HELP)
    add_source_arguments(parser)
    parser.add_argument("--out", required=True, help="the .onnx file to write")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument(
        "--mask-dtype", default="int64", choices=("int64", "bool"), help="type of the attention_mask input"
    )
    parser.add_argument(
        "--quantize",
        choices=("int8",),
        default=None,
        help="write the int8 model of dtype='int8' (ONNX Runtime dynamic quantisation), cached for later use",
    )
    parser.add_argument(
        "--int8-cache",
        default=None,
        metavar="DIR",
        help="with --quantize: the int8 cache folder (default $DITSAM_INT8_CACHE, else $TORCH_HOME/hub/ditsam-int8)",
    )
    parser.add_argument("--no-verify", action="store_true", help="skip the onnxruntime comparison")
    parser.add_argument(
        "--atol", type=float, default=1e-3, help="largest accepted |onnxruntime - torch| (default 1e-3)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
    except ImportError:
        raise CLIError("export-onnx needs the onnx package: pip install 'ditsam[export]' (onnx, onnxruntime)") from None
    from ditsam.export import export_onnx
    from ditsam.model.dit import DITSam

    out = _checked_out(Path(args.out))
    if args.quantize is not None:
        return _quantized(args, out)
    if args.int8_cache is not None:
        raise CLIError("--int8-cache applies with --quantize int8")
    model = DITSam.from_pretrained(args.checkpoint, **source_options(args))
    try:
        report = export_onnx(
            model,
            out,
            opset=args.opset,
            attention_mask_dtype=args.mask_dtype,
            verify=not args.no_verify,
            atol=args.atol,
        )
    except OSError as error:  # a full disk, or the folder went away meanwhile
        raise CLIError(f"cannot write {out}: {describe_write_failure(error, out.parent)}") from error
    except RuntimeError as error:
        raise CLIError(str(error)) from error
    size = model.config.image_size
    print(f"wrote {report}")
    print(
        f"inputs: image (B, 3, {size}, {size}) float32 normalised canvas, input_ids (B, T) int64, "
        f"attention_mask (B, T) {args.mask_dtype}; outputs: masks (B, M, {size}, {size}) logits, iou (B, M)"
    )
    return 0


def _quantized(args: argparse.Namespace, out: Path) -> int:
    """``--quantize int8``: the cached int8 model (built once) copied to ``--out``, loaded with onnxruntime."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise CLIError("--quantize int8 needs onnxruntime: pip install 'ditsam[int8]' (onnx, onnxruntime)") from None
    if args.mask_dtype != "int64" or args.opset != 17:
        raise CLIError("--quantize int8 writes the int8 model dtype='int8' runs: int64 attention mask, opset 17")
    from ditsam.int8 import OnnxRunner, cached_int8_model
    from ditsam.int8_cache import MODEL_FILE
    from ditsam.model.dit import DITSam

    model = DITSam.from_pretrained(args.checkpoint, **source_options(args))
    try:
        cached = cached_int8_model(model, cache_dir=args.int8_cache, check=OnnxRunner)
        for part in sorted(cached.parent.iterdir()):  # the model, and any external-data file it names
            if part.name == MODEL_FILE:
                shutil.copyfile(part, out)
            elif part.suffix != ".json":
                shutil.copyfile(part, out.parent / part.name)
        OnnxRunner(out)
    except OSError as error:
        raise CLIError(f"cannot write {out}: {describe_write_failure(error, out.parent)}") from error
    size = model.config.image_size
    print(f"wrote {out} (int8; cached as {cached})")
    print(
        f"inputs: image (B, 3, {size}, {size}) float32 normalised canvas, input_ids (B, T) int64, "
        f"attention_mask (B, T) int64; outputs: masks (B, M, {size}, {size}) logits, iou (B, M)"
    )
    return 0


def _checked_out(out: Path) -> Path:
    """``--out`` checked before the model loads: an .onnx file path (not a folder, not a checkpoint's
    name) in a folder this process can write."""
    if out.is_dir():
        raise CLIError(f"--out {out} is a folder; give the .onnx file to write")
    if out.suffix.lower() in CHECKPOINT_SUFFIXES:
        raise CLIError(
            f"--out {out} has a checkpoint's suffix {out.suffix}: export-onnx writes an ONNX model there (and would "
            f"replace that file). Give an .onnx path, e.g. --out {out.with_suffix('.onnx')}; the model to export is "
            f"--checkpoint"
        )
    try:
        ensure_writable_folder(out.parent, what="the folder of --out")
    except OutputFolderError as error:
        raise CLIError(str(error)) from None
    return out
