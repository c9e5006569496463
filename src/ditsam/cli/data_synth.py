"""``ditsam data synth``: generate the RefShapes synthetic benchmark (REFER layout), or its generalized
variant gRefShapes (``--generalized``: sentences naming several shapes or none, gRefCOCO layout)."""

from __future__ import annotations

import argparse
import os


def _split_count(text: str) -> tuple[str, int]:
    split, _, count = text.partition("=")
    try:
        return split, int(count)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SPLIT=COUNT (e.g. train=100), got {text!r}") from None


def register(data_subparsers: argparse._SubParsersAction) -> None:
    from ditsam.data.refshapes import PRESETS, SPLITS

    parser = data_subparsers.add_parser(
        "synth",
        help="generate RefShapes, the synthetic referring benchmark",
        description="Write RefShapes in the REFER layout: OUT/refshapes/refs(unc).p, OUT/refshapes/instances.json, "
        "OUT/images/*.png. Read it with dataset=refshapes, split_by=unc, root=OUT, image_dir=OUT/images. With "
        "--generalized, write gRefShapes in the gRefCOCO layout (OUT/grefshapes/grefs(unc).json): sentences may "
        "name several shapes or none; read it with format=grefcoco, dataset=grefshapes.",
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed: byte-identical files)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="dataset size (default: tiny)")
    parser.add_argument(
        "--images",
        type=_split_count,
        action="append",
        default=[],
        metavar="SPLIT=N",
        help=f"override the preset's image count of one split ({', '.join(SPLITS)}); repeatable",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes rendering images (default: the CPU count); the output does not depend on it",
    )
    parser.add_argument(
        "--generalized",
        action="store_true",
        help="gRefShapes: also sentences naming several shapes or none (gRefCOCO layout)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace RefShapes files already in --out")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ditsam.data.refshapes import generate_refshapes, read_split_counts
    from ditsam.outputs import ensure_writable_folder

    ensure_writable_folder(args.out, what="--out")  # a file or a read-only folder: one line, before any work
    if args.generalized:
        from ditsam.data.grefshapes import DATASET_NAME, generate_grefshapes

        generate, name, dataset, read_hint = (
            generate_grefshapes,
            "gRefShapes",
            DATASET_NAME,
            "format=grefcoco dataset=grefshapes",
        )
    else:
        generate, name, dataset, read_hint = (
            generate_refshapes,
            "RefShapes",
            "refshapes",
            "dataset=refshapes split_by=unc",
        )
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    try:
        root = generate(
            args.out,
            seed=args.seed,
            preset=args.preset,
            num_images=dict(args.images),
            workers=workers,
            overwrite=args.overwrite,
            progress=True,
        )
    except FileExistsError as error:
        # A ValueError: reported as one line by ditsam.cli.main, however it was started.
        raise ValueError(f"{args.out} already holds {name} files; pass --overwrite to replace them") from error
    counts = read_split_counts(root, dataset=dataset)
    print(f"{name} ({args.preset}, seed {args.seed}) written to {root}")
    print(f"  annotations: {root / dataset}    images: {root / 'images'}")
    print(f"  {'split':<6} {'images':>7} {'refs':>8} {'sentences':>10}")
    for split, entry in counts.items():
        print(f"  {split:<6} {entry['images']:>7} {entry['refs']:>8} {entry['sentences']:>10}")
    print(f"  read with: {read_hint} root={root} image_dir={root / 'images'}")
    return 0
