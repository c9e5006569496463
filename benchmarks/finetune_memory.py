"""Fine-tuning memory and speed: ``train.finetune`` = full / frozen / lora, one optimiser step at a time.

    PYTHONPATH=src .venv/bin/python benchmarks/finetune_memory.py            # ViT-B 512 L-DIT, BERT-base, b1 + b4
    PYTHONPATH=src .venv/bin/python benchmarks/finetune_memory.py --smoke    # a tiny config, seconds
    PYTHONPATH=src .venv/bin/python benchmarks/finetune_memory.py --count-only   # parameter counts + estimate

What one step is: the ``custom/finetune_ldit`` model (ViT-B, 512 px, L-DIT, every block global, BERT's first
layer, [PAD] attended) with *random* weights -- ViT and decoder random-init, BERT a full-size
``transformers.BertConfig()`` (bert-base: 12 layers, width 768, vocabulary 30522) built from its config
alone, nothing downloaded -- prepared by :func:`ditsam.engine.finetune.prepare_for_finetuning` for the
mode (LoRA: rank ``--lora-rank`` on the ViT attention qkv / proj, peft), Adam over the trainable
parameters, then per step: forward on random images and 20-token sentences (a few real tokens, the rest
[PAD]), the training loss (BCE on the 512x512 logits), backward, gradient clipping, Adam step,
``zero_grad(set_to_none=True)`` -- what :class:`ditsam.engine.train.Trainer` does per optimiser step
without data loading and EMA. Mixed precision as the Trainer's ``auto``: bf16 autocast on a GPU, fp32 on
the CPU (``--mixed-precision`` to force one).

Every (mode, batch) runs in a fresh subprocess, so that one mode's allocations (the CPU allocator keeps
freed memory) cannot inflate the next one's peak. Per setting it records:

- ``peak_rss_gib``: the child's peak resident memory (``getrusage`` ru_maxrss) over model building and
  ``--warmup + --steps`` steps; ``baseline_rss_gib`` the RSS after importing torch / transformers and
  before building anything; ``step_rss_increase_gib`` = peak - baseline (what the model, its gradients,
  Adam's state and one step's activations cost on the CPU); ``model_rss_gib`` = RSS after building the
  model - baseline (the weights);
- on a GPU: ``peak_cuda_gib`` = ``torch.cuda.max_memory_allocated`` (tensors only; the CUDA context and
  the caching allocator's slack, ~0.5-1 GB, come on top) and ``model_cuda_gib`` (the weights);
- ``samples_per_s`` over the ``--steps`` timed steps (after ``--warmup``), ``params_with_grad`` (the
  parameters that actually received a gradient: with BERT's first layer as the text features, BERT's
  layers 2-12 get none even when trainable, so Adam holds no state for them).

The parent also counts parameters on a ``meta``-device model (no memory, no compute) and writes a static
memory estimate per mode: fp32 weights + fp32 gradients + Adam's two fp32 moments for the parameters that
get a gradient (activations not included). Results: ``benchmarks/results/finetune_memory_<device>.json``
(``--smoke``: ``..._smoke.json``; ``--out`` elsewhere), with :func:`machine.machine_info`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from smoke_models import SMOKE_BERT, SMOKE_SAM

HERE = Path(__file__).resolve().parent
MODES = ("full", "frozen", "lora")
GIB = 2**30

# The packaged fine-tuning experiment's model (custom/finetune_ldit.yaml), with the text model replaced.
FULL_MODEL = dict(
    backbone="vit_b",
    image_size=512,
    attention="global",
    injection="layerwise",
    mask_text_padding=False,
)
SMOKE_MODEL = dict(SMOKE_SAM, attention="global", injection="layerwise", mask_text_padding=False)
MAX_TOKENS = 20
# Parameters a text-prompted training step never reaches (no gradient, no Adam state).
UNUSED_BY_TEXT_TRAINING = (
    "mask_decoder.iou_prediction_head.",
    "prompt_encoder.point_embeddings.",
    "prompt_encoder.not_a_point_embed.",
    "prompt_encoder.mask_downscaling.",
)
REAL_TOKENS = 8  # [CLS] + 6 words + [SEP]; the rest [PAD] (attended, as the reference)


# ---------------------------------------------------------------------------------------------------
# Building the model (random weights, nothing downloaded)
# ---------------------------------------------------------------------------------------------------
def write_bert_config(directory: Path, *, smoke: bool) -> Path:
    """A BERT config only (no weights, no tokenizer): bert-base's defaults, or a tiny one for --smoke."""
    from transformers import BertConfig

    config = BertConfig(**SMOKE_BERT) if smoke else BertConfig()
    config.save_pretrained(str(directory))
    return directory


def model_config(bert_dir: Path, *, smoke: bool):
    from ditsam.model.config import reference_config

    settings = dict(SMOKE_MODEL if smoke else FULL_MODEL)
    settings["text"] = {
        "name_or_path": str(bert_dir),
        "max_tokens": MAX_TOKENS,
        "hidden_layer": 1,
        "local_files_only": True,
    }
    return reference_config(**settings)


def build(config, mode: str, lora_rank: int, *, device: str | None = None):
    """A DITSam with random weights prepared for ``mode`` (on ``device``, e.g. "meta")."""
    import contextlib

    import torch

    from ditsam.engine.config import TrainConfig
    from ditsam.engine.finetune import prepare_for_finetuning
    from ditsam.model.dit import DITSam

    context = torch.device(device) if device is not None else contextlib.nullcontext()
    with context:
        model = DITSam(config, load_text_weights=False)
        prepare_for_finetuning(model, TrainConfig(finetune=mode, lora_rank=lora_rank, lora_alpha=2.0 * lora_rank))
    return model


def gradient_receivers(model) -> list[str]:
    """Trainable parameters that get a gradient: BERT layers after ``text.hidden_layer`` do not, nor does
    the decoder's IoU head (the training loss does not use its prediction), nor the prompt encoder's point and
    mask embeddings (text prompts only)."""
    layers = model.text_encoder.bert.config.num_hidden_layers
    used = model.config.text.hidden_layer % (layers + 1)  # hidden state index: 0 = embeddings
    unused = re.compile(r"text_encoder\.bert\.encoder\.layer\.(\d+)\.")
    names = []
    for name, parameter in model.named_parameters():
        match = unused.match(name)
        if name.startswith(UNUSED_BY_TEXT_TRAINING):
            continue
        if parameter.requires_grad and not (match and int(match.group(1)) >= used):
            names.append(name)
    return names


def parameter_counts(config, mode: str, lora_rank: int) -> dict[str, object]:
    """Counts on a meta-device model and the static memory they imply (fp32 weights, grads, Adam)."""
    model = build(config, mode, lora_rank, device="meta")
    sizes = dict((name, p.numel()) for name, p in model.named_parameters())
    receivers = gradient_receivers(model)
    total = sum(sizes.values())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    with_grad = sum(sizes[name] for name in receivers)
    groups: dict[str, int] = {}
    for name in receivers:
        group = "lora" if "lora_" in name else name.split(".")[0] + (".injection" if ".injection." in name else "")
        groups[group] = groups.get(group, 0) + sizes[name]
    return {
        "total": total,
        "trainable": trainable,
        "with_grad": with_grad,
        "with_grad_by_part": groups,
        "static_gib": {  # bytes: 4 per weight, + 4 (grad) + 8 (Adam m, v) per parameter that gets a gradient
            "weights_fp32": 4 * total / GIB,
            "grads_fp32": 4 * with_grad / GIB,
            "adam_fp32": 8 * with_grad / GIB,
            "total": (4 * total + 12 * with_grad) / GIB,
        },
    }


# ---------------------------------------------------------------------------------------------------
# One setting, in its own process
# ---------------------------------------------------------------------------------------------------
def _rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / GIB
    return float("nan")


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # KiB on Linux


def run_child(args: argparse.Namespace) -> dict[str, object]:
    import torch

    from ditsam.engine.losses import segmentation_loss
    from ditsam.model.text import TokenizedText

    baseline = _rss_gib()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    mixed = args.mixed_precision
    if mixed == "auto":
        mixed = "bf16" if device.type == "cuda" else "no"
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="ditsam-ft-bert-") as folder:
        config = model_config(write_bert_config(Path(folder), smoke=args.smoke), smoke=args.smoke)
        model = build(config, args.mode, args.lora_rank)
    model = model.to(device).train()
    if device.type == "cuda":
        torch.cuda.synchronize()
        model_cuda = torch.cuda.memory_allocated() / GIB
        torch.cuda.reset_peak_memory_stats()
    model_rss = _rss_gib() - baseline
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=1e-4, betas=(0.9, 0.98))

    batch, size = args.batch, config.image_size
    vocab = model.text_encoder.bert.config.vocab_size
    images = torch.randn(batch, 3, size, size, device=device)
    masks = (torch.rand(batch, 1, size, size, device=device) > 0.7).float()
    ids = torch.zeros(batch, MAX_TOKENS, dtype=torch.long)
    ids[:, 1 : REAL_TOKENS - 1] = torch.randint(5 if args.smoke else 1000, vocab, (batch, REAL_TOKENS - 2))
    ids[:, 0], ids[:, REAL_TOKENS - 1] = (2, 3) if args.smoke else (101, 102)  # [CLS], [SEP]
    keep = torch.zeros(batch, MAX_TOKENS, dtype=torch.bool)
    keep[:, :REAL_TOKENS] = True
    text = TokenizedText(ids, keep).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed == "bf16")

    with_grad = 0
    times = []
    for step in range(args.warmup + args.steps):
        started = time.perf_counter()
        with autocast:
            output = model(images, text)
            loss = segmentation_loss(output.logits, masks)
        loss.backward()
        if step == 0:
            with_grad = sum(p.numel() for p in parameters if p.grad is not None)
        torch.nn.utils.clip_grad_norm_(parameters, 0.15)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - started)
    peak = _peak_rss_gib()
    return {
        "mode": args.mode,
        "batch": batch,
        "device": str(device),
        "mixed_precision": mixed,
        "steps": args.steps,
        "seconds_per_step": sum(times) / len(times),
        "samples_per_s": batch * len(times) / sum(times),
        "final_loss": float(loss.detach()),
        "params_with_grad": with_grad,
        "baseline_rss_gib": baseline,
        "model_rss_gib": model_rss,
        "peak_rss_gib": peak,
        "step_rss_increase_gib": peak - baseline,
        "model_cuda_gib": model_cuda if device.type == "cuda" else None,
        "peak_cuda_gib": torch.cuda.max_memory_allocated() / GIB if device.type == "cuda" else None,
        "torch_threads": torch.get_num_threads(),
    }


def spawn(args: argparse.Namespace, mode: str, batch: int) -> dict[str, object]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        mode,
        "--batch",
        str(batch),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--lora-rank",
        str(args.lora_rank),
        "--mixed-precision",
        args.mixed_precision,
    ]
    command += ["--smoke"] if args.smoke else []
    command += ["--cpu"] if args.cpu else []
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent / "src"), str(HERE), env.get("PYTHONPATH")]))
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.timeout)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        return {"mode": mode, "batch": batch, "error": " | ".join(tail) or f"exit status {result.returncode}"}
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny ViT and BERT at 64 px, batch 1, 1 step: seconds")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--batches", nargs="+", type=int, default=None, help="default 1 4 (--smoke: 1)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per setting (default 3; --smoke 1)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (Adam allocates its state)")
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--mixed-precision", default="auto", choices=("auto", "no", "bf16"))
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    parser.add_argument("--count-only", action="store_true", help="parameter counts and the static estimate only")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per setting")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.steps = args.steps if args.steps is not None else (1 if args.smoke else 3)
    if args.child:
        args.mode = args.child
        print(json.dumps(run_child(args)))
        return

    import torch

    from machine import machine_info

    batches = args.batches or ([1] if args.smoke else [1, 4])
    with tempfile.TemporaryDirectory(prefix="ditsam-ft-bert-") as folder:
        config = model_config(write_bert_config(Path(folder), smoke=args.smoke), smoke=args.smoke)
        counts = {mode: parameter_counts(config, mode, args.lora_rank) for mode in args.modes}
    record: dict[str, object] = {
        "benchmark": "finetune_memory",
        "smoke": args.smoke,
        "model": config.to_dict(),
        "text_model": "random transformers.BertConfig()" + (" (tiny)" if args.smoke else " (bert-base size)"),
        "lora_rank": args.lora_rank,
        "machine": machine_info(),
        "parameters": counts,
        "settings": [],
    }
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    if not args.count_only:
        for batch in batches:
            for mode in args.modes:
                started = time.perf_counter()
                result = spawn(args, mode, batch)
                result["wall_s"] = time.perf_counter() - started
                record["settings"].append(result)
                print(json.dumps(result), flush=True)
    out = args.out or HERE / "results" / f"finetune_memory_{device}{'_smoke' if args.smoke else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{'mode':<7} {'params with grad':>17} {'static est. GiB':>16}")
    for mode, count in counts.items():
        print(f"{mode:<7} {count['with_grad']:>17,} {count['static_gib']['total']:>16.2f}")
    for result in record["settings"]:
        if "error" in result:
            print(f"{result['mode']:<7} b{result['batch']}: ERROR {result['error']}")
        else:
            cuda = f", peak CUDA {result['peak_cuda_gib']:.2f} GiB" if result["peak_cuda_gib"] is not None else ""
            print(
                f"{result['mode']:<7} b{result['batch']}: {result['samples_per_s']:.3f} samples/s, peak RSS "
                f"{result['peak_rss_gib']:.2f} GiB (+{result['step_rss_increase_gib']:.2f}){cuda}"
            )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
