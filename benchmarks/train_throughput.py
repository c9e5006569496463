"""Training throughput: samples/s, peak memory and the share of step time spent waiting for data.

    python benchmarks/train_throughput.py [--experiment refshapes/ldit] [--steps 20] [key=value ...]

Runs ``--steps`` optimiser steps of an experiment through the real Trainer (data loader, forward,
backward, clipping, Adam, EMA) and records, per step, the time spent waiting for the next batch
and the time of the step. Writes benchmarks/results/train_throughput_<device>.json. On a GPU,
also reports model FLOP utilisation from the analytic ViT forward FLOPs (x3 for training).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from ditsam.config import parse_override
from ditsam.engine.config import load_experiment
from ditsam.engine.train import Trainer
from machine import machine_info


def vit_forward_flops(config) -> float:
    """Matmul FLOPs of the ViT forward per sample (2 * MACs), text tokens included."""
    size = config.model.size
    tokens = config.model.grid**2 + (
        config.model.text.max_tokens if config.model.injection in ("e2e", "layerwise") else 0
    )
    width = size.embed_dim
    per_block = (
        2 * tokens * (4 * width * width + 2 * width * int(width * config.model.mlp_ratio)) + 2 * 2 * tokens**2 * width
    )
    return float(size.depth * per_block)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="refshapes/ldit")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--data", default="data/refshapes")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (H100 bf16: ~800)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    overrides = {"data.root": args.data, "train.ema_decay": 0.999, **dict(parse_override(o) for o in args.overrides)}
    config = load_experiment(args.experiment, overrides)
    trainer = Trainer(config, run_dir=Path("runs/throughput"), overwrite=True, progress=False)  # a scratch folder
    loader = iter(trainer._epoch_loader(0, 0))
    waits, steps = [], []
    device = trainer.accelerator.device
    for step in range(args.warmup + args.steps):
        started = time.perf_counter()
        try:
            batch = next(loader)
        except StopIteration:
            loader = iter(trainer._epoch_loader(step, 0))
            batch = next(loader)
        fetched = time.perf_counter()
        trainer._optimizer_step([batch])
        if device.type == "cuda":
            torch.cuda.synchronize()
        done = time.perf_counter()
        if step >= args.warmup:
            waits.append(fetched - started)
            steps.append(done - started)
    batch_size = config.train.micro_batch_size
    total = sum(steps)
    record = {
        "experiment": args.experiment,
        "overrides": overrides,
        "machine": machine_info(),
        "device": str(device),
        "mixed_precision": trainer.mixed_precision,
        "micro_batch_size": batch_size,
        "steps": args.steps,
        "samples_per_s": batch_size * args.steps / total,
        "data_wait_share": sum(waits) / total,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "peak_cuda_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
        "vit_forward_gflop_per_sample": vit_forward_flops(config) / 1e9,
    }
    if args.peak_tflops:
        achieved = 3 * vit_forward_flops(config) * record["samples_per_s"]
        record["mfu_vit_only"] = achieved / (args.peak_tflops * 1e12)
    out = Path("benchmarks/results") / f"train_throughput_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
