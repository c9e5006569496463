"""EfficientSAM-Ti against SAM ViT-B on the CPU: the whole ``Segmenter.predict``, L-DIT at 512 px.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/backbones_cpu.py      # ~20 s, one thread

The packaged ``refcoco/ldit`` (ViT-B) and ``refcoco/ldit_efficientsam_ti`` models, random weights (L-DIT
projections non-zero), a bert-base-sized random BERT (a generated vocabulary: nothing downloaded);
``Segmenter.predict`` of one 640x480 photo and a six-word sentence (preprocessing, BERT, ViT, decoder,
logits back to 640x480, threshold) in ``fp32`` and with ``dtype="auto"``; median of 3 calls after one
warm-up, one thread. Prints the seconds per call and the ratio ViT-B / EfficientSAM-Ti per dtype.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import BertConfig

from ditsam import Segmenter
from ditsam.engine.config import load_experiment
from ditsam.model.dit import DITSam

EXPERIMENTS = ("refcoco/ldit", "refcoco/ldit_efficientsam_ti")
DTYPES = ("fp32", "auto")
PHOTO_SHAPE = (480, 640, 3)
SENTENCE = "w1 w2 w3 w4 w5 w6"
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB_WORDS = 100
REPEATS = 3
PROJECTION_STD = 0.02  # the L-DIT projections start at zero: random ones make the text count


def main() -> None:
    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp())
    BertConfig().save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(SPECIAL_TOKENS + [f"w{i}" for i in range(VOCAB_WORDS)]) + "\n")
    photo = np.random.default_rng(0).integers(0, 256, PHOTO_SHAPE, dtype=np.uint8)
    results: dict[tuple[str, str], float] = {}
    for name in EXPERIMENTS:
        overrides = {"model.text.name_or_path": str(folder), "model.text.local_files_only": True}
        config = load_experiment(name, overrides).model
        torch.manual_seed(0)
        model = DITSam(config, load_text_weights=False)
        with torch.no_grad():
            for parameter_name, parameter in model.named_parameters():
                if "rel_pos" in parameter_name or ".writers." in parameter_name:
                    parameter.normal_(0.0, PROJECTION_STD)
        for dtype in DTYPES:
            segmenter = Segmenter(model, device="cpu", dtype=dtype)
            segmenter.predict(photo, SENTENCE)
            times = []
            for _ in range(REPEATS):
                began = time.perf_counter()
                segmenter.predict(photo, SENTENCE)
                times.append(time.perf_counter() - began)
            results[(name, dtype)] = statistics.median(times)
            print(name, dtype, segmenter.dtype, f"{results[(name, dtype)]:.3f} s", flush=True)
    for dtype in DTYPES:
        vit_b, tiny = results[(EXPERIMENTS[0], dtype)], results[(EXPERIMENTS[1], dtype)]
        print(f"{dtype}: ViT-B {vit_b:.3f} s, EfficientSAM-Ti {tiny:.3f} s, ratio {vit_b / tiny:.1f}x")


if __name__ == "__main__":
    main()
