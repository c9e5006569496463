"""Score the tiny RefShapes SAM with Table 4's prompts and ship it inside the package as ``refshapes-sam``.

    ditsam train refshapes/sam                      # 80 epochs of 2,000 fresh scenes
    python benchmarks/refshapes_sam.py --run runs/refshapes-sam --train-minutes M

Scores the run's best checkpoint on val / testA / testB with the ground-truth box and with 5 random clicks on
the ground-truth mask (``ditsam eval --prompt box|points``), records them with the machine in
``benchmarks/results/refshapes_sam.json``, and writes the ``save_pretrained`` folder
``src/ditsam/pretrained/refshapes-sam/`` with a model card saying how it was trained, its scores, the command
that retrains it and the SHA-256 of its weights. ``--mlm-steps N`` first pretrains the text encoder by
masked-language modelling on fresh RefShapes training sentences (``ditsam.engine.text_mlm``, BERT's objective;
the SAM parts untouched). The shipped model does not: measured, an L-DIT tuned from such a start scored val
mIoU 25.5 at half the demo's budget against 37.6 from the untrained text encoder (benchmarks/README.md).
Prints that digest, which ``BUNDLED_MODELS`` in
``ditsam/model/checkpoints/bundled.py`` must record (a test checks that the two agree).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from ditsam.data.refshapes.writer import scene_sentences
from ditsam.digest import file_sha256
from ditsam.engine.run_eval import evaluate_checkpoint
from ditsam.engine.text_mlm import pretrain_text_encoder
from ditsam.model.checkpoints import BUNDLED_DIR, WEIGHTS_FILE
from ditsam.model.dit import DITSam
from machine import machine_info

NAME = "refshapes-sam"
EXPERIMENT = "refshapes/sam"
PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ditsam" / BUNDLED_DIR / NAME
PROMPTS = ("box", "points")
CARD = "README.md"
# Seed of the MLM sentence stream, apart from the seeds training streams use.
MLM_SEED = 7919


def mlm_sentences(*, batch_size: int):
    """``step -> batch_size`` sentences of fresh RefShapes training scenes (drawn without their pixels)."""
    rng = np.random.default_rng(MLM_SEED)
    pool: list[str] = []

    def batch(step: int) -> list[str]:
        while len(pool) < batch_size:
            pool.extend(scene_sentences(rng, preset="demo"))
        taken = pool[:batch_size]
        del pool[:batch_size]
        return taken

    return batch


CARD_HEADER = """---
library_name: ditsam
license: apache-2.0
pipeline_tag: mask-generation
tags:
  - segment-anything
  - promptable-segmentation
  - dit-sam
---

# refshapes-sam: the tiny SAM of RefShapes
"""
USAGE = """```python
from ditsam import Segmenter

sam = Segmenter.from_pretrained("refshapes-sam")           # shipped with ditsam: no network
result = sam.predict("scene.png", points=([[40.5, 31.5]], [1]))  # or boxes=[x1, y1, x2, y2]; no text
result.mask                                                 # (H, W) bool
```

Instruction-tune it as the paper tunes SAM: `ditsam train refshapes/ldit` (every `refshapes/*` experiment
starts from it: `train.init_checkpoint=refshapes-sam`)."""


def card_text(notes: list[str], *, parameters: int, digest: str) -> str:
    """The model card: what it is, how to use and retrain it, its scores and the SHA-256 of its weights."""
    body = "\n".join(notes)
    return (
        f"{CARD_HEADER}\n{body}\n\n## Use\n\n{USAGE}\n\n## Architecture\n\nThe RefShapes ViT (4 blocks x 64, patch 8, "
        f"96 px input, global attention), SAM's prompt encoder and mask decoder at width 64, one mask; the generated "
        f"tiny BERT and W_o ride along for the DIT experiments. {parameters:,} parameters.\n\n"
        f"## Integrity\n\nSHA-256 of `{WEIGHTS_FILE}`: `{digest}`\n"
    )


def card_notes(
    scores: dict[str, dict[str, dict[str, float]]], *, minutes: float, machine: dict, mlm: dict[str, float] | None
) -> list[str]:
    """The model card's notes: what the model is, how it was trained, its scores and how to retrain it."""
    text = (
        "Its text encoder (the generated tiny BERT, which the SAM training never uses) was then pretrained as BERT "
        f"is, by masked-language modelling on {mlm['sentences']:,} fresh RefShapes training sentences (loss "
        f"{mlm['first_loss']:.2f} -> {mlm['last_loss']:.2f}); the text projection W_o never trained."
        if mlm
        else "Its text encoder (the generated tiny BERT) and the text projection W_o never trained: the SAM "
        "training uses no text, and the DIT experiments train them (a masked-language-model pretraining of the "
        "text encoder made the tuned L-DIT worse, see benchmarks/README.md)."
    )
    lines = [
        f"`{NAME}` is the tiny SAM of ditsam's built-in RefShapes benchmark, shipped inside the package: "
        '`DITSam.from_pretrained("refshapes-sam")`, `Segmenter.from_pretrained("refshapes-sam")` (point and box '
        "prompts) and `train.init_checkpoint=refshapes-sam`, the start of every `refshapes/*` experiment, as SAM "
        "ViT-B is of every `refcoco/*` one.",
        "",
        "It was trained as SAM is, class-agnostic, on points and boxes only: per step a point prompt (1-5 "
        "positive and 0-2 negative clicks drawn from the target mask) or a box (the target's extent, each side "
        "jittered by 5 % of its length), BCE + Dice loss, on an endless stream of fresh RefShapes scenes (80 x "
        "2,000 = 160,000 scenes, batch 8). " + text,
        "",
        f"Retrain it: `ditsam train {EXPERIMENT}` ({minutes:.0f} minutes of wall time on {machine['usable_cores']} "
        f"cores of an {machine['cpu_model']}), then `python benchmarks/refshapes_sam.py --run runs/{NAME} --train-minutes M` "
        "(the scores below and this folder).",
        "",
        "Scores (mIoU / oIoU / P@0.5, percent, `ditsam eval refshapes-sam --data refshapes/sam --prompt PROMPT`; "
        "box: the ground-truth box; points: 5 random clicks on the ground-truth mask, seeded per sentence):",
        "",
        "| prompt | split | mIoU | oIoU | P@0.5 |",
        "|---|---|---|---|---|",
    ]
    for prompt, splits in scores.items():
        for split, values in splits.items():
            lines.append(
                f"| {prompt} | {split} | {values['miou']:.1f} | {values['oiou']:.1f} | {values['p@0.5']:.1f} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=f"runs/{NAME}", help="the refshapes/sam training run folder")
    parser.add_argument("--train-minutes", type=float, required=True, help="wall time of the training run")
    parser.add_argument(
        "--mlm-steps", type=int, default=0, help="masked-language-model steps of the text encoder first (default: none)"
    )
    parser.add_argument("--mlm-batch", type=int, default=64, help="sentences per MLM step")
    parser.add_argument("--out", default="benchmarks/results/refshapes_sam.json")
    args = parser.parse_args()
    best = Path(args.run) / "checkpoints" / "best"
    model = DITSam.from_pretrained(best)
    mlm, losses = None, []
    if args.mlm_steps:
        losses = pretrain_text_encoder(model, mlm_sentences(batch_size=args.mlm_batch), steps=args.mlm_steps)
        tail = max(1, args.mlm_steps // 20)
        mlm = {
            "steps": args.mlm_steps,
            "sentences": args.mlm_steps * args.mlm_batch,
            "first_loss": sum(losses[:tail]) / tail,
            "last_loss": sum(losses[-tail:]) / tail,
        }
    machine = machine_info()
    staging = Path(args.run) / "ship"
    for earlier in (staging, *(Path(args.run) / f"eval-{prompt}" for prompt in PROMPTS)):
        shutil.rmtree(earlier, ignore_errors=True)  # this script's own outputs of an earlier invocation
    model.save_pretrained(staging)
    scores = {}
    for prompt in PROMPTS:
        results, _ = evaluate_checkpoint(
            staging,
            data=EXPERIMENT,
            prompt=prompt,
            out=Path(args.run) / f"eval-{prompt}",
            device="cpu",
            dtype="fp32",
            num_pictures=4,
        )
        scores[prompt] = {split: {k: float(v[k]) for k in ("miou", "oiou", "p@0.5")} for split, v in results.items()}
    if PACKAGE.exists():
        shutil.rmtree(PACKAGE)
    notes = card_notes(scores, minutes=args.train_minutes, machine=machine, mlm=mlm)
    model.save_pretrained(PACKAGE, training_data="RefShapes (generated by ditsam)")
    digest = file_sha256(PACKAGE / WEIGHTS_FILE)
    parameters = sum(p.numel() for p in model.parameters())
    (PACKAGE / CARD).write_text(card_text(notes, parameters=parameters, digest=digest), encoding="utf-8")
    record = {
        "machine": machine,
        "train_minutes": args.train_minutes,
        "text_mlm": None if mlm is None else {**mlm, "losses_every_100": losses[::100]},
        "scores": scores,
        "sha256": digest,
    }
    Path(args.out).write_text(json.dumps(record, indent=2))
    size = sum(p.stat().st_size for p in PACKAGE.rglob("*") if p.is_file())
    print(json.dumps(scores, indent=2))
    print(f"wrote {PACKAGE} ({size / 1e6:.2f} MB); sha256 {digest}")


if __name__ == "__main__":
    main()
