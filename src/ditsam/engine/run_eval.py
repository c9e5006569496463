"""``ditsam eval``: a checkpoint folder scored on the splits of an experiment's data."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml

from ditsam.config import parse_override
from ditsam.data.collate import RISDataset
from ditsam.engine.config import ExperimentConfig, load_experiment
from ditsam.engine.data import open_split, transform_for
from ditsam.engine.evaluate import SamplePrediction, evaluate
from ditsam.engine.pictures import save_prediction_pictures
from ditsam.metrics import format_table

logger = logging.getLogger(__name__)


def _experiment(checkpoint: Path, data: str | None, overrides: Sequence[str]) -> ExperimentConfig:
    parsed = dict(parse_override(o) for o in overrides)
    if data is not None:
        return load_experiment(data, parsed)
    stored = checkpoint / "experiment.yaml"
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

            Image.fromarray(sample.pred.astype(np.uint8) * 255).save(self.folder / f"{sample.ref_id}_{sample.sent_id}.png")
        elif self.kind == "rle":
            from pycocotools import mask as mask_utils

            rle = mask_utils.encode(np.asfortranarray(sample.pred.astype(np.uint8)))
            self.records.append({"ref_id": sample.ref_id, "sent_id": sample.sent_id, "sentence": sample.sentence,
                                 "iou": sample.iou, "segmentation": {"size": [int(v) for v in rle["size"]],
                                                                     "counts": rle["counts"].decode("ascii")}})

    def close(self, path: Path) -> None:
        if self.kind == "rle":
            path.write_text(json.dumps(self.records))


def evaluate_checkpoint(
    checkpoint: Path, *, data: str | None = None, overrides: Sequence[str] = (), splits: Sequence[str] | None = None,
    batch_size: int = 16, threshold: float | None = None, out: Path | None = None, dump_masks: str = "none",
    device: str | None = None, num_pictures: int = 6,
) -> tuple[dict[str, dict[str, float]], Path]:
    """Evaluate ``checkpoint`` and write results.json / results.md / pictures to ``out``."""
    from accelerate import Accelerator

    from ditsam.model.dit import DITSam

    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"checkpoint folder {checkpoint} does not exist")
    experiment = _experiment(checkpoint, data, overrides)
    accelerator = Accelerator(cpu=device == "cpu")
    model = DITSam.from_pretrained(checkpoint).to(device or accelerator.device)
    # The checkpoint's own architecture decides the input size, whatever the data config says.
    experiment = experiment.with_overrides({"model": model.config.to_dict()})
    out = out or checkpoint.parent.parent / "eval" / checkpoint.name
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, float]] = {}
    for split in splits or experiment.data.eval_splits:
        dataset = RISDataset(open_split(experiment.data, split, mode="eval"), transform=transform_for(experiment, train=False),
                             train=False, seed=0)
        dump = _MaskDump(dump_masks, out / f"masks_{split}")
        result = evaluate(
            model, dataset, batch_size=batch_size,
            threshold=experiment.train.threshold if threshold is None else threshold,
            num_workers=experiment.data.num_workers, process_index=accelerator.process_index,
            num_processes=accelerator.num_processes, all_reduce=lambda t: accelerator.reduce(t, reduction="sum"),
            keep=num_pictures, on_prediction=dump if dump_masks != "none" else None,
        )
        dump.close(out / f"masks_{split}.rle.json" if accelerator.num_processes == 1
                   else out / f"masks_{split}.rank{accelerator.process_index}.rle.json")
        results[split] = {**result.metrics, "count": result.count}
        if accelerator.is_main_process and result.kept:
            save_prediction_pictures(result.kept, dataset, out / f"predictions_{split}.png")
        logger.info("%s: %d sentences, oIoU %.2f, mIoU %.2f", split, result.count, result.metrics["oiou"], result.metrics["miou"])
    if accelerator.is_main_process:
        (out / "results.json").write_text(json.dumps(results, indent=2))
        (out / "results.md").write_text(format_table(results, title=f"## {checkpoint}") + "\n")
    return results, out
