"""``ditsam predict`` over a folder of images: images/s with 1 and 2 processes on this machine.

    PYTHONPATH=src python benchmarks/predict_scale.py                  # ViT-B L-DIT 512, 16 images (~5 min on 2 cores)
    PYTHONPATH=src python benchmarks/predict_scale.py --model tiny     # the tests' tiny model: a quick check

The model: the packaged ``refcoco/ldit`` (ViT-B, 512 px, L-DIT) with random weights and a BERT-base-sized
random text encoder (nothing downloaded), saved once with ``save_pretrained``; ``--model tiny`` is a
2-block, 64 px model. Images: ``--images`` 640x480 JPEGs (smooth random colour fields, ~COCO-sized), one
sentence for all (``--images DIR --text``), the command's default outputs (mask PNGs and overlays).

Settings, each the real command line in a fresh process, one after the other:

- ``1 process``: ``python -m ditsam.cli.main predict`` with every core for torch's threads, DataLoader
  workers at the command's default;
- ``1 process, --workers 0``: the same, images decoded in the process;
- ``1 process, 1 thread``: one torch thread (on a busy machine, torch's threads wait on each other);
- ``2 processes``: ``accelerate launch --multi_gpu --num_processes 2 ... --device cpu`` (torchrun under
  the hood, gloo; accelerate's ``--cpu`` alone would start one process), one torch thread per process.

images/s is what the command prints for its prediction phase ("this run: N prediction(s) in T s"): from
the moment every process holds its model to the merged ``predictions.json``; start-up and model loading
are reported apart (the whole command's wall time). Results: ``benchmarks/results/predict_scale_cpu.json``
with the machine and the load average before and after (a shared machine's other jobs slow every setting).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from machine import machine_info

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results" / "predict_scale_cpu.json"
SENTENCE = "the man on the left"
IMAGE_SIZE = (640, 480)  # width, height: a typical COCO image
#: Side of the random colour grid blown up into each image: smooth fields compress like photos, noise does not.
FIELD_GRID = 8
WORDS = "the a man woman dog car on left right red blue big small".split()
#: What ``ditsam predict`` prints about its prediction phase.
RATE_LINE = re.compile(r"this run: (\d+) prediction\(s\) in ([\d.]+) s, ([\d.]+) pairs/s \((\d+) process")


def build_model(kind: str, folder: Path) -> Path:
    """Save the benchmark's model under ``folder``; returns the checkpoint folder."""
    import torch

    from ditsam.model.dit import DITSam
    from ditsam.model.text import build_tiny_bert

    torch.manual_seed(0)
    if kind == "vitb":
        from ditsam.engine.config import load_experiment

        bert = build_tiny_bert(
            folder / "bert", words=WORDS, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072
        )
        config = load_experiment(
            "refcoco/ldit", {"model.text.name_or_path": str(bert), "model.injection_options.zero_init": False}
        ).model
    else:
        sys.path.insert(0, str(REPO / "tests"))
        from helpers import WORDS as TINY_WORDS
        from helpers import tiny_config

        config = tiny_config(
            build_tiny_bert(folder / "bert", words=TINY_WORDS, hidden_size=32, num_layers=2),
            injection_options=dict(zero_init=False),
        )
    return DITSam(config).save_pretrained(folder / "model")


def write_images(folder: Path, count: int) -> Path:
    """``count`` JPEGs of IMAGE_SIZE in ``folder``."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        field = rng.integers(0, 256, size=(FIELD_GRID, FIELD_GRID, 3), dtype=np.uint8)
        Image.fromarray(field).resize(IMAGE_SIZE, Image.BICUBIC).save(folder / f"{index:04d}.jpg", quality=90)
    return folder


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_setting(
    name: str,
    *,
    processes: int,
    threads: int,
    workers: int | None,
    checkpoint: Path,
    images: Path,
    out: Path,
    batch_size: int,
) -> dict[str, object]:
    """One ``ditsam predict`` command; its rate line and wall time."""
    predict = [
        "-m",
        "ditsam.cli.main",
        "predict",
        "--checkpoint",
        str(checkpoint),
        "--images",
        str(images),
        "--text",
        SENTENCE,
        "--out",
        str(out),
        "--batch-size",
        str(batch_size),
        "--device",
        "cpu",
    ]
    if workers is not None:
        predict += ["--workers", str(workers)]
    if processes == 1:
        command = [sys.executable, *predict]
    else:
        command = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            str(processes),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(_free_port()),
            *predict,
        ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])),
    }
    began = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - began
    match = RATE_LINE.search(completed.stdout)
    if completed.returncode != 0 or match is None:
        raise RuntimeError(
            f"{name}: exit status {completed.returncode}\n{completed.stdout[-2000:]}\n{completed.stderr[-3000:]}"
        )
    made, seconds, rate, reported = int(match[1]), float(match[2]), float(match[3]), int(match[4])
    assert reported == processes, (name, reported)
    return {
        "setting": name,
        "processes": processes,
        "threads_per_process": threads,
        "workers_per_process": "default" if workers is None else workers,
        "images": made,
        "predict_seconds": seconds,
        "images_per_s": rate,
        "command_wall_s": round(wall, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("vitb", "tiny"), default="vitb")
    parser.add_argument("--images", type=int, default=16, help="images to label (default 16)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO / "src"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    settings = [  # name, processes, torch threads per process, --workers (None: the command's default)
        ("1 process", 1, cores, None),
        ("1 process, --workers 0", 1, cores, 0),
        ("1 process, 1 thread", 1, 1, None),
        ("2 processes", 2, max(1, cores // 2), None),
    ]
    report: dict[str, object] = {
        "machine": machine_info(),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "results": [],
    }
    with tempfile.TemporaryDirectory(prefix="ditsam-predict-scale-") as tmp:
        folder = Path(tmp)
        checkpoint = build_model(args.model, folder)
        images = write_images(folder / "images", args.images)
        for index, (name, processes, threads, workers) in enumerate(settings):
            row = run_setting(
                name,
                processes=processes,
                threads=threads,
                workers=workers,
                checkpoint=checkpoint,
                images=images,
                out=folder / f"out{index}",
                batch_size=args.batch_size,
            )
            print(json.dumps(row), flush=True)
            report["results"].append(row)  # type: ignore[union-attr]
    report["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print("| setting | processes x threads | images | s | images/s | command wall s |\n|---|---|---|---|---|---|")
    for row in report["results"]:  # type: ignore[union-attr]
        print(
            f"| {row['setting']} | {row['processes']} x {row['threads_per_process']} | {row['images']} | "
            f"{row['predict_seconds']} | {row['images_per_s']} | {row['command_wall_s']} |"
        )
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
