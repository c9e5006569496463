"""The CPU backend table: ViT-B / L / H L-DIT at 512 px, whole ``Segmenter.predict``, batch 1, 1 and 2 threads.

    PYTHONPATH=src:benchmarks python benchmarks/cpu_backends.py                     # ViT-B/L/H (~29 min, 2 cores)
    PYTHONPATH=src:benchmarks python benchmarks/cpu_backends.py --backbones vit_b efficientsam_ti efficientsam_s \
        --out benchmarks/results/cpu_backends_efficientsam.json                     # the light backbones (~6 min)

Per backbone, the packaged ``refcoco/ldit`` model on it (random weights, L-DIT projections non-zero, a
BERT-base-sized random text encoder: nothing downloaded), ``Segmenter.predict`` of one 640x480 photo and
one sentence (preprocessing, model, logits back to 640x480, threshold) through every backend:

- ``fp32``: PyTorch eager, float32 (``dtype="fp32"``);
- ``bf16``: PyTorch eager, bf16 autocast (``dtype=torch.bfloat16``; what ``dtype="auto"`` picks on a CPU
  with AMX-BF16 / AVX512-BF16);
- ``onnx_fp32``: the ONNX export (:func:`ditsam.export.export_onnx`) on ONNX Runtime, float32;
- ``int8``: that export quantised (:func:`ditsam.int8.quantize_onnx`, what ``dtype="int8"`` runs);
- ``openvino`` (when the ``openvino`` package is installed): the same export compiled by OpenVINO for the
  CPU (:class:`ditsam.openvino_backend.OpenVinoRunner`, what ``dtype="openvino"`` runs: latency hint, its
  inference precision bf16 on a CPU with AMX / AVX512-BF16);
- ``openvino_fp32``: OpenVINO with the inference precision forced to float32.

The model is exported once per backbone; every thread count then builds its own sessions (ONNX Runtime's
intra-op threads, OpenVINO's ``INFERENCE_NUM_THREADS``, ``torch.set_num_threads``). One warm-up call each,
then ``--repeats`` interleaved rounds (every backend once per round); medians, mins, the ratio to fp32 and
each backend's mask agreement with fp32 (IoU of the thresholded masks on the timed photo; random weights:
what agrees is the arithmetic). Results: ``benchmarks/results/cpu_backends.json`` with the machine (CPU
model and flags); a Markdown table is printed for benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from int8_cpu import IMAGE_SHAPE, SENTENCE, iou, speed_model, time_interleaved
from machine import machine_info

HERE = Path(__file__).resolve().parent
BACKBONES = ("vit_b", "vit_l", "vit_h", "efficientsam_ti", "efficientsam_s")
DEFAULT_BACKBONES = ("vit_b", "vit_l", "vit_h")
BACKENDS = ("fp32", "bf16", "onnx_fp32", "int8", "openvino", "openvino_fp32")
OPENVINO_BACKENDS = ("openvino", "openvino_fp32")


def backend_segmenters(model: Any, float_path: Path, int8_path: Path, backends: list[str], threads: int) -> dict:
    """Backend name -> (its Segmenter, a note: OpenVINO's inference precision) at ``threads`` threads."""
    from ditsam import Segmenter
    from ditsam.int8 import OnnxRunner
    from ditsam.openvino_backend import OpenVinoRunner

    built: dict[str, tuple[Any, str]] = {}
    for name in backends:
        note = ""
        if name == "fp32":
            segmenter = Segmenter(model, device="cpu", dtype="fp32")
        elif name == "bf16":
            segmenter = Segmenter(model, device="cpu", dtype=torch.bfloat16)
        else:
            segmenter = Segmenter(model, device="cpu", dtype="fp32")
            if name in OPENVINO_BACKENDS:
                runner = OpenVinoRunner(
                    float_path, threads=threads, precision="f32" if name == "openvino_fp32" else None
                )
                note = f"inference precision {runner.precision}"
            else:
                runner = OnnxRunner(int8_path if name == "int8" else float_path, threads=threads)
            segmenter.onnx = runner
        built[name] = (segmenter, note)
    return built


def measure_backbone(backbone: str, backends: list[str], threads_list: list[int], repeats: int) -> dict[str, Any]:
    from ditsam.export import export_onnx
    from ditsam.int8 import quantize_onnx

    entry: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix=f"ditsam-backends-{backbone}-") as folder:
        model = speed_model(Path(folder), backbone)
        entry["parameters_m"] = sum(p.numel() for p in model.parameters()) / 1e6
        float_path, int8_path = Path(folder) / "model.onnx", Path(folder) / "model_int8.onnx"
        began = time.perf_counter()
        if any(name not in ("fp32", "bf16") for name in backends):
            export_onnx(model, float_path, verify=False)
            entry["export_s"] = time.perf_counter() - began
        if "int8" in backends:
            began = time.perf_counter()
            quantize_onnx(float_path, int8_path)
            entry["quantize_s"] = time.perf_counter() - began
        print(f"{backbone}: {entry}", flush=True)
        image = np.random.default_rng(0).integers(0, 256, size=IMAGE_SHAPE, dtype=np.uint8)
        for threads in threads_list:
            torch.set_num_threads(threads)
            built = backend_segmenters(model, float_path, int8_path, backends, threads)
            print(f"{backbone}, {threads} thread(s): built {', '.join(built)}", flush=True)
            timings = time_interleaved(
                {name: (lambda s=segmenter: s.predict(image, SENTENCE)) for name, (segmenter, _) in built.items()},
                repeats,
            )
            masks = {name: segmenter.predict(image, SENTENCE).mask for name, (segmenter, _) in built.items()}
            for name, timing in timings.items():
                timing["speedup_vs_fp32"] = (
                    timings["fp32"]["median_s"] / timing["median_s"] if "fp32" in timings else None
                )
                timing["mask_iou_vs_fp32"] = iou(masks[name], masks["fp32"]) if "fp32" in masks else None
                timing["note"] = built[name][1]
            entry[f"threads_{threads}"] = timings
            del built
            gc.collect()
        del model
        gc.collect()
    return entry


def markdown(record: dict[str, Any]) -> str:
    """One row per backbone and thread count, one column per backend: median seconds (x vs fp32)."""
    backends = record["backends"]
    lines = [
        "| backbone | threads | " + " | ".join(backends) + " |",
        "|---|---|" + "---|" * len(backends),
    ]
    for backbone, entry in record["results"].items():
        for key in sorted(k for k in entry if k.startswith("threads_")):
            cells = []
            for name in backends:
                timing = entry[key].get(name)
                cells.append(
                    "--" if timing is None else f"{timing['median_s']:.2f} s ({timing['speedup_vs_fp32']:.2f}x)"
                )
            lines.append(f"| {backbone} | {key.removeprefix('threads_')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbones", nargs="+", choices=BACKBONES, default=list(DEFAULT_BACKBONES))
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=None, help="default: all available")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=4, help="timed rounds (every backend once per round)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "cpu_backends.json")
    args = parser.parse_args(argv)
    backends = args.backends or [
        b for b in BACKENDS if b not in OPENVINO_BACKENDS or importlib.util.find_spec("openvino") is not None
    ]
    if any(b in OPENVINO_BACKENDS for b in backends) and importlib.util.find_spec("openvino") is None:
        parser.error("the openvino backends need the openvino package: pip install openvino")
    record: dict[str, Any] = {
        "benchmark": "cpu_backends",
        "machine": machine_info(),
        "sentence": SENTENCE,
        "image_shape": list(IMAGE_SHAPE),
        "repeats": args.repeats,
        "backends": backends,
        "results": {},
    }
    if importlib.util.find_spec("openvino") is not None:
        import openvino

        record["openvino"] = openvino.__version__
    import onnxruntime

    record["onnxruntime"] = onnxruntime.__version__
    began = time.perf_counter()
    for backbone in args.backbones:
        record["results"][backbone] = measure_backbone(backbone, backends, args.threads, args.repeats)
        record["wall_s"] = time.perf_counter() - began
        record["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")  # each backbone as it ends
    print(markdown(record))
    print(f"wrote {args.out} ({record['wall_s'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
