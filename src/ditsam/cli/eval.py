"""``ditsam eval CHECKPOINT --data ...``: score a checkpoint on one or more splits."""

from __future__ import annotations

import argparse
from pathlib import Path

from ditsam.cli.source_args import SOURCE_HELP, add_source_arguments, source_options
from ditsam.defaults import MASK_THRESHOLD


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint (oIoU, mIoU, P@X per split)",
        description="Evaluate a model (a checkpoint folder saved by training or save_pretrained, a Hub id or the "
        "authors' .pth) on the data of an experiment config, or of the experiment stored in a training "
        "run's checkpoint folder.",
    )
    parser.add_argument("checkpoint", help=SOURCE_HELP)
    add_source_arguments(parser)
    parser.add_argument(
        "--data",
        default=None,
        help="experiment name or YAML whose `data` section to use (default: the experiment saved with the checkpoint)",
    )
    parser.add_argument(
        "overrides", nargs="*", help="dotted overrides of the data/train sections, e.g. data.eval_splits=[testA]"
    )
    parser.add_argument("--splits", nargs="+", default=None, help="splits to evaluate (default: data.eval_splits)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--threshold", type=float, default=None, help=f"sigmoid threshold (default: train.threshold, {MASK_THRESHOLD})"
    )
    parser.add_argument(
        "--out",
        default=None,
        help="folder for results.json / results.md (default: next to the "
        "checkpoint; runs/eval/OWNER--NAME for a Hub id)",
    )
    parser.add_argument(
        "--dump-masks",
        choices=("none", "png", "rle"),
        default="none",
        help="also write every predicted mask as PNG files or one COCO-RLE JSON per split",
    )
    parser.add_argument(
        "--protocol",
        choices=("exact", "reference"),
        default="exact",
        help="exact (default): threshold after restoring the logits to the original size, P@X with >=; "
        "reference: as the authors' test code (threshold on the canvas, the binary mask resized "
        "bilinearly, any value > 0 foreground, P@X with a strict >) to compare with the paper",
    )
    parser.add_argument(
        "--prompt",
        choices=("text", "points", "box"),
        default="text",
        help="text (default): the sentences; box: the ground-truth box; points: 5 random clicks on the "
        "ground-truth mask (Table 4 of the paper; seeded per sentence, so reruns score the same clicks)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="auto (default): bf16 autocast on a GPU with bf16 and on a CPU with AMX-BF16 / AVX512-BF16, "
        "fp32 elsewhere; results.json records the precision used",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ditsam.engine.run_eval import evaluate_checkpoint

    results, out = evaluate_checkpoint(
        args.checkpoint,
        **source_options(args),
        data=args.data,
        overrides=args.overrides,
        splits=args.splits,
        batch_size=args.batch_size,
        threshold=args.threshold,
        out=Path(args.out) if args.out else None,
        dump_masks=args.dump_masks,
        device=args.device,
        protocol=args.protocol,
        dtype=args.dtype,
        prompt=args.prompt,
    )
    from ditsam.distributed import leave_process_group

    leave_process_group()  # under a launcher every process gets here; gloo aborts one whose peer left first
    from ditsam.metrics import format_table

    print(format_table(results, title=f"## {args.checkpoint} ({args.protocol} protocol, {args.prompt} prompts)"))
    print(f"results written to {out}")
    return 0 if results else 1
