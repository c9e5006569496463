"""The ``backbones`` section of ``gpu_suite.py``: SAM's ViT-B against EfficientSAM-Ti / -S (L-DIT, 512 px, random
weights), each measured the way a user runs it -- ``Segmenter.predict`` on a 640x480 photo with ``dtype="auto"``
(bf16 autocast where the device does bf16 in hardware, float32 elsewhere: ditsam.inference.devices) -- and as the
bare model: batch-1 bf16 latency and images/s at the throughput batch. Ratios are to the first backbone (ViT-B)."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from gpu_harness import in_precision, measure, model_call

# A photo-sized input (the Segmenter resizes and pads it to the model's 512 px canvas).
PHOTO_HEIGHT, PHOTO_WIDTH = 480, 640
# Words of the sentence predicted (in the random BERT's generated vocabulary, gpu_harness.write_vocab).
SENTENCE = "w1 w2 w3 w4 w5 w6"


def section_backbones(suite: Any, record: dict[str, Any]) -> None:
    from ditsam import Segmenter

    models, device, scale = suite.models, suite.device, suite.scale
    models.drop()
    photo = np.random.default_rng(0).integers(0, 256, (PHOTO_HEIGHT, PHOTO_WIDTH, 3), dtype=np.uint8)
    for name, overrides in scale.backbones:
        entry: dict[str, Any] = record.setdefault(name, {})
        if suite.left() < 10 * suite.time_scale:
            entry["status"] = "skipped: out of time"
            continue
        model = models.build("ldit", **overrides)
        segmenter = Segmenter(model, device=device, dtype="auto")
        entry["auto_dtype"] = str(segmenter.dtype).removeprefix("torch.")
        entry["predict_auto"] = measure(
            functools.partial(segmenter.predict, photo, SENTENCE), device=device, iters=scale.latency_iters
        )
        size = model.config.image_size
        images, tokens = models.images(1, size), models.tokens(1, lengths=(8,))
        entry["model_bf16_b1"] = measure(
            in_precision("bf16", device, model_call(model, images, tokens)), device=device, iters=scale.latency_iters
        )
        batch = scale.throughput_batch
        images, tokens = models.images(batch, size), models.tokens(batch)
        timing = measure(
            in_precision("bf16", device, model_call(model, images, tokens)),
            device=device,
            iters=scale.throughput_iters,
            warmup=1,
        )
        entry[f"bf16_b{batch}"] = {**timing, "images_per_s": batch / (timing["median_ms"] / 1e3)}
        entry["parameters_m"] = sum(p.numel() for p in model.image_encoder.parameters()) / 1e6
        del model, segmenter, images, tokens
        first = record[scale.backbones[0][0]]
        if "predict_auto" in first:
            entry["predict_speedup_vs_first"] = first["predict_auto"]["median_ms"] / entry["predict_auto"]["median_ms"]
        print(
            f"  {name}: predict ({entry['auto_dtype']}) {entry['predict_auto']['median_ms']:.2f} ms, "
            f"b1 bf16 {entry['model_bf16_b1']['median_ms']:.2f} ms, b{batch} "
            f"{entry[f'bf16_b{batch}']['images_per_s']:.0f} images/s",
            flush=True,
        )
