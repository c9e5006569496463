"""GPU suite: every speed figure of the model in one command, for a short slot of GPU time.

    PYTHONPATH=src python benchmarks/gpu_suite.py            # <= 8 minutes on one H100 / H200
    PYTHONPATH=src python benchmarks/gpu_suite.py --smoke    # tiny sizes on the CPU, < 1 minute (a test runs it)

Needs torch, transformers, accelerate (and nothing of this package but its source: not installed,
no pycocotools). Random weights, a full-size random BERT (bert-base's config, nothing downloaded), the
packaged ``refcoco/*`` models (ViT-B, 512 px, every block global, 20 text tokens). Sections, in order
of priority (each records its numbers as it goes; a failing or overrunning section is recorded with
its error and the suite goes on; a global deadline, ``--budget``, skips what no longer fits):

- ``environment``: device, driver, torch / CUDA / cuDNN versions, clocks (nvidia-smi), the bf16
  matmul rate measured on this card (the MFU reference beside the datasheet's);
- ``latency``: batch 1, L-DIT, whole ``DITSam`` forward (BERT, ViT, decoder, upsampling) and the image
  encoder alone, in fp32, TF32 and bf16 autocast (eager); E-DIT and the decoder-only baseline in bf16;
- ``agreement``: bf16 vs fp32 logits of the same weights and inputs (max / mean |diff|, mask IoU at the
  0.35 threshold), and the two text-padding forms of the attention against each other;
- ``text_cost``: the image encoder alone, plain SAM (no text) vs E-DIT vs L-DIT with 20 real text
  tokens, bf16, batch 1 and the throughput batch: what the text tokens cost;
- ``attention``: which SDPA kernel each attention call runs (profiler op names) and attention's share
  of the encoder's device time, for both text-padding forms (``folded``: the padding inside the
  widened heads, no mask; ``mask``: a broadcast key mask), and the encoder timed with each SDPA
  backend forced;
- ``throughput``: images/s of the whole model at the throughput batch (64), bf16, then larger batches
  until memory or time runs out;
- ``backbones``: SAM ViT-B against EfficientSAM-Ti / -S L-DIT: ``Segmenter.predict`` of a photo with
  ``dtype="auto"``, batch-1 bf16 latency, images/s at the throughput batch (``gpu_backbones.py``);
- ``training``: the engine's optimiser step (:class:`ditsam.engine.step.TrainingStep`: bf16 autocast,
  BCE loss, backward, clipping, fused Adam, EMA) at batch 32 and 64, with and without gradient
  checkpointing: samples/s, FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode`` (what the
  kernels execute, the widened attention heads included), MFU against the datasheet and the measured
  matmul rate, peak memory (``torch.cuda.max_memory_allocated``), host-device syncs in one step;
- ``compile``: ``torch.compile`` of the whole model, default mode and ``reduce-overhead`` (CUDA graphs),
  batch 1 latency, and the default mode at the throughput batch;
- ``large``: ViT-L and ViT-H L-DIT: batch-1 latency, batch-32 throughput, one training step.

Results: ``<out-dir>/gpu_<device>.json`` and ``.md`` (``_smoke`` appended with ``--smoke``), rewritten
after every section, with the goals of issue 13 and the ratio to each.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from gpu_backbones import section_backbones
from gpu_harness import MAX_TOKENS, Models, encoder_call, in_precision, measure, model_call, precision, synchronize
from gpu_report import goals, markdown
from smoke_models import SMOKE_BERT, SMOKE_SAM

HERE = Path(__file__).resolve().parent

THRESHOLD = 0.35  # the paper's mask threshold on sigmoid(logits)
LATENCY_LENGTH = 8  # one sentence of 6 words at batch 1 (no padding after the all-[PAD] columns go)
GIB = 2**30
# Dense bf16 tensor-core peak from the vendors' datasheets, TFLOP/s (SXM parts; MFU's usual reference).
DATASHEET_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "H800": 989.4, "A100": 312.0, "L40S": 362.0, "B200": 2250.0}


# ---------------------------------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Scale:
    """The sizes of one run."""

    # Overrides of the packaged refcoco/* model config (beyond the text model).
    model: dict[str, Any]
    # BertConfig keyword arguments ({} = bert-base).
    bert: dict[str, Any]
    # Batch of the throughput, text-cost and compiled-throughput measurements.
    throughput_batch: int
    # Larger inference batches tried after it, in order, until memory or time runs out.
    max_batches: tuple[int, ...]
    # Training batches (one optimiser step each, no accumulation).
    train_batches: tuple[int, ...]
    # Batch of the attention profile and the agreement check.
    probe_batch: int
    # Timed calls per latency measurement (after WARMUP_CALLS) and per throughput measurement.
    latency_iters: int
    throughput_iters: int
    # Timed optimiser steps per training setting (after one warm-up step).
    train_steps: int
    # Matrix side of the matmul-rate measurement.
    matmul_n: int
    # The "large" section: (name, overrides of the model config, training batch).
    large: tuple[tuple[str, dict[str, Any], int], ...]
    # The "backbones" section: (name, overrides of the model config); ratios are to the first.
    backbones: tuple[tuple[str, dict[str, Any]], ...]
    # Global time budget in seconds (--budget overrides).
    budget_s: float


FULL = Scale(
    model={},
    bert={},
    throughput_batch=64,
    max_batches=(128, 256, 512, 1024, 2048),
    train_batches=(32, 64),
    probe_batch=8,
    latency_iters=50,
    throughput_iters=10,
    train_steps=5,
    matmul_n=8192,
    large=(("vit_l", {"backbone": "vit_l"}, 16), ("vit_h", {"backbone": "vit_h"}, 16)),
    backbones=(
        ("vit_b", {}),
        ("efficientsam_ti", {"backbone": "efficientsam_ti"}),
        ("efficientsam_s", {"backbone": "efficientsam_s"}),
    ),
    budget_s=420.0,
)
SMOKE = Scale(
    model=SMOKE_SAM,
    bert=SMOKE_BERT,
    throughput_batch=4,
    max_batches=(8,),
    train_batches=(2,),
    probe_batch=2,
    latency_iters=3,
    throughput_iters=2,
    train_steps=1,
    matmul_n=128,
    large=(("tiny_wide", {**SMOKE_SAM, "embed_dim": 48, "num_heads": 3}, 2),),
    backbones=(("tiny_sam", {}), ("tiny_efficientsam", {"family": "efficientsam"})),
    budget_s=50.0,
)
# Section name -> (own time box in seconds at full scale, least time worth starting it with).
SECTION_BUDGETS = {
    "environment": (30, 0),
    "latency": (60, 20),
    "agreement": (20, 5),
    "text_cost": (40, 10),
    "attention": (45, 10),
    "throughput": (60, 10),
    "backbones": (40, 10),
    "training": (90, 30),
    "compile": (150, 60),
    "large": (120, 30),
}


class SectionTimeout(Exception):
    """A section ran out of its time box."""


# ---------------------------------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------------------------------
class Suite:
    """Runs sections under a global deadline, recording each one's results or error, writing as it goes."""

    def __init__(self, args: argparse.Namespace, scale: Scale, device: torch.device, folder: Path) -> None:
        self.args, self.scale, self.device = args, scale, device
        self.models = Models(model=scale.model, bert=scale.bert, device=device, folder=folder)
        self.started = time.monotonic()
        self.deadline = self.started + (args.budget if args.budget is not None else scale.budget_s)
        # Section time boxes scale with the budget (the smoke run's are a ninth of the real ones).
        self.time_scale = (self.deadline - self.started) / FULL.budget_s
        slug = device_slug(device)
        stem = f"gpu_{slug}{'_smoke' if args.smoke else ''}"
        self.json_path = args.out_dir / f"{stem}.json"
        self.md_path = args.out_dir / f"{stem}.md"
        self.results: dict[str, Any] = {
            "suite": "gpu_suite",
            "smoke": args.smoke,
            "device": str(device),
            "sections": {},
        }

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, body: Callable[["Suite", dict[str, Any]], None]) -> None:
        own, least = SECTION_BUDGETS[name]
        own, least = own * self.time_scale, least * self.time_scale
        record: dict[str, Any] = {}
        self.results["sections"][name] = record
        if self.left() < least:
            record["status"] = f"skipped: {self.left():.0f} s left of the budget, {least:.0f} s needed"
            print(f"[{name}] {record['status']}", flush=True)
            self.write()
            return
        box = max(1.0, min(own, self.left()))
        print(f"[{name}] start ({box:.0f} s box, {self.left():.0f} s left)", flush=True)
        began = time.monotonic()
        previous = signal.signal(signal.SIGALRM, _raise_timeout)
        signal.setitimer(signal.ITIMER_REAL, box)
        try:
            body(self, record)
            record["status"] = "ok"
        except SectionTimeout:
            record["status"] = f"timeout after {box:.0f} s (partial results kept)"
        except Exception as error:  # one section's failure (OOM, compile error, ...) must not stop the suite
            record["status"] = "error"
            record["error"] = f"{type(error).__name__}: {error}"[:2000]
            record["traceback"] = traceback.format_exc()[-4000:]
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        record["seconds"] = round(time.monotonic() - began, 1)
        print(f"[{name}] {record['status']} in {record['seconds']} s", flush=True)
        gc.collect()
        if self.device.type == "cuda":
            with contextlib.suppress(Exception):
                synchronize(self.device)
                torch.cuda.empty_cache()
        self.write()

    def write(self) -> None:
        self.results["wall_s"] = round(time.monotonic() - self.started, 1)
        self.results["goals"] = goals(self.results["sections"])
        self.args.out_dir.mkdir(parents=True, exist_ok=True)
        self.json_path.write_text(json.dumps(self.results, indent=2, default=str) + "\n", encoding="utf-8")
        self.md_path.write_text(markdown(self.results) + "\n", encoding="utf-8")


def _raise_timeout(signum: int, frame: Any) -> None:
    raise SectionTimeout()


def device_slug(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


# ---------------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------------
def section_environment(suite: Suite, record: dict[str, Any]) -> None:
    import transformers

    import ditsam

    device = suite.device
    record.update(
        {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "transformers": transformers.__version__,
            "ditsam_source": str(Path(ditsam.__file__).resolve().parent),
            "pycocotools_loaded": "pycocotools" in sys.modules,
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
        }
    )
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        record.update(
            {
                "device_name": props.name,
                "capability": f"{props.major}.{props.minor}",
                "multiprocessors": props.multi_processor_count,
                "memory_gib": round(props.total_memory / GIB, 1),
                "nvidia_smi": nvidia_smi(),
            }
        )
    record["matmul_bf16_tflops"] = matmul_tflops(device, suite.scale.matmul_n)
    record["datasheet_bf16_tflops"] = datasheet_peak(record.get("device_name", ""))


def nvidia_smi() -> dict[str, str] | str:
    fields = (
        "driver_version,clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,power.draw,power.limit,temperature.gpu,pstate"
    )
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"not readable: {error}"
    if out.returncode != 0:
        return f"not readable: {out.stderr.strip()[:200]}"
    return dict(zip(fields.split(","), (v.strip() for v in out.stdout.splitlines()[0].split(","))))


def matmul_tflops(device: torch.device, n: int) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    timing = measure(lambda: a @ b, device=device, iters=10)
    return 2 * n**3 / (timing["median_ms"] / 1e3) / 1e12


def datasheet_peak(name: str) -> float | None:
    return next((peak for key, peak in DATASHEET_BF16_TFLOPS.items() if key in name), None)


def section_latency(suite: Suite, record: dict[str, Any]) -> None:
    models, device = suite.models, suite.device
    model = models.cached("ldit")
    images, tokens = models.images(1, model.config.image_size), models.tokens(1, lengths=(LATENCY_LENGTH,))
    for name in ("bf16", "fp32", "tf32"):
        if name == "tf32" and device.type != "cuda":
            continue
        record[f"model_{name}_b1"] = measure(
            in_precision(name, device, model_call(model, images, tokens)),
            device=device,
            iters=suite.scale.latency_iters,
        )
        record[f"encoder_{name}_b1"] = measure(
            in_precision(name, device, encoder_call(model, images, tokens)),
            device=device,
            iters=suite.scale.latency_iters,
        )
        print(
            f"  {name}: model {record[f'model_{name}_b1']['median_ms']:.2f} ms, "
            f"encoder {record[f'encoder_{name}_b1']['median_ms']:.2f} ms",
            flush=True,
        )
    for variant in ("edit", "default"):  # E-DIT; SAM with the text in the decoder only
        other = models.build(variant)
        record[f"model_{variant}_bf16_b1"] = measure(
            in_precision("bf16", device, model_call(other, images, tokens)),
            device=device,
            iters=suite.scale.latency_iters,
        )
        print(f"  {variant} bf16: model {record[f'model_{variant}_bf16_b1']['median_ms']:.2f} ms", flush=True)


def section_agreement(suite: Suite, record: dict[str, Any]) -> None:
    from ditsam.model.sam.image_encoder import set_text_padding

    models, device = suite.models, suite.device
    model = models.cached("ldit")
    batch = suite.scale.probe_batch
    images, tokens = models.images(batch, model.config.image_size, seed=1), models.tokens(batch, seed=1)
    with torch.inference_mode():
        fp32 = model(images, text=tokens).logits.float()
        with precision("bf16", device):
            bf16 = model(images, text=tokens).logits.float()
        set_text_padding(model, "mask")
        try:
            masked = model(images, text=tokens).logits.float()
        finally:
            set_text_padding(model, "folded")
    record["bf16_vs_fp32"] = logit_agreement(bf16, fp32)
    record["padding_mask_vs_folded_fp32"] = logit_agreement(masked, fp32)
    print(
        f"  bf16 vs fp32: max |diff| {record['bf16_vs_fp32']['max_abs_diff']:.3g}, "
        f"mask IoU {record['bf16_vs_fp32']['mask_iou']:.4f}",
        flush=True,
    )


def logit_agreement(logits: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    cut = math.log(THRESHOLD / (1 - THRESHOLD))  # sigmoid(x) > 0.35  <=>  x > logit(0.35)
    mask, ref_mask = logits > cut, reference > cut
    union = (mask | ref_mask).sum().item()
    return {
        "max_abs_diff": (logits - reference).abs().max().item(),
        "mean_abs_diff": (logits - reference).abs().mean().item(),
        "reference_max_abs": reference.abs().max().item(),
        "mask_iou": (mask & ref_mask).sum().item() / union if union else 1.0,
        "pixel_agreement": (mask == ref_mask).float().mean().item(),
    }


def section_text_cost(suite: Suite, record: dict[str, Any]) -> None:
    from encoder_speed import TEXT_DIM, build_injections

    device = suite.device
    model = suite.models.cached("ldit")
    encoder = model.image_encoder
    injections = {k: v.to(device) for k, v in build_injections(encoder_size(model.config)).items()}
    saved = encoder.injection
    try:
        for batch in (1, suite.scale.throughput_batch):
            images = suite.models.images(batch, model.config.image_size, seed=2)
            features = torch.randn(batch, MAX_TOKENS, TEXT_DIM, device=device)  # what the injections take
            keep = torch.ones(batch, MAX_TOKENS, dtype=torch.bool, device=device)  # 20 real tokens
            rounds: dict[str, list[float]] = {variant: [] for variant in injections}
            for _ in range(3):  # interleaved rounds
                for variant, injection in injections.items():
                    encoder.injection = injection

                    def call() -> Any:
                        with torch.inference_mode(), precision("bf16", device):
                            return encoder(images) if variant == "plain" else encoder(images, features, keep)

                    iters = suite.scale.latency_iters if batch == 1 else suite.scale.throughput_iters
                    rounds[variant].append(measure(call, device=device, iters=iters)["median_ms"])
            medians = {variant: statistics.median(times) for variant, times in rounds.items()}
            record[f"bf16_b{batch}"] = {
                "ms": medians,
                "cost_pct": {v: 100 * (medians[v] / medians["plain"] - 1) for v in medians if v != "plain"},
            }
            print(f"  b{batch}: " + ", ".join(f"{v} {ms:.2f} ms" for v, ms in medians.items()), flush=True)
    finally:
        encoder.injection = saved


def encoder_size(config: Any):
    """The encoder_speed.Size of a model config (for its injection builders)."""
    from encoder_speed import Size

    size = config.size
    return Size(
        config.image_size, size.embed_dim, size.depth, size.num_heads, size.global_attn_indexes, config.window_size
    )


SDPA_OP = re.compile(r"aten::(_scaled_dot_product\w*|_flash_attention\w*|_efficient_attention\w*|_cudnn_attention\w*)")


def section_attention(suite: Suite, record: dict[str, Any]) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from ditsam.model.sam.image_encoder import set_text_padding

    models, device = suite.models, suite.device
    model = models.cached("ldit")
    batch = suite.scale.probe_batch
    images, tokens = models.images(batch, model.config.image_size, seed=3), models.tokens(batch, seed=3)
    try:
        for mode in ("folded", "mask"):
            set_text_padding(model, mode)
            entry: dict[str, Any] = record.setdefault(mode, {})
            entry["whole_model_ops"] = profile_ops(
                in_precision("bf16", device, model_call(model, images, tokens)), device
            )["sdpa_ops"]
            encoder = in_precision("bf16", device, encoder_call(model, images, tokens))
            profile = profile_ops(encoder, device)
            entry["encoder_ops"] = profile["sdpa_ops"]
            entry["encoder_sdpa_time_share_pct"] = profile["sdpa_share_pct"]
            entry["encoder_ms_by_backend"] = {}
            for backend in (
                SDPBackend.FLASH_ATTENTION,
                SDPBackend.EFFICIENT_ATTENTION,
                SDPBackend.CUDNN_ATTENTION,
                SDPBackend.MATH,
            ):
                try:
                    with sdpa_kernel([backend]):
                        timing = measure(encoder, device=device, iters=suite.scale.throughput_iters, warmup=1)
                    entry["encoder_ms_by_backend"][backend.name] = timing["median_ms"]
                except RuntimeError as error:  # the backend refuses these inputs (or this device)
                    entry["encoder_ms_by_backend"][backend.name] = f"not eligible: {str(error).splitlines()[0][:200]}"
            print(
                f"  {mode}: encoder ops {entry['encoder_ops']}, SDPA share {entry['encoder_sdpa_time_share_pct']:.1f} %",
                flush=True,
            )
    finally:
        set_text_padding(model, "folded")


def profile_ops(fn: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    """SDPA-related aten ops called by one ``fn()`` (name -> calls) and the share of device time (CPU time on
    the CPU) spent inside ``aten::scaled_dot_product_attention``."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        synchronize(device)
    averages = prof.key_averages()
    inclusive = "device_time_total" if device.type == "cuda" else "cpu_time_total"
    own = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    total = sum(event_time(event, own) for event in averages)
    sdpa = sum(event_time(event, inclusive) for event in averages if event.key == "aten::scaled_dot_product_attention")
    ops = {event.key: event.count for event in averages if SDPA_OP.fullmatch(event.key)}
    return {"sdpa_ops": ops, "sdpa_share_pct": 100.0 * sdpa / total if total else float("nan")}


def event_time(event: Any, name: str) -> float:
    """A profiler average's time field; older torch names the device fields ``cuda_*``."""
    value = getattr(event, name, None)
    return float(value if value is not None else getattr(event, name.replace("device", "cuda"), 0.0))


def section_throughput(suite: Suite, record: dict[str, Any]) -> None:
    models, device = suite.models, suite.device
    model = models.cached("ldit")
    batches = (suite.scale.throughput_batch, *suite.scale.max_batches)
    record["bf16"] = {}
    for batch in batches:
        if batch != batches[0] and suite.left() < 15 * suite.time_scale:
            record["stopped"] = f"time: {suite.left():.0f} s left"
            break
        try:
            images, tokens = models.images(batch, model.config.image_size, seed=4), models.tokens(batch, seed=4)
            iters = max(2, suite.scale.throughput_iters * suite.scale.throughput_batch // batch)  # ~same time each
            timing = measure(
                in_precision("bf16", device, model_call(model, images, tokens)), device=device, iters=iters, warmup=1
            )
        except torch.cuda.OutOfMemoryError:
            record["stopped"] = f"out of memory at batch {batch}"
            break
        finally:
            images = tokens = None  # type: ignore[assignment]
        record["bf16"][str(batch)] = {**timing, "images_per_s": batch / (timing["median_ms"] / 1e3)}
        record["largest_batch_run"] = batch
        if device.type == "cuda":
            record["bf16"][str(batch)]["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / GIB
            torch.cuda.reset_peak_memory_stats(device)
        print(f"  b{batch}: {record['bf16'][str(batch)]['images_per_s']:.0f} images/s", flush=True)


def section_training(suite: Suite, record: dict[str, Any]) -> None:
    suite.models.drop()  # the inference copies are not needed any more: free the memory
    for checkpointing in (False, True):
        for batch in suite.scale.train_batches:
            key = f"b{batch}_{'checkpointing' if checkpointing else 'plain'}"
            record[key] = {"batch": batch, "gradient_checkpointing": checkpointing}
            train_measure(suite, record[key], batch=batch, checkpointing=checkpointing)


def train_measure(
    suite: Suite, entry: dict[str, Any], *, batch: int, checkpointing: bool, **model_overrides: Any
) -> None:
    """One TrainingStep setup (model, fused Adam, EMA), timed over scale.train_steps steps; fills ``entry``."""
    from accelerate import Accelerator
    from torch.utils.flop_counter import FlopCounterMode

    from ditsam.engine.ema import EMA
    from ditsam.engine.losses import segmentation_loss
    from ditsam.engine.step import MicroBatch, TrainingStep, build_adam

    device, models = suite.device, suite.models
    gc.collect()  # the previous setting's model (held in reference cycles by accelerate's wrappers) goes first
    if device.type == "cuda":
        torch.cuda.empty_cache()
    experiment = models.experiment("ldit", gradient_checkpointing=checkpointing, **model_overrides)
    model = models.build("ldit", gradient_checkpointing=checkpointing, **model_overrides).train()
    accelerator = Accelerator(mixed_precision="bf16", cpu=device.type == "cpu")
    ema = EMA(
        model, decay=experiment.train.ema_decay, warmup=experiment.train.ema_warmup
    )  # as the Trainer: before prepare
    optimizer = build_adam((p for p in model.parameters() if p.requires_grad), experiment.train, device=device)
    prepared, optimizer = accelerator.prepare(model, optimizer)
    step = TrainingStep(
        accelerator=accelerator,
        model=prepared,
        optimizer=optimizer,
        ema=ema,
        loss_fn=lambda output, micro: segmentation_loss(output.logits, micro.masks),
        grad_clip=experiment.train.grad_clip,
    )
    size = model.config.image_size
    images = models.images(batch, size, seed=5)
    masks = (torch.rand(batch, 1, size, size, device=device) > 0.7).float()
    micro = [MicroBatch(images=images, masks=masks, prompts={"text": models.tokens(batch, seed=5)})]
    step(micro)  # warm-up: Adam allocates its state, kernels are chosen
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    began = time.perf_counter()
    for _ in range(suite.scale.train_steps):
        result = step(micro)
    synchronize(device)
    seconds = (time.perf_counter() - began) / suite.scale.train_steps
    entry.update({"s_per_step": seconds, "samples_per_s": batch / seconds, "final_loss": float(result.loss)})
    if device.type == "cuda":
        entry["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / GIB
    entry["host_syncs_in_one_step"] = count_syncs(lambda: step(micro), device)
    with FlopCounterMode(display=False) as counter, accelerator.autocast():
        segmentation_loss(prepared(images, **micro[0].prompts).logits, masks).backward()
    optimizer.zero_grad(set_to_none=True)
    flops = counter.get_total_flops()
    entry["flops_per_step"] = flops
    achieved = flops / seconds / 1e12
    entry["achieved_tflops"] = achieved
    environment = suite.results["sections"].get("environment", {})
    for label, key in (
        ("mfu_datasheet_pct", "datasheet_bf16_tflops"),
        ("mfu_measured_matmul_pct", "matmul_bf16_tflops"),
    ):
        peak = environment.get(key)
        entry[label] = 100.0 * achieved / peak if peak else None
    print(
        f"  b{batch} {'ckpt' if checkpointing else 'plain'}: {entry['samples_per_s']:.1f} samples/s, "
        f"{achieved:.1f} TFLOP/s, MFU {entry['mfu_datasheet_pct']}, peak {entry.get('peak_memory_gib')}",
        flush=True,
    )


def count_syncs(fn: Callable[[], Any], device: torch.device) -> int | str:
    """Host-device synchronisations while ``fn`` runs (CUDA's sync debug mode, as warnings)."""
    if device.type != "cuda":
        return "not measurable on the CPU"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    synchronize(device)
    return sum("synchroniz" in str(w.message) for w in caught)


def section_compile(suite: Suite, record: dict[str, Any]) -> None:
    """Batch 1 in each mode first (the goal), then the default mode at the throughput batch if time is left."""
    models, device, args = suite.models, suite.device, suite.args
    model = models.cached("ldit")
    size = model.config.image_size
    modes = ["default"] + (["reduce-overhead"] if device.type == "cuda" else [])
    compiled_default = None
    for mode in modes:
        entry: dict[str, Any] = record.setdefault(mode, {})
        try:
            torch._dynamo.reset()  # each mode compiles from scratch (inductor's own cache may still help)
            compiled = torch.compile(
                model, mode=None if mode == "default" else mode, backend=args.compile_backend, dynamic=False
            )
            images, tokens = models.images(1, size), models.tokens(1, lengths=(LATENCY_LENGTH,))
            call = in_precision("bf16", device, model_call(compiled, images, tokens))
            began = time.perf_counter()
            call()
            synchronize(device)
            entry["first_call_s"] = time.perf_counter() - began
            entry["bf16_b1"] = measure(call, device=device, iters=suite.scale.latency_iters)
            print(
                f"  {mode}: first call {entry['first_call_s']:.0f} s, b1 {entry['bf16_b1']['median_ms']:.2f} ms",
                flush=True,
            )
            if mode == "default":
                compiled_default = compiled
        except SectionTimeout:
            raise
        except Exception as error:  # one mode failing (e.g. CUDA graphs) leaves the other
            entry["error"] = f"{type(error).__name__}: {error}"[:2000]
            print(f"  {mode}: {entry['error'][:200]}", flush=True)
    if compiled_default is not None and suite.left() > 60 * suite.time_scale:
        batch = suite.scale.throughput_batch
        images, tokens = models.images(batch, size, seed=4), models.tokens(batch, seed=4)
        call = in_precision("bf16", device, model_call(compiled_default, images, tokens))
        call()  # compiles for this shape
        timing = measure(call, device=device, iters=suite.scale.throughput_iters, warmup=1)
        record["default"][f"bf16_b{batch}"] = {**timing, "images_per_s": batch / (timing["median_ms"] / 1e3)}
        print(f"  default: b{batch} {record['default'][f'bf16_b{batch}']['images_per_s']:.0f} images/s", flush=True)


def section_large(suite: Suite, record: dict[str, Any]) -> None:
    models, device = suite.models, suite.device
    models.drop()
    for name, overrides, train_batch in suite.scale.large:
        entry: dict[str, Any] = record.setdefault(name, {})
        if suite.left() < 20 * suite.time_scale:
            entry["status"] = "skipped: out of time"
            continue
        model = models.build("ldit", **overrides)
        size = model.config.image_size
        images, tokens = models.images(1, size), models.tokens(1, lengths=(LATENCY_LENGTH,))
        entry["bf16_b1"] = measure(
            in_precision("bf16", device, model_call(model, images, tokens)),
            device=device,
            iters=suite.scale.latency_iters,
        )
        batch = max(suite.scale.throughput_batch // 2, 1)
        images, tokens = models.images(batch, size), models.tokens(batch)
        timing = measure(
            in_precision("bf16", device, model_call(model, images, tokens)),
            device=device,
            iters=suite.scale.throughput_iters,
            warmup=1,
        )
        entry[f"bf16_b{batch}"] = {**timing, "images_per_s": batch / (timing["median_ms"] / 1e3)}
        del model, images, tokens
        print(
            f"  {name}: b1 {entry['bf16_b1']['median_ms']:.2f} ms, b{batch} {entry[f'bf16_b{batch}']['images_per_s']:.0f} images/s",
            flush=True,
        )
        if suite.left() > 30 * suite.time_scale:
            entry["training"] = {"batch": train_batch, "gradient_checkpointing": True}
            train_measure(suite, entry["training"], batch=train_batch, checkpointing=True, **overrides)


SECTIONS: dict[str, Callable[[Suite, dict[str, Any]], None]] = {
    "environment": section_environment,
    "latency": section_latency,
    "agreement": section_agreement,
    "text_cost": section_text_cost,
    "attention": section_attention,
    "throughput": section_throughput,
    "backbones": section_backbones,
    "training": section_training,
    "compile": section_compile,
    "large": section_large,
}


# ---------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (any device; the CPU when no GPU): < 1 minute")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    parser.add_argument(
        "--budget", type=float, default=None, help="global time budget, seconds (default 420; smoke 50)"
    )
    parser.add_argument(
        "--sections",
        nargs="+",
        default=list(SECTIONS),
        choices=list(SECTIONS),
        metavar="SECTION",
        help="sections to run, in the suite's order: " + ", ".join(SECTIONS),
    )
    parser.add_argument(
        "--compile-backend",
        default=None,
        help="torch.compile backend (default inductor; smoke: eager, which traces but generates no code)",
    )
    parser.add_argument("--out-dir", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    scale = SMOKE if args.smoke else FULL
    args.compile_backend = args.compile_backend or ("eager" if args.smoke else "inductor")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    if device.type != "cuda" and not args.smoke:
        print("no GPU: run with --smoke (tiny sizes) or on a GPU machine", file=sys.stderr)
        return 2
    if device.type == "cpu":
        torch.set_num_threads(1)  # tiny sizes: threads only spin against other jobs on a shared CPU
    with tempfile.TemporaryDirectory(prefix="ditsam-gpu-suite-") as folder:
        suite = Suite(args, scale, device, Path(folder))
        for name in SECTIONS:
            if name in args.sections:
                suite.run(name, SECTIONS[name])
    print()
    print(suite.md_path.read_text(encoding="utf-8"))
    print(f"wrote {suite.json_path} and {suite.md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
