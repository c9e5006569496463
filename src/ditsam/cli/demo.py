"""``ditsam demo``: the main job on the built-in RefShapes benchmark, CPU-sized.

Generates RefShapes' evaluation splits, instruction-tunes the shipped tiny SAM (``refshapes-sam``) into an
L-DIT and into the decoder-only baseline with the same recipe and budget (fresh training scenes on the fly),
evaluates both on val / testA / testB, scores the tiny SAM itself with point and box prompts (Table 4's
first rows), and writes a results table, ``results.json`` and prediction pictures to one folder.

A folder that already holds a demo's results (a second ``make demo``) is refused with a message
saying how to replace it (``--overwrite``; ``make demo DEMO_ARGS=--overwrite``) or where else to
write (``--out``): an hour of results is never replaced without being asked.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

logger = logging.getLogger(__name__)

# (label, packaged experiment) of the models the demo trains, in the order of the table.
DEMO_MODELS = (("L-DIT", "refshapes/ldit"), ("SAM decoder-only (default)", "refshapes/default"))
# Files the demo writes beside its run folders (one per trained model).
DEMO_RESULTS = ("results.md", "results.json")
# Table 4's prompts the demo scores the start with, and how the results table names them.
PROMPT_LABELS = {"points": "5 clicks on the target", "box": "the target's box"}
# A sentence of the benchmark's vocabulary to try the trained model on.
EXAMPLE_SENTENCE = "the leftmost red shape"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="the main job: train and compare L-DIT and the SAM baseline on RefShapes (CPU, minutes)",
        description="Generate RefShapes, train a tiny L-DIT and the decoder-only baseline, evaluate both and "
        "write a results table (results.md, results.json) and prediction pictures.",
    )
    parser.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    parser.add_argument("--overwrite", action="store_true", help="replace the results of an earlier demo in --out")
    parser.add_argument("--data", default="data/refshapes", help="RefShapes folder, generated if missing")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per model (default: the experiment's)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides applied to both experiments")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ditsam.cli.errors import CLIError
    from ditsam.cli.train import train_reporting_errors
    from ditsam.config import parse_override
    from ditsam.engine.config import load_experiment
    from ditsam.metrics import format_table
    from ditsam.outputs import OutputFolderError, prepare_output_folder, remove_outputs

    out = Path(args.out)
    overrides = dict(parse_override(o) for o in args.overrides)
    overrides["data.root"] = args.data
    if args.epochs is not None:
        overrides["train.epochs"] = args.epochs
    configs = {label: load_experiment(experiment, overrides) for label, experiment in DEMO_MODELS}
    earlier = [*DEMO_RESULTS, *(config.name for config in configs.values())]
    try:
        prepare_output_folder(out, what="--out", holds_results=earlier, overwrite=args.overwrite, resume_flag=None)
    except OutputFolderError as error:
        raise CLIError(f"{error} (`ditsam demo --overwrite`; with make: `make demo DEMO_ARGS=--overwrite`)") from None
    if args.overwrite:
        remove_outputs(out, DEMO_RESULTS)
    results: dict[str, dict[str, dict[str, float]]] = {}
    seconds: dict[str, float] = {}
    for label, config in configs.items():
        started = time.perf_counter()
        logger.info("training %s (%s)", label, config.name)
        results[config.name] = train_reporting_errors(config, run_dir=out / config.name, overwrite=args.overwrite)
        seconds[config.name] = time.perf_counter() - started
    sections = [
        format_table(results[config.name], title=f"### {label}: {config.name} ({seconds[config.name]:.0f} s)")
        for label, config in configs.items()
    ]
    start = next(iter(configs.values()))
    tiny_sam = _score_start(start)
    for prompt, scores in tiny_sam.items():
        sections.append(
            format_table(
                scores, title=f"### {start.train.init_checkpoint}, not trained on text: {PROMPT_LABELS[prompt]}"
            )
        )
    table = "## RefShapes results (ditsam demo)\n\n" + "\n\n".join(sections) + "\n"
    (out / "results.md").write_text(table, encoding="utf-8")
    (out / "results.json").write_text(
        json.dumps({"models": results, "seconds": seconds, "start": tiny_sam}, indent=2), encoding="utf-8"
    )
    print(table)
    print(f"Results: {out / 'results.md'} and {out / 'results.json'}")
    for label, config in configs.items():
        run_dir = out / config.name
        checkpoint = run_dir / "checkpoints" / "best"
        print(
            f"{label}: checkpoint {checkpoint}, pictures {run_dir / 'predictions'}; try it with "
            f'`ditsam predict --checkpoint {checkpoint} --image {_example_image(config)} --text "{EXAMPLE_SENTENCE}"` '
            f"or `ditsam serve --checkpoint {checkpoint}`"
        )
    first, second = (results[config.name] for config in configs.values())
    gaps = ", ".join(
        f"{split} {first[split]['miou'] - second[split]['miou']:+.1f}" for split in first if split in second
    )
    print(
        f"L-DIT minus the decoder-only baseline, mIoU: {gaps}. Where this budget stands, the curves from scratch "
        'and from the tiny SAM, and longer budgets: benchmarks/README.md, "RefShapes from the tiny SAM".'
    )
    return 0


def _example_image(config) -> str:
    """A validation image of the generated data (any PNG of the RefShapes folder)."""
    images = sorted((Path(config.data.root) / "images").glob("*.png"))
    return str(images[-1]) if images else "IMAGE.png"


def _score_start(config) -> dict[str, dict[str, dict[str, float]]]:
    """The model the experiments start from, scored with point and box prompts on the evaluation splits
    ({prompt: {split: metrics}}); nothing when they train from scratch (``train.init_checkpoint=""``)."""
    if not config.train.init_checkpoint:
        return {}
    from ditsam.engine.data import ris_dataset
    from ditsam.engine.evaluate import evaluate
    from ditsam.model.checkpoints import CheckpointError
    from ditsam.model.dit import DITSam

    try:
        model = DITSam.from_pretrained(config.train.init_checkpoint)
    except CheckpointError as error:  # e.g. a SAM file: a start for training, not a model to score
        logger.warning("not scoring the start %s with points and boxes: %s", config.train.init_checkpoint, error)
        return {}
    splits = {split: ris_dataset(config, split, train=False) for split in config.data.eval_splits}
    return {
        prompt: {
            split: evaluate(model, dataset, prompt=prompt, progress=False).metrics for split, dataset in splits.items()
        }
        for prompt in PROMPT_LABELS
    }
