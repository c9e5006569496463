"""``ditsam export-onnx --checkpoint C --out model.onnx``: the whole model as one ONNX file.

Inputs of the graph: ``image`` (B, 3, S, S) normalised canvas, ``input_ids`` (B, T) int64,
``attention_mask`` (B, T) int64 (or bool with ``--mask-dtype bool``); outputs: ``masks``
(B, 1, S, S) logits and ``iou`` (B, 1). See :mod:`ditsam.export`. After writing, the file is run
with onnxruntime and compared with PyTorch (``--no-verify`` skips that).
"""

from __future__ import annotations

import argparse
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
