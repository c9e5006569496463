"""int8 vs fp32 on the CPU: speed of ``Segmenter.predict`` and mask agreement of a trained model.

    PYTHONPATH=src python benchmarks/int8_cpu.py                       # speed: ViT-B L-DIT 512, batch 1 (~6 min)
    PYTHONPATH=src python benchmarks/int8_cpu.py --no-speed \\
        --checkpoint runs/demo/refshapes-ldit/checkpoints/best          # agreement on its evaluation splits

Speed: the packaged ``refcoco/ldit`` model (ViT-B, 512 px, every block global, L-DIT with non-zero
projections, random weights) with a BERT-base-sized random text encoder (12 layers, width 768, a small
generated vocabulary: nothing downloaded), ``Segmenter.predict`` on one 640x480 image and one sentence
(preprocessing, model, logits back to 640x480, threshold), batch 1, for:

- ``fp32``: the Segmenter in float32 (PyTorch eager, ``dtype="fp32"``) -- the reference;
- ``auto``: the Segmenter's default, ``dtype="auto"`` (bf16 autocast on a CPU with AMX-BF16 / AVX512-BF16,
  float32 elsewhere: then the same as ``fp32``);
- ``int8``: ``Segmenter(dtype="int8")``: ONNX Runtime, dynamic int8 quantisation (:mod:`ditsam.int8`);
- ``onnx_fp32``: the same exported graph, not quantised (what ONNX Runtime alone gives);
- ``torch_int8``: ``torch.ao.quantization.quantize_dynamic`` on every ``nn.Linear`` (fbgemm; an API
  PyTorch has deprecated in favour of torchao, measured for comparison);
- ``torchao_int8`` (only when torchao is installed): torchao's int8 dynamic-activation / int8-weight
  quantisation of the linears, eager.

One warm-up call each, then ``--repeats`` rounds in which every variant runs once, interleaved, so that
other jobs on a shared machine slow them alike; medians (and mins) per variant and the ratio to fp32.

Agreement (``--checkpoint``, a training run's checkpoint folder, whose ``experiment.yaml`` names the
data; RefShapes is generated into ``--data-root`` when missing): every sentence of the evaluation
splits through the fp32 model and the ``--agreement-variants`` (``auto``: the default dtype's autocast, bf16
on an AMX / AVX512-BF16 CPU; ``int8``), masks at the original image size (the Segmenter's threshold), IoU of
each variant's mask with the fp32 mask per sentence (1 when both are empty), averaged; and every model's mIoU
against the ground truth. Results: ``benchmarks/results/int8_cpu.json``, each part
with the machine description (a run of one part keeps the other part of the file).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from machine import machine_info

HERE = Path(__file__).resolve().parent
SENTENCE = "the man on the left"
IMAGE_SHAPE = (480, 640, 3)
AGREEMENT_BATCH = 16
WORDS = "the a man woman dog car on left right red blue big small".split()
#: Sentences whose masks the variants are compared on (random weights: what agrees is the arithmetic).
AGREEMENT_SENTENCES = [
    "the man on the left",
    "a red car",
    "the small dog",
    "the woman on the right",
    "a big blue car",
    "the dog",
    "the man",
    "the small red car on the left",
]
# Where the linear layers are (all but W_o, one 768 x 256 product per sentence).
QUANTIZED_PARTS = ("text_encoder", "image_encoder", "mask_decoder")


def speed_model(folder: Path, backbone: str = "vit_b"):
    """The refcoco/ldit model (on ``backbone``) with a BERT-base-sized random text encoder, random weights."""
    from ditsam.engine.config import load_experiment
    from ditsam.model.dit import DITSam
    from ditsam.model.text import build_tiny_bert

    bert = build_tiny_bert(
        folder / "bert", words=WORDS, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072
    )
    config = load_experiment(
        "refcoco/ldit",
        {
            "model.backbone": backbone,
            "model.text.name_or_path": str(bert),
            "model.injection_options.zero_init": False,
        },
    ).model
    torch.manual_seed(0)
    return DITSam(config).eval()


def segmenters(model: Any, names: list[str]) -> dict[str, Any]:
    """Variant name -> its Segmenter (built here; int8 builds take ~1 minute)."""
    from ditsam import Segmenter
    from ditsam.export import export_onnx
    from ditsam.int8 import OnnxRunner

    built: dict[str, Any] = {}
    for name in names:
        began = time.perf_counter()
        if name == "fp32":
            built[name] = Segmenter(model, device="cpu", dtype="fp32")
        elif name == "auto":
            built[name] = Segmenter(model, device="cpu")
        elif name == "int8":
            built[name] = Segmenter(model, dtype="int8")
        elif name == "onnx_fp32":
            segmenter = Segmenter(model, device="cpu", dtype="fp32")
            with tempfile.TemporaryDirectory() as folder:
                segmenter.onnx = OnnxRunner(export_onnx(model, Path(folder) / "m.onnx", verify=False).path)
            built[name] = segmenter
        elif name == "torch_int8":
            quantized = copy.deepcopy(model)
            for part in QUANTIZED_PARTS:  # not text_proj: DITSam.tokenize reads its weight's device
                module = getattr(quantized, part)
                setattr(
                    quantized,
                    part,
                    torch.ao.quantization.quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8),
                )
            built[name] = Segmenter(quantized, device="cpu", dtype="fp32")
        elif name == "torchao_int8":
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

            quantized = copy.deepcopy(model)
            quantize_(quantized, Int8DynamicActivationInt8WeightConfig())
            built[name] = Segmenter(quantized, device="cpu", dtype="fp32")
        print(f"built {name} in {time.perf_counter() - began:.0f} s", flush=True)
    return built


def mask_agreement(built: dict[str, Any]) -> dict[str, float]:
    """Mean IoU of each variant's masks with fp32's, over :data:`AGREEMENT_SENTENCES` on the speed image."""
    image = np.random.default_rng(0).integers(0, 256, size=IMAGE_SHAPE, dtype=np.uint8)
    masks = {name: [r.mask for r in segmenter.predict(image, AGREEMENT_SENTENCES)] for name, segmenter in built.items()}
    return {name: float(np.mean([iou(a, b) for a, b in zip(theirs, masks["fp32"])])) for name, theirs in masks.items()}


def time_interleaved(calls: dict[str, Callable[[], Any]], repeats: int) -> dict[str, dict[str, Any]]:
    for name, call in calls.items():
        call()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_index in range(repeats):
        for name, call in calls.items():
            began = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - began)
        print(f"round {round_index + 1}: " + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items()), flush=True)
    return {name: {"median_s": statistics.median(t), "min_s": min(t), "times_s": t} for name, t in times.items()}


def agreement(
    checkpoint: Path, data_root: Path, splits: list[str] | None, limit: int | None, variants: list[str]
) -> dict[str, Any]:
    """Per split and variant (``auto``: the default dtype's autocast; ``int8``): mean IoU(variant mask, fp32
    mask) and each model's mIoU against the ground truth."""
    from ditsam.data.transforms import restore_to_original
    from ditsam.defaults import MASK_THRESHOLD
    from ditsam.engine.config import load_experiment
    from ditsam.engine.data import ris_dataset
    from ditsam.inference.devices import resolve_dtype
    from ditsam.int8 import OnnxRunner
    from ditsam.model.dit import DITSam
    from ditsam.model.prediction import choose_prediction, foreground

    model = DITSam.from_pretrained(checkpoint).eval()
    experiment = load_experiment(str(checkpoint / "experiment.yaml"), {"data.root": str(data_root)})
    experiment = experiment.with_overrides({"model": model.config.to_dict()})
    auto = resolve_dtype("auto", device=torch.device("cpu"))

    def autocast_forward(images: torch.Tensor, tokens: Any) -> Any:
        with torch.inference_mode(), torch.autocast("cpu", dtype=auto or torch.float32, enabled=auto is not None):
            return model(images, text=tokens)

    predictors: dict[str, Callable[[torch.Tensor, Any], Any]] = {}
    if "auto" in variants:
        predictors["auto"] = autocast_forward
    if "int8" in variants:
        predictors["int8"] = OnnxRunner.int8(model)
    out: dict[str, Any] = {"auto_dtype": str(auto).replace("torch.", "") if auto is not None else "float32"}
    for split in splits or list(experiment.data.eval_splits):
        dataset = ris_dataset(experiment, split, train=False)
        count = len(dataset) if limit is None else min(limit, len(dataset))
        agree: dict[str, list[float]] = {name: [] for name in predictors}
        truth: dict[str, list[float]] = {name: [] for name in ("fp32", *predictors)}
        for start in range(0, count, AGREEMENT_BATCH):
            items = [dataset[i] for i in range(start, min(start + AGREEMENT_BATCH, count))]
            images = torch.stack([item.image for item in items])
            tokens = model.tokenize([item.sentence for item in items])
            with torch.inference_mode():
                logits = {"fp32": choose_prediction(model(images, text=tokens)).logits}
            logits.update(
                {name: choose_prediction(run(images, tokens)).logits.float() for name, run in predictors.items()}
            )
            for row, item in enumerate(items):
                masks = {
                    name: foreground(restore_to_original(values[row], item.meta), threshold=MASK_THRESHOLD).numpy()
                    for name, values in logits.items()
                }
                for name in predictors:
                    agree[name].append(iou(masks[name], masks["fp32"]))
                for name, mask in masks.items():
                    truth[name].append(iou(mask, item.gt_mask))
        out[split] = {"sentences": count, **{f"miou_{name}": 100 * float(np.mean(v)) for name, v in truth.items()}}
        for name, values in agree.items():
            out[split][f"mask_iou_{name}_vs_fp32"] = float(np.mean(values))
            out[split][f"min_mask_iou_{name}_vs_fp32"] = float(np.min(values))
        print(f"{split}: {out[split]}", flush=True)
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--speed", action=argparse.BooleanOptionalAction, default=True, help="time the variants")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=None,
        choices=["fp32", "auto", "int8", "onnx_fp32", "torch_int8", "torchao_int8"],
        help="default: all but torchao_int8, which is added when torchao is installed",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (all variants once per round)")
    parser.add_argument("--threads", type=int, default=None, help="torch / ONNX Runtime threads (default: torch's)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="a trained checkpoint folder: mask agreement")
    parser.add_argument("--data-root", type=Path, default=None, help="its data (default: a temporary RefShapes folder)")
    parser.add_argument("--splits", nargs="+", default=None, help="evaluation splits (default: the experiment's)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many sentences per split")
    parser.add_argument(
        "--agreement-variants",
        nargs="+",
        choices=("auto", "int8"),
        default=["auto", "int8"],
        help="what --checkpoint's masks are compared with fp32 for (default: both)",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "int8_cpu.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    record: dict[str, Any] = {"benchmark": "int8_cpu"}
    with tempfile.TemporaryDirectory(prefix="ditsam-int8-bench-") as folder:
        if args.speed:
            variants = args.variants or ["fp32", "auto", "int8", "onnx_fp32", "torch_int8"]
            speed: dict[str, Any] = {
                "machine": machine_info(),
                "sentence": SENTENCE,
                "image_shape": list(IMAGE_SHAPE),
                "repeats": args.repeats,
            }
            if args.variants is None:
                if importlib.util.find_spec("torchao") is not None:
                    variants.append("torchao_int8")
                else:
                    speed["torchao"] = "not installed: not measured"
            model = speed_model(Path(folder))
            built = segmenters(model, variants)
            image = np.random.default_rng(0).integers(0, 256, size=IMAGE_SHAPE, dtype=np.uint8)
            timings = time_interleaved(
                {name: (lambda s=segmenter: s.predict(image, SENTENCE)) for name, segmenter in built.items()},
                args.repeats,
            )
            if "fp32" in built:
                for name, value in mask_agreement(built).items():
                    timings[name]["mask_iou_vs_fp32"] = value
            reference = timings.get("fp32", {}).get("median_s")
            for timing in timings.values():
                timing["speedup_vs_fp32"] = reference / timing["median_s"] if reference else None
            speed["variants"] = timings
            speed["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
            record["speed"] = speed
        if args.checkpoint is not None:
            root = args.data_root or Path(folder) / "data"
            record["agreement"] = {
                "machine": machine_info(),
                "checkpoint": str(args.checkpoint),
                "splits": agreement(args.checkpoint, root, args.splits, args.limit, args.agreement_variants),
            }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.exists():  # keep the other half of an earlier run (speed vs agreement)
        previous = json.loads(args.out.read_text())
        record = {**{k: v for k, v in previous.items() if k in ("speed", "agreement")}, **record}
    args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    for name, timing in record.get("speed", {}).get("variants", {}).items():
        print(
            f"{name:>13}: {timing['median_s']:.2f} s median, {timing['min_s']:.2f} s min, "
            f"x{timing['speedup_vs_fp32']:.2f} vs fp32"
        )
    for split, entry in record.get("agreement", {}).get("splits", {}).items():
        if not isinstance(entry, dict):  # "auto_dtype": what auto chose
            print(f"{split}: {entry}")
            continue
        agreeing = ", ".join(
            f"{key.removeprefix('mask_iou_').removesuffix('_vs_fp32')} {value:.4f}"
            for key, value in entry.items()
            if key.startswith("mask_iou_")
        )
        scores = ", ".join(
            f"{key.removeprefix('miou_')} {value:.2f}" for key, value in entry.items() if key.startswith("miou_")
        )
        print(f"{split}: mask IoU vs fp32: {agreeing} over {entry['sentences']} sentences; mIoU {scores}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
