"""Inference latency and throughput on the CPU: Segmenter and bare model, plain SAM vs E-DIT vs L-DIT.

What is timed (random weights, ``torch.inference_mode``; nothing is downloaded):

- ``hf_sam_encoder``: transformers' ``SamVisionModel`` (SAM's ViT with its neck) built from a
  ``SamVisionConfig`` at the given size, image 512 -- the "plain SAM" reference. SAM's own layout:
  14x14 windows, global attention in blocks 2, 5, 8, 11.
- ``ours_encoder_sam_layout``: our ``ImageEncoderViT`` in that same layout, no text -- the same
  work as the reference, so the ratio of the two compares implementations.
- ``model_none`` / ``model_e2e`` / ``model_ldit``: the whole ``DITSam`` forward (text encoder, ViT,
  decoder, upsampling to 512) with text only in the decoder (SAM's text baseline), E-DIT and
  L-DIT; every ViT block global over [20 text tokens; 32x32 patches], as the paper's models.
  The text encoder is a tiny random BERT (``build_tiny_bert``, 2 layers, width 64) because
  bert-base cannot be downloaded; a real BERT-base adds ~4 GFLOP for 20 tokens, ~2 % of ViT-B's
  ~217 GFLOP.
- ``segmenter_ldit``: ``Segmenter.predict`` with the L-DIT model on a 640x480 RGB numpy image:
  preprocessing, tokenisation, forward, mapping the logits back to 640x480 and thresholding.
  Batch N = one image with N sentences (one preprocessing, N sentences in one forward).

Cases: ``vit_b`` (ViT-B at 512) and ``tiny`` (width 32, 2 blocks, 64 px: per-call overheads), fp32 and
bf16 autocast, batch 1 (latency) and batch N (throughput, per-image time reported). Within a case the
items run interleaved -- one warm-up call each, then ``--repeats`` rounds in which every item runs
once -- so that the load of a shared machine hits them alike; medians are reported, and ratios are
only taken between numbers of the same run. ``--compile`` sections time ``torch.compile`` (inductor)
against eager on the L-DIT model (first call = compilation) -- the tiny model by default, ViT-B with
``--compile-vit-b`` (about 3 minutes of compilation on a busy 2-core machine).

    .venv/bin/python benchmarks/latency.py                    # ~6-7 min on a shared 2-core CPU (cold compile cache: +1 min)
    .venv/bin/python benchmarks/latency.py --cases tiny       # seconds (plus ~1-2 min of compilation)
    .venv/bin/python benchmarks/latency.py --compile-vit-b --cases tiny   # + ViT-B compile section

Writes ``benchmarks/results/latency_cpu.json`` (with the machine) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ditsam.api import Segmenter
from ditsam.model.config import DITSamConfig
from ditsam.model.dit import DITSam
from ditsam.model.text import build_tiny_bert
from machine import machine_info
from smoke_models import SMOKE_SAM

RESULTS = Path(__file__).parent / "results" / "latency_cpu.json"
WORDS = "the man on left right of a red car dog woman in front small large near".split()
SENTENCE = "the man on the left of the red car"  # padded to 20 tokens, as every sentence
SEGMENTER_IMAGE = (480, 640)  # (H, W), a typical COCO picture
TINY_WINDOW = 3  # the tiny model's 4 x 4 grid padded to 6 x 6: windowed attention with padding, as ViT-B's 32 -> 42

SIZES = {
    # backbone, image size, HF SamVisionConfig fields
    "vit_b": dict(
        model=dict(backbone="vit_b", image_size=512),
        hf=dict(
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            mlp_dim=3072,
            global_attn_indexes=[2, 5, 8, 11],
            window_size=14,
            image_size=512,
        ),
    ),
    "tiny": dict(
        model=dict(SMOKE_SAM, window_size=TINY_WINDOW),
        hf=dict(
            hidden_size=SMOKE_SAM["embed_dim"],
            num_hidden_layers=SMOKE_SAM["depth"],
            num_attention_heads=SMOKE_SAM["num_heads"],
            mlp_dim=4 * SMOKE_SAM["embed_dim"],  # SAM's MLP ratio
            global_attn_indexes=SMOKE_SAM["global_attn_indexes"],
            window_size=TINY_WINDOW,
            image_size=SMOKE_SAM["image_size"],
            output_channels=SMOKE_SAM["prompt_embed_dim"],
        ),
    ),
}


# ---------------------------------------------------------------------------------------------------
# Machine
# ---------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------
# Items
# ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Item:
    name: str
    what: str
    make_call: Callable[[int, torch.dtype | None], Callable[[], object]]  # (batch, autocast dtype) -> call


def _autocast(dtype: torch.dtype | None):
    return torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()


def build_items(size: str, bert_dir: Path) -> list[Item]:
    from transformers import SamVisionConfig, SamVisionModel

    spec = SIZES[size]
    text = dict(name_or_path=str(bert_dir), max_tokens=20)
    torch.manual_seed(0)
    models = {
        injection: DITSam(
            DITSamConfig.from_dict(
                {
                    **spec["model"],
                    "injection": injection,
                    "attention": "global",
                    "injection_options": {"zero_init": False},
                    "text": text,
                }
            )
        ).eval()
        for injection in ("none", "e2e", "layerwise")
    }
    sam_layout = DITSam(
        DITSamConfig.from_dict({**spec["model"], "injection": "none", "attention": "windowed", "text": text})
    )
    ours_encoder = sam_layout.image_encoder.eval()
    hf = SamVisionModel(SamVisionConfig(**spec["hf"])).eval()
    side = spec["model"]["image_size"]
    segmenter = Segmenter(models["layerwise"], device="cpu", dtype="fp32")  # the timing loop sets its dtype itself
    photo = np.random.default_rng(0).integers(0, 256, size=(*SEGMENTER_IMAGE, 3), dtype=np.uint8)

    def images(batch: int) -> torch.Tensor:
        return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(batch))

    def model_call(model: DITSam) -> Callable[[int, torch.dtype | None], Callable[[], object]]:
        def make(batch: int, dtype: torch.dtype | None) -> Callable[[], object]:
            x, tokens = images(batch), model.tokenize([SENTENCE] * batch)

            def call() -> object:
                with _autocast(dtype):
                    return model(x, text=tokens).logits

            return call

        return make

    def encoder_call(
        forward: Callable[[torch.Tensor], object],
    ) -> Callable[[int, torch.dtype | None], Callable[[], object]]:
        def make(batch: int, dtype: torch.dtype | None) -> Callable[[], object]:
            x = images(batch)

            def call() -> object:
                with _autocast(dtype):
                    return forward(x)

            return call

        return make

    def segmenter_call(batch: int, dtype: torch.dtype | None) -> Callable[[], object]:
        segmenter.dtype = dtype
        segmenter.batch_size = batch
        sentences = [SENTENCE] * batch

        def call() -> object:
            segmenter.dtype = dtype
            return segmenter.predict(photo, sentences)

        return call

    return [
        Item(
            "hf_sam_encoder",
            "transformers SamVisionModel, SAM layout (windowed), no text",
            encoder_call(lambda x: hf(pixel_values=x).last_hidden_state),
        ),
        Item(
            "ours_encoder_sam_layout", "our ImageEncoderViT, SAM layout (windowed), no text", encoder_call(ours_encoder)
        ),
        Item(
            "model_none",
            "DITSam, text in the decoder only (SAM text baseline), global attention",
            model_call(models["none"]),
        ),
        Item("model_e2e", "DITSam E-DIT, global attention", model_call(models["e2e"])),
        Item("model_ldit", "DITSam L-DIT, global attention", model_call(models["layerwise"])),
        Item(
            "segmenter_ldit",
            f"Segmenter.predict, L-DIT, {SEGMENTER_IMAGE[1]}x{SEGMENTER_IMAGE[0]} numpy image",
            segmenter_call,
        ),
    ]


# ---------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------
def time_case(
    items: list[Item], *, batch: int, dtype: torch.dtype | None, repeats: int, warmup: bool
) -> dict[str, list[float]]:
    """Seconds per call of every item: warm-up call each, then ``repeats`` interleaved rounds."""
    calls = {item.name: item.make_call(batch, dtype) for item in items}
    times: dict[str, list[float]] = {name: [] for name in calls}
    with torch.inference_mode():
        if warmup:
            for call in calls.values():
                call()
        for _ in range(repeats):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
    return times


def time_compile(size: str, bert_dir: Path, *, repeats: int) -> dict:
    """torch.compile (inductor, default mode) vs eager for the L-DIT model, fp32, batch 1."""
    spec = SIZES[size]
    torch.manual_seed(0)
    model = DITSam(
        DITSamConfig.from_dict(
            {
                **spec["model"],
                "injection": "layerwise",
                "injection_options": {"zero_init": False},
                "text": dict(name_or_path=str(bert_dir), max_tokens=20),
            }
        )
    ).eval()
    side = spec["model"]["image_size"]
    x, tokens = torch.randn(1, 3, side, side), model.tokenize([SENTENCE])
    result: dict = {"case": size, "item": "model_ldit", "dtype": "fp32", "batch": 1}
    try:
        compiled = torch.compile(model)
        with torch.inference_mode():
            start = time.perf_counter()
            expected = model(x, text=tokens).logits
            got = compiled(x, text=tokens).logits
            result["first_call_s"] = round(time.perf_counter() - start, 3)
            result["max_abs_diff_vs_eager"] = float((got - expected).abs().max())
            eager, fast = [], []
            for _ in range(repeats):
                start = time.perf_counter()
                model(x, text=tokens)
                eager.append(time.perf_counter() - start)
                start = time.perf_counter()
                compiled(x, text=tokens)
                fast.append(time.perf_counter() - start)
        result.update(
            eager_s=statistics.median(eager),
            compiled_s=statistics.median(fast),
            speedup=statistics.median(eager) / statistics.median(fast),
            works=True,
        )
    except Exception as error:  # record why compile does not work here
        result.update(works=False, error=f"{type(error).__name__}: {str(error).splitlines()[0][:300]}")
    return result


# ---------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------
def markdown(report: dict) -> str:
    lines = []
    rows = report["results"]
    for case in dict.fromkeys(r["case"] for r in rows):
        settings = list(dict.fromkeys((r["dtype"], r["batch"]) for r in rows if r["case"] == case))
        header = " | ".join(f"{dtype} b{batch}" for dtype, batch in settings)
        lines += [
            f"**{case}** -- seconds per image (median), in brackets relative to `model_none` of the same column",
            "",
            f"| item | {header} |",
            "|---|" + "---|" * len(settings),
        ]
        for item in dict.fromkeys(r["item"] for r in rows if r["case"] == case):
            cells = []
            for dtype, batch in settings:
                match = [
                    r for r in rows if (r["case"], r["item"], r["dtype"], r["batch"]) == (case, item, dtype, batch)
                ]
                base = [
                    r
                    for r in rows
                    if (r["case"], r["item"], r["dtype"], r["batch"]) == (case, "model_none", dtype, batch)
                ]
                if not match:
                    cells.append("")
                    continue
                value = match[0]["per_image_s"]
                rel = f" ({value / base[0]['per_image_s']:.2f})" if base else ""
                cells.append(f"{value:.3f}{rel}" if value < 10 else f"{value:.1f}{rel}")
            lines.append(f"| `{item}` | " + " | ".join(cells) + " |")
        lines.append("")
    for entry in report.get("compile", []):
        if entry["works"]:
            lines.append(
                f"torch.compile, {entry['case']} L-DIT fp32 b1: first call (compilation) {entry['first_call_s']:.0f} s, "
                f"then {entry['compiled_s']:.3f} s vs eager {entry['eager_s']:.3f} s (x{entry['speedup']:.2f}); "
                f"max |compiled - eager| {entry['max_abs_diff_vs_eager']:.1e}"
            )
        else:
            lines.append(f"torch.compile, {entry['case']}: does not work here -- {entry['error']}")
    lines += [f"Note: {note}" for note in report.get("notes", [])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=["tiny", "vit_b"], choices=sorted(SIZES))
    parser.add_argument("--batch", type=int, default=4, help="N of the throughput setting (default 4)")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds per ViT-B setting (tiny: 5x)")
    parser.add_argument("--no-bf16", action="store_true")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile section")
    parser.add_argument("--compile-vit-b", action="store_true", help="also compile ViT-B (minutes)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)

    started = time.perf_counter()
    report: dict = {
        "machine": machine_info(),
        "settings": vars(args) | {"out": str(args.out)},
        "results": [],
        "compile": [],
        "notes": [],
    }
    native_bf16 = any(f in report["machine"]["isa"] for f in ("avx512_bf16", "amx_bf16"))
    report["notes"].append(
        "shared machine: other jobs ran during the measurement (see the load averages); absolute times vary "
        "between runs, compare ratios within one run (items of a case and setting run interleaved)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        bert_dir = build_tiny_bert(Path(tmp) / "bert", words=WORDS, hidden_size=64, num_layers=2)
        for case in args.cases:
            items = build_items(case, bert_dir)
            repeats = args.repeats * (5 if case == "tiny" else 1)
            settings = [(None, 1), (None, args.batch)]
            if not args.no_bf16:
                settings.append((torch.bfloat16, 1))
                if case == "tiny" or native_bf16:
                    settings.append((torch.bfloat16, args.batch))
                elif case == "vit_b":
                    note = (
                        "this CPU has no native bf16 matmul (no avx512_bf16 / amx_bf16): bf16 autocast is emulated and "
                        "slower than fp32, so ViT-B bf16 is timed at batch 1 only"
                    )
                    if note not in report["notes"]:
                        report["notes"].append(note)
            for dtype, batch in settings:
                chosen = items
                if case == "vit_b" and batch > 1:
                    # Throughput: the variants and the reference; one image with N sentences for the Segmenter.
                    chosen = [i for i in items if i.name != "ours_encoder_sam_layout"]
                if case == "vit_b" and dtype is not None:
                    # bf16 on ViT-B: the reference, the text baseline and L-DIT (keeps a full run < 10 min).
                    chosen = [i for i in chosen if i.name in ("hf_sam_encoder", "model_none", "model_ldit")]
                # Batch-N calls of ViT-B are long: the batch-1 warm-up already touched every code path.
                warm = not (case == "vit_b" and batch > 1)
                rounds = repeats if warm else max(1, repeats - 1)
                t0 = time.perf_counter()
                times = time_case(chosen, batch=batch, dtype=dtype, repeats=rounds, warmup=warm)
                name = "bf16" if dtype is not None else "fp32"
                for item in chosen:
                    median = statistics.median(times[item.name])
                    report["results"].append(
                        {
                            "case": case,
                            "item": item.name,
                            "what": item.what,
                            "dtype": name,
                            "batch": batch,
                            "median_s": median,
                            "per_image_s": median / batch,
                            "runs_s": [round(t, 4) for t in times[item.name]],
                        }
                    )
                print(
                    f"[{time.perf_counter() - started:6.0f} s] {case} {name} b{batch}: "
                    + ", ".join(f"{i.name} {statistics.median(times[i.name]) / batch:.3f}" for i in chosen)
                    + f"  ({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )
            del items
        if not args.no_compile:
            for case in ["tiny"] + (["vit_b"] if args.compile_vit_b else []):
                entry = time_compile(case, bert_dir, repeats=10 if case == "tiny" else 2)
                report["compile"].append(entry)
                print(f"[{time.perf_counter() - started:6.0f} s] compile {case}: {entry}", flush=True)
    report["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    report["machine"]["wall_s"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print()
    print(markdown(report))
    print(f"\nwritten to {args.out} in {report['machine']['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
