"""``ditsam eval``: a model (checkpoint folder, Hub id or authors' .pth) scored on the splits of an experiment's data."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import yaml

from ditsam.config import parse_override
from ditsam.engine.config import ExperimentConfig, load_experiment
from ditsam.engine.data import ris_dataset
from ditsam.engine.evaluate import SamplePrediction, evaluate
from ditsam.engine.pictures import save_prediction_pictures
from ditsam.metrics import summarize, write_results
from ditsam.versions import VERSIONS_KEY, software_versions

if TYPE_CHECKING:
    from ditsam.model.checkpoints import ResolvedSource

logger = logging.getLogger(__name__)


def _experiment(checkpoint: ResolvedSource, data: str | None, overrides: Sequence[str]) -> ExperimentConfig:
    parsed = dict(parse_override(o) for o in overrides)
    if data is not None:
        return load_experiment(data, parsed)
    if not checkpoint.path.is_dir():
        raise FileNotFoundError(
            f"{checkpoint} is a checkpoint file without a stored experiment: pass --data EXPERIMENT to say which "
            f"data to evaluate on"
        )
    stored = checkpoint.path / "experiment.yaml"
    if not stored.is_file():
        raise FileNotFoundError(f"{stored} does not exist: pass --data EXPERIMENT to say which data to evaluate on")
    config = ExperimentConfig.from_dict(yaml.safe_load(stored.read_text(encoding="utf-8")))
    return config.with_overrides(parsed) if parsed else config


class _MaskDump:
    """Writes every prediction as PNG (one file per sentence) or collects COCO RLE."""

    def __init__(self, kind: str, folder: Path) -> None:
        self.kind, self.folder, self.records = kind, folder, []
        if kind == "png":
            folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, sample: SamplePrediction) -> None:
        if self.kind == "png":
            from PIL import Image

            Image.fromarray(sample.pred.astype(np.uint8) * 255).save(
                self.folder / f"{sample.ref_id}_{sample.sent_id}.png"
            )
        elif self.kind == "rle":
            from ditsam.data.segmentation import encode_rle

            self.records.append(
                {
                    "ref_id": sample.ref_id,
                    "sent_id": sample.sent_id,
                    "sentence": sample.sentence,
                    "iou": sample.iou,
                    "segmentation": encode_rle(sample.pred),
                }
            )

    def close(self, path: Path) -> None:
        if self.kind == "rle":
            path.write_text(json.dumps(self.records))


def _default_out(source: ResolvedSource) -> Path:
    """runs/NAME/eval/best for runs/NAME/checkpoints/best; eval/STEM beside a file; runs/eval/OWNER--NAME
    for a Hub id (never inside the Hub cache)."""
    if source.repo_id is not None:
        return Path("runs") / "eval" / source.repo_id.replace("/", "--")
    if source.path.is_dir():
        return source.path.parent.parent / "eval" / source.path.name
    return source.path.parent / "eval" / source.path.stem


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    data: str | None = None,
    overrides: Sequence[str] = (),
    splits: Sequence[str] | None = None,
    batch_size: int = 16,
    threshold: float | None = None,
    out: Path | None = None,
    dump_masks: str = "none",
    device: str | None = None,
    num_pictures: int = 6,
    revision: str | None = None,
    injection: str | None = None,
    text_name_or_path: str | None = None,
    protocol: str = "exact",
    dtype: str = "auto",
    prompt: str = "text",
) -> tuple[dict[str, dict[str, Any]], Path]:
    """Evaluate ``checkpoint`` -- any model source of :func:`ditsam.model.checkpoints.load_pretrained` (a folder,
    a Hub id with ``revision``, the authors' ``.pth`` with ``injection`` / ``text_name_or_path``) -- and
    write results.json / results.md / pictures to ``out``. Only a training run's folder stores its
    experiment; other sources need ``data``. ``protocol``: "exact" (ours) or "reference" (the authors' test
    code, see :mod:`ditsam.engine.evaluate`); results.json records it per split, with the process count, the
    precision (``dtype``: "auto", as :func:`ditsam.inference.devices.resolve_dtype`) and the ditsam and torch
    versions. ``prompt``: "text", or Table 4's "box" / "points" drawn from the ground truth (the default
    ``out`` then ends in ``-box`` / ``-points``)."""
    from ditsam.engine.evaluate import PROTOCOLS
    from ditsam.engine.prompts import EVAL_PROMPTS

    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {protocol!r}: use one of {', '.join(PROTOCOLS)}")
    if prompt not in EVAL_PROMPTS:
        raise ValueError(f"unknown evaluation prompt {prompt!r}: use one of {', '.join(EVAL_PROMPTS)}")
    from accelerate import Accelerator

    from ditsam.api import resolve_device
    from ditsam.distributed import check_joined, on_main, use_cpu
    from ditsam.inference.devices import resolve_dtype
    from ditsam.model.checkpoints import resolve_pretrained
    from ditsam.model.dit import DITSam
    from ditsam.outputs import ensure_writable_folder

    if device is not None:
        resolve_device(device)  # an unusable device fails before the model loads
    source = resolve_pretrained(DITSam, checkpoint, revision=revision, text_name_or_path=text_name_or_path)
    if source.released is not None:
        text_name_or_path = None  # it served the conversion; the folder carries its text model
    experiment = _experiment(source, data, overrides)
    # cpu=True on a machine without CUDA: only then do launched CPU processes join one (gloo) group.
    accelerator = Accelerator(cpu=use_cpu(device))
    check_joined(accelerator.num_processes)
    if out is None:
        out = _default_out(source)
        if prompt != "text":
            out = out.with_name(f"{out.name}-{prompt}")
    on_main(lambda: ensure_writable_folder(out, what="--out"))  # made before any process writes into it
    model = DITSam.from_pretrained(
        source.path,
        injection=injection,
        text_name_or_path=text_name_or_path,  # type: ignore[arg-type]
    ).to(device or accelerator.device)
    import torch

    autocast = resolve_dtype(dtype, device=next(model.parameters()).device)
    mixed_precision = {None: "no", torch.bfloat16: "bf16", torch.float16: "fp16"}[autocast]
    # The checkpoint's own architecture decides the input size, whatever the data config says.
    experiment = experiment.with_overrides({"model": model.config.to_dict()})
    results: dict[str, dict[str, Any]] = {}
    for split in splits or experiment.data.eval_splits:
        dataset = ris_dataset(experiment, split, train=False)
        dump = _MaskDump(dump_masks, out / f"masks_{split}")
        result = evaluate(
            model,
            dataset,
            batch_size=batch_size,
            threshold=experiment.train.threshold if threshold is None else threshold,
            num_workers=experiment.data.num_workers,
            process_index=accelerator.process_index,
            num_processes=accelerator.num_processes,
            all_reduce=lambda t: accelerator.reduce(t, reduction="sum"),
            keep=num_pictures,
            on_prediction=dump if dump_masks != "none" else None,
            protocol=protocol,
            mixed_precision=mixed_precision,  # type: ignore[arg-type]
            prompt=prompt,
        )
        dump.close(
            out / f"masks_{split}.rle.json"
            if accelerator.num_processes == 1
            else out / f"masks_{split}.rank{accelerator.process_index}.rle.json"
        )
        results[split] = {
            **result.metrics,
            "count": result.count,
            "protocol": protocol,
            "prompt": prompt,
            "processes": accelerator.num_processes,
            "dtype": mixed_precision,
            VERSIONS_KEY: software_versions(),
        }
        source = getattr(dataset.base, "source", None)
        if source is not None:  # gRefCOCO was renumbered once: say which refs file was scored
            results[split]["data_source"] = source
        if accelerator.is_main_process and result.kept:
            save_prediction_pictures(result.kept, dataset, out / f"predictions_{split}.png")
        logger.info("%s: %d sentences, %s", split, result.count, summarize(result.metrics))
    if accelerator.is_main_process:
        write_results(out, results, title=f"## {checkpoint} ({protocol} protocol, {prompt} prompts)")
    return results, out
