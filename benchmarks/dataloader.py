"""Data-loading throughput: samples/s of the training pipeline with 0, 2 and 8 loader workers.

The pipeline measured is the one training uses: reader -> RISDataset (image decode, mask
decode, random sentence, long-side resize, colour jitter, blur, flip, normalise, pad) ->
RISCollator (stacking, batched tokenisation with a tiny word-level BERT tokenizer; the
tokenizer's cost does not depend on the model size).

Datasets:
- ``refshapes``: RefShapes generated into a temporary directory (``--refshapes-images`` train
  images of the tiny preset, 96..160 px PNGs);
- ``refcocog``: the 15-ref RefCOCOg-umd annotation sample (``--refer-root``), all splits, with
  blank grey JPEGs of the sizes its instances.json gives (COCO images, ~640x480); real photos
  decode somewhat slower than flat ones.

Each (dataset, input size, workers) setting iterates ``--samples`` samples (the small datasets
are cycled) in batches of ``--batch-size``; the rate counts from the creation of the loader
iterator (worker start-up included) and, separately, after the first batch (steady state).

    PYTHONPATH=src .venv/bin/python benchmarks/dataloader.py
    PYTHONPATH=src .venv/bin/python benchmarks/dataloader.py --workers 0 2 --samples 128
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from ditsam.data.collate import RISCollator, RISDataset
from ditsam.data.refer import ReferDataset, available_splits
from ditsam.data.refshapes import REFSHAPES_WORDS, generate_refshapes
from ditsam.data.transforms import RISTransform, TransformConfig
from ditsam.model.text import TextTokenizer, build_tiny_bert
from machine import machine_info

REPO = Path(__file__).resolve().parents[1]


class Cycle(Dataset):
    """``length`` items drawn cyclically from ``base`` (tiny fixtures, long measurements)."""

    def __init__(self, base: Dataset, length: int) -> None:
        self.base = base
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        return self.base[index % len(self.base)]


def refshapes_reader(directory: Path, images: int) -> Dataset:
    root = generate_refshapes(
        directory, seed=0, preset="tiny", num_images={"train": images, "val": 0, "testA": 0, "testB": 0}
    )
    return ReferDataset(
        root=root, dataset="refshapes", split_by="unc", split="train", image_dir=root / "images", mode="train"
    )


def refer_reader(refer_root: Path, directory: Path) -> tuple[Dataset, set[str]]:
    """All splits of a REFER annotation folder, over blank images of the annotated sizes, and
    the words of its sentences."""
    instances = json.loads((refer_root / "instances.json").read_text())
    image_dir = directory / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    for image in instances["images"]:
        blank = Image.new("RGB", (image["width"], image["height"]), (124, 116, 104))
        blank.save(image_dir / image["file_name"], quality=90)
    split_by = refer_root.name.split("-")[1] if "-" in refer_root.name else "umd"
    kwargs = dict(root=refer_root.parent, dataset=refer_root.name, split_by=split_by, image_dir=image_dir, mode="train")
    splits = available_splits(root=refer_root.parent, dataset=refer_root.name, split_by=split_by)
    readers = [ReferDataset(**kwargs, split=split) for split in splits]
    words = {word for reader in readers for sentence in reader.iter_sentences() for word in sentence.split()}
    return ConcatDataset(readers), words


def measure(dataset: RISDataset, collator: RISCollator, *, workers: int, batch_size: int) -> dict:
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collator, shuffle=False)
    start = time.perf_counter()
    first = None
    samples = 0
    for batch in loader:
        samples += len(batch)
        first = first or time.perf_counter()
    end = time.perf_counter()
    # No "steady state" rate: with many workers most batches are already prefetched by the
    # time the first one arrives, so a rate after it would flatter them.
    return {
        "samples": samples,
        "seconds": round(end - start, 3),
        "samples_per_s": round(samples / (end - start), 1),
        "first_batch_s": round(first - start, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 8])
    parser.add_argument("--input-sizes", type=int, nargs="+", default=[512, 128], help="canvas sizes S for RefShapes")
    parser.add_argument("--samples", type=int, default=512, help="samples per setting")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--refshapes-images", type=int, default=40, help="RefShapes train images to generate")
    parser.add_argument(
        "--refer-root",
        type=Path,
        default=REPO.parent / "shared" / "fixtures" / "refcocog-umd-sample",
        help="REFER annotation folder (refs(<split_by>).p + instances.json); skipped when absent",
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "dataloader.json")
    args = parser.parse_args(argv)

    results = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        readers = {"refshapes": (refshapes_reader(tmp_path / "refshapes", args.refshapes_images), args.input_sizes)}
        words = set(REFSHAPES_WORDS)
        if (args.refer_root / "instances.json").is_file():
            refer, refer_words = refer_reader(args.refer_root, tmp_path / "refer")
            readers["refcocog"] = (refer, [512])
            words |= refer_words
        else:
            print(f"skipping refcocog: no instances.json in {args.refer_root}", file=sys.stderr)
        tokenizer = TextTokenizer(
            name_or_path=str(build_tiny_bert(tmp_path / "bert", words=sorted(words))), max_tokens=20
        )
        collator = RISCollator(tokenizer)
        for name, (reader, sizes) in readers.items():
            for size in sizes:
                transform = RISTransform.for_training(TransformConfig(input_size=size))
                dataset = RISDataset(Cycle(reader, args.samples), transform=transform, train=True, seed=0)
                for workers in args.workers:
                    row = {
                        "dataset": name,
                        "objects": len(reader),
                        "input_size": size,
                        "workers": workers,
                        "batch_size": args.batch_size,
                    }
                    row.update(measure(dataset, collator, workers=workers, batch_size=args.batch_size))
                    results.append(row)
                    print(
                        f"{name:>10} S={size:<4} workers={workers:<2} {row['samples_per_s']:>8.1f} samples/s "
                        f"(first batch after {row['first_batch_s']:.2f} s)",
                        file=sys.stderr,
                    )

    info = machine_info()
    # A shared machine: other jobs' load changes every number here; recorded for reading them.
    info["load_average_1min_before_after"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    report = {
        "benchmark": "dataloader",
        "machine": info,
        "settings": vars(args) | {"out": str(args.out), "refer_root": str(args.refer_root)},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"\nMachine: {info['cpu_model']}, {info['usable_cores']} usable cores, torch {info['torch']}, "
        f"load average {info['load_average_1min_before_after']} (before, after)"
    )
    print("| dataset | images | S | workers | samples/s | first batch (s) |")
    print("|---|---|---|---|---|---|")
    for row in results:
        kind = "RefShapes 96-160 px PNG" if row["dataset"] == "refshapes" else "RefCOCOg sample, blank COCO-size JPEG"
        print(
            f"| {row['dataset']} | {kind} | {row['input_size']} | {row['workers']} | {row['samples_per_s']:.1f} | "
            f"{row['first_batch_s']:.2f} |"
        )
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
