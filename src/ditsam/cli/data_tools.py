"""``ditsam data validate`` and ``ditsam data stats``.

- ``validate PATH``: every problem of a custom records file -- JSONL, a JSON array such as ``ditsam predict``'s
  ``predictions.json``, or a ``predict --out`` folder (docs/record.md) -- (exit status 1 if there is any);
  ``--min-score X`` checks the records ``data.min_score=X`` trains on.
  ``validate --format refer|grefcoco|simrec|custom [format options] [--split S ...]``: the checks ``ditsam
  train`` runs before its first step, on every split (or the ones named): images exist and their
  headers decode, masks fit their image and are not empty, sentences are not empty. Images are
  read only up to their headers (no pixel decoded), so it stays fast on large datasets.
- ``stats --format F [format options] --split S --out DIR``: objects / sentences / images per
  split, a sentence-length histogram of split S (printed, and drawn to a PNG), and a few sample
  pictures of split S with the mask, box and sentence drawn on them.
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

log = logging.getLogger(__name__)

# Which command-line options each format takes (the keys of its dataset spec).
FORMAT_OPTIONS: dict[str, tuple[str, ...]] = {
    "refer": ("root", "dataset", "split_by", "image_dir", "text_field"),
    "grefcoco": ("root", "dataset", "split_by", "image_dir", "text_field"),
    "simrec": ("root", "dataset", "ann_file", "mask_dir", "image_dir", "image_pattern"),
    "custom": ("path", "min_score"),
}
_ALL_OPTIONS = sorted({name for names in FORMAT_OPTIONS.values() for name in names})
_HISTOGRAM_MAX_WORDS = 30  # longer sentences share the last bin
_SAMPLE_MAX_SIDE = 640


def register(data_subparsers: argparse._SubParsersAction) -> None:
    """Add ``validate`` and ``stats`` to the ``ditsam data`` sub-commands."""
    validate = data_subparsers.add_parser(
        "validate",
        help="list every bad record of a dataset (custom JSONL, REFER, SimREC), as `ditsam train` checks it",
        description="Check a dataset the way `ditsam train` does before its first step and list every bad record: "
        "a custom JSONL file (PATH), or any format with --format and its options.",
    )
    validate.add_argument(
        "jsonl",
        nargs="?",
        type=Path,
        metavar="PATH",
        help="a custom records file (JSONL, or a JSON array such as predictions.json) or a `ditsam predict --out` "
        "folder (or give --format and its options)",
    )
    validate.add_argument(
        "--quick", action="store_true", help="PATH only: read image headers only (misses truncated files)"
    )
    validate.add_argument("--format", choices=sorted(FORMAT_OPTIONS), help="dataset format (instead of PATH)")
    validate.add_argument("--split", action="append", help="--format only: a split to check (repeat; default: all)")
    _add_format_options(validate)
    validate.set_defaults(func=run_validate)

    stats = data_subparsers.add_parser("stats", help="counts, sentence lengths and sample pictures of a dataset")
    stats.add_argument("--format", required=True, choices=sorted(FORMAT_OPTIONS), help="dataset format")
    stats.add_argument("--split", required=True, help="split to histogram and draw samples from")
    stats.add_argument("--out", required=True, type=Path, help="folder for the PNG files")
    stats.add_argument("--samples", type=int, default=4, help="number of sample pictures (default 4)")
    stats.add_argument("--seed", type=int, default=0, help="seed choosing the samples")
    _add_format_options(stats)
    stats.set_defaults(func=run_stats)


def _add_format_options(parser: argparse.ArgumentParser) -> None:
    """The options of every format (:data:`FORMAT_OPTIONS`); :func:`dataset_spec` takes those of one."""
    group = parser.add_argument_group("format options (see `ditsam.data` readers)")
    group.add_argument(
        "--root",
        help="refer: folder of <dataset>/refs(<split_by>).p; grefcoco: folder of <dataset>/grefs(<split_by>).json; simrec: folder of anns/ and masks/",
    )
    group.add_argument("--dataset", help="refer/simrec: dataset name, e.g. refcocog")
    group.add_argument("--split-by", dest="split_by", help="refer: unc, umd, google or berkeley")
    group.add_argument("--image-dir", dest="image_dir", help="refer/simrec: folder of the images")
    group.add_argument("--text-field", dest="text_field", choices=("sent", "raw"), help="refer: sentence text field")
    group.add_argument("--ann-file", dest="ann_file", help="simrec: anns/<dataset>.json")
    group.add_argument("--mask-dir", dest="mask_dir", help="simrec: masks/<dataset> folder")
    group.add_argument("--image-pattern", dest="image_pattern", help="simrec: %%-pattern of image names from iid")
    group.add_argument(
        "--path", help="custom: a records file (JSONL or a JSON array) or a `ditsam predict --out` folder"
    )
    group.add_argument(
        "--min-score",
        dest="min_score",
        type=float,
        help="custom: leave out records whose score is below this, as data.min_score does in training",
    )


def run_validate(args: argparse.Namespace) -> int:
    """Print every problem of the dataset; 0 if there is none, else 1."""
    from ditsam.data.custom import read_custom, validate_custom
    from ditsam.data.records import confident

    if (args.jsonl is None) == (args.format is None):
        raise ValueError("give a custom JSONL file (PATH) or --format with its options, not both or neither")
    if args.format is not None:
        if args.quick:
            raise ValueError("--quick applies to a JSONL PATH; --format checks read image headers only anyway")
        return _validate_format(args)
    if args.split:
        raise ValueError("--split applies with --format; a JSONL PATH is checked whole")
    problems = validate_custom(args.jsonl, check_pixels=not args.quick, min_score=args.min_score)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem(s) in {args.jsonl}")
        return 1
    records, _ = read_custom(args.jsonl)
    kept, below, absent = confident(records, min_score=args.min_score)
    splits = Counter(record.split for record in kept)
    left_out = f" to train on ({below} below --min-score {args.min_score}, {absent} present: false)"
    print(
        f"{args.jsonl}: OK, {len(kept)} record(s){left_out if below or absent else ''}; "
        f"splits: {', '.join(f'{k} {v}' for k, v in sorted(splits.items()))}"
    )
    return 0


def _validate_format(args: argparse.Namespace) -> int:
    """``validate --format``: every split's records through the reader's own check (the one training runs)."""
    from ditsam.data import list_splits, open_dataset

    spec = dataset_spec(args)
    splits = args.split or list_splits(spec)
    problems, checked = [], 0
    for split in splits:
        dataset = open_dataset({**spec, "split": split, "mode": "train"})
        problems += [message for _, message in dataset.validate(progress=True)]
        checked += dataset.num_objects
    for problem in problems:
        print(problem)
    where = f"{args.format} data, split(s) {', '.join(splits)}"
    if problems:
        print(f"{len(problems)} bad record(s) of {checked} in {where}")
        return 1
    print(f"{where}: OK, {checked} record(s) checked")
    return 0


def run_stats(args: argparse.Namespace) -> int:
    """Print counts and the histogram; write the histogram and sample pictures under ``--out``."""
    from ditsam.data import list_splits, open_dataset
    from ditsam.outputs import ensure_writable_folder

    spec = dataset_spec(args)
    rows = []
    for split in list_splits(spec):
        dataset = open_dataset({**spec, "split": split, "mode": "eval"})
        rows.append((split, dataset.num_objects, dataset.num_sentences, dataset.num_images))
    print(format_table(("split", "objects", "sentences", "images"), rows))

    dataset = open_dataset({**spec, "split": args.split, "mode": "eval"})
    lengths = [len(sentence.split()) for sentence in dataset.iter_sentences()]
    bins = length_histogram(lengths)
    print()
    print(describe_lengths(lengths, split=args.split))
    print(format_table(("words", "sentences", ""), [(label, count, "#" * _bar(count, bins)) for label, count in bins]))

    ensure_writable_folder(args.out, what="--out")
    histogram_path = args.out / f"sentence_lengths_{_safe(args.split)}.png"
    draw_histogram(bins, title=f"sentence length (words), split {args.split}").save(histogram_path)
    print()
    print(f"wrote {histogram_path}")
    for path in write_samples(dataset, out=args.out, count=args.samples, seed=args.seed):
        print(f"wrote {path}")
    return 0


def dataset_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The ``open_dataset`` spec from the command-line options of ``--format``."""
    allowed = FORMAT_OPTIONS[args.format]
    stray = [name for name in _ALL_OPTIONS if getattr(args, name) is not None and name not in allowed]
    if stray:
        options = ", ".join("--" + name.replace("_", "-") for name in stray)
        raise ValueError(f"option(s) {options} do not apply to --format {args.format}")
    spec = {name: getattr(args, name) for name in allowed if getattr(args, name) is not None}
    return {"format": args.format, **spec}


def length_histogram(lengths: Sequence[int]) -> list[tuple[str, int]]:
    """(label, count) per sentence length in words, from 1 (0 if any is empty) to the longest (capped)."""
    counts = Counter(min(n, _HISTOGRAM_MAX_WORDS) for n in lengths)
    low, top = (0 if 0 in counts else 1), max(counts, default=0)
    return [(f"{n}+" if n == _HISTOGRAM_MAX_WORDS else str(n), counts.get(n, 0)) for n in range(low, top + 1)]


def describe_lengths(lengths: Sequence[int], *, split: str) -> str:
    """One line: how many sentences, and their mean / median / min / max length."""
    if not lengths:
        return f"sentence length (words), split {split!r}: no sentences"
    return (
        f"sentence length (words), split {split!r}: {len(lengths)} sentences, mean {statistics.mean(lengths):.2f}, "
        f"median {statistics.median(lengths):g}, min {min(lengths)}, max {max(lengths)}"
    )


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned plain-text table."""
    cells = [[str(v) for v in header]] + [[str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells)


def draw_histogram(bins: Sequence[tuple[str, int]], *, title: str, size: tuple[int, int] = (720, 360)) -> Image.Image:
    """Bar chart of ``bins`` drawn with PIL (no plotting library needed)."""
    width, height = size
    left, right, top, bottom = 50, 20, 30, 40
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.text((left, 8), title, fill="black", font=font)
    peak = max((count for _, count in bins), default=0) or 1
    plot_w, plot_h = width - left - right, height - top - bottom
    draw.line([(left, top), (left, top + plot_h), (left + plot_w, top + plot_h)], fill="black")
    draw.text((4, top - 4), str(peak), fill="black", font=font)
    draw.text((4, top + plot_h - 8), "0", fill="black", font=font)
    step = plot_w / max(len(bins), 1)
    label_every = max(1, len(bins) // 15)  # keep the x labels from overlapping
    for i, (label, count) in enumerate(bins):
        x0 = left + i * step + 1
        bar_h = round(plot_h * count / peak)
        if bar_h:
            draw.rectangle([x0, top + plot_h - bar_h, x0 + max(step - 2, 1), top + plot_h], fill=(70, 110, 180))
        if i % label_every == 0 or i == len(bins) - 1:
            draw.text((x0, top + plot_h + 4), label, fill="black", font=font)
    draw.text((left + plot_w // 2 - 20, height - 16), "words", fill="black", font=font)
    return image


def write_samples(dataset: Any, *, out: Path, count: int, seed: int) -> list[Path]:
    """Draw ``count`` random items (mask, box, sentence) to PNGs; unreadable items are skipped."""
    from ditsam.data import DataError, load_sample_image

    rng = random.Random(seed)
    indices = rng.sample(range(len(dataset)), k=min(count, len(dataset)))
    written = []
    for rank, index in enumerate(indices):
        try:
            sample = dataset[index]
            image = load_sample_image(sample)
        except DataError as error:
            log.warning("sample %d skipped: %s", index, error)
            continue
        path = out / f"sample_{rank:02d}_ref{sample.ref_id}.png"
        render_sample(image, sample.mask, sample.bbox, sample.sentences[0]).save(path)
        written.append(path)
    return written


def render_sample(image: Image.Image, mask: np.ndarray, bbox: Sequence[float], sentence: str) -> Image.Image:
    """The image with the mask tinted red, the box in yellow and the sentence on a band above."""
    pixels = np.asarray(image, dtype=np.float32)
    tint = np.array([255.0, 0.0, 0.0])
    pixels[mask] = 0.5 * pixels[mask] + 0.5 * tint
    picture = Image.fromarray(pixels.astype(np.uint8))
    scale = min(1.0, _SAMPLE_MAX_SIDE / max(picture.size))
    if scale < 1.0:
        picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))))
    x, y, w, h = (v * scale for v in bbox)
    ImageDraw.Draw(picture).rectangle([x, y, x + w, y + h], outline=(255, 220, 0), width=2)
    lines = textwrap.wrap(sentence, width=max(20, picture.width // 7)) or [""]
    band = 14 * len(lines) + 8
    canvas = Image.new("RGB", (picture.width, picture.height + band), "black")
    canvas.paste(picture, (0, band))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for i, line in enumerate(lines):
        draw.text((4, 4 + 14 * i), line, fill="white", font=font)
    return canvas


def _bar(count: int, bins: Sequence[tuple[str, int]], width: int = 40) -> int:
    peak = max((c for _, c in bins), default=0)
    return round(width * count / peak) if peak else 0


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
