"""The paper's experiments at RefShapes scale: Tables 1-4 and the frozen visual / text table, several seeds.

    python benchmarks/refshapes_paper.py [--seeds 0 1 2] [--tables 1 2 frozen 3 4] [--only RUN ...] [--epochs N] \
        [key=value ...]

Every run instruction-tunes the shipped tiny SAM (``refshapes-sam``) as the paper tunes SAM ViT-B, with the
demo's recipe and budget, once per seed (``train.seed``: initialisation of the new parts, the stream of
training scenes, dropout); val / testA / testB are fixed by the data seed. A run shared by two tables (L-DIT,
the frozen rows) trains once. Finished runs are reused by a rerun: each run folder keeps ``paper_result.json``
(its scores per prompt and its inference time), written last, and a copy goes to ``--store``
(``benchmarks/results/refshapes_paper_runs/<run>/seed<N>.json``, committed: run folders do not outlive a
machine), so an interrupted invocation continues where it stopped, another machine or session carries on
from the store, and more seeds can be added later. Runs go seed by seed (every run of seed 0 first), and the
report always holds every table with every finished run; ``--report-only`` trains nothing, and
``--readme benchmarks/README.md`` also writes the tables into that file between its two marker lines.

Two at a time: the tiny models use a second core poorly (on the 2-core AMX Xeon an L-DIT-sized epoch takes about
50 s with two threads and 65 s with one), so two invocations with disjoint ``--only`` lists, each under
``OMP_NUM_THREADS=1``, train about 1.5x as many runs an hour; their run folders and store files are disjoint
(the report each writes at its end is partial: rebuild it with ``--report-only``).

The runs, tables and claims, and how a claim is judged: ``paper_tables.py``. Writes
``benchmarks/results/refshapes_paper.{json,md}``: one table per paper table (mean +- std over seeds of
mIoU per split, P@0.5 on val, the last epoch's training loss, training time per run, inference time per
sentence at batch 1 on this machine), then every claim the paper makes about each table, marked holds / does
not hold with its margin in standard deviations of the per-seed differences; and ``refshapes_paper.png``
(``paper_plot.py``): every row's score at every seed, so the spread between seeds is seen at a glance.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from ditsam.config import parse_override
from ditsam.engine.run_folder import METRICS_FILE
from machine import machine_info
from paper_plot import draw_seeds
from paper_tables import CLAIMS, RUNS, TABLES, Run, collect_scores, judge, markdown, on_plateau, splice

# The tiny SAM every run starts from, scored as Table 4's first rows (no training on text), with its
# experiment (the data it is scored on) and the prompts it is scored with.
TINY_SAM = "refshapes-sam"
TINY_SAM_EXPERIMENT = "refshapes/sam"
TINY_SAM_PROMPTS = ("points", "box")
# Sentences timed at batch 1 for a row's inference time (after one warm-up batch).
TIMED_SAMPLES = 32
# --retime: passes over the timed sentences per row, the rows taking turns; the row's time is the median of
# every forward, which a scheduler hiccup on a shared 2-core machine does not move as it moves a mean.
RETIME_PASSES = 5
RESULT_FILE = "paper_result.json"
# The untuned tiny SAM's entry in the store (it has no seed).
TINY_SAM_STORE_FILE = "sam.json"
# Beside --out: every row's inference time from one sitting (--retime), used by the report when present.
TIMING_SUFFIX = "_timing.json"

logger = logging.getLogger(__name__)


def _train_and_score(key: str, run: Run, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    from ditsam.engine.checkpoint import load_training_state
    from ditsam.engine.config import load_experiment
    from ditsam.engine.run_eval import evaluate_checkpoint
    from ditsam.engine.train import train

    run_dir = Path(args.runs) / key / f"seed{seed}"
    done = run_dir / RESULT_FILE
    overrides = {**dict(run.overrides), **args.common, "train.seed": seed}
    finished = _finished(key, seed, args)
    if finished is not None:
        if finished["overrides"] != overrides:
            raise SystemExit(
                f"the finished {key} seed {seed} ({_store_path(key, seed, args)} or {done}) has other settings "
                f"({finished['overrides']}, not {overrides}): give another --runs and --store"
            )
        return finished
    config = load_experiment(run.experiment, overrides)
    train(config, run_dir=run_dir, resume=(run_dir / "checkpoints" / "last").is_dir(), progress=False)
    # The checkpoint's count covers every session of a run resumed after an interruption, not only the last.
    seconds = load_training_state(run_dir / "checkpoints" / "last")["progress"]["train_seconds"]
    best = run_dir / "checkpoints" / "best"
    result = {
        "experiment": run.experiment,
        "overrides": overrides,
        "train_seconds": seconds,
        "last_epoch_loss": last_epoch_loss(run_dir / METRICS_FILE),
        "scores": {},
    }
    for prompt in run.prompts:
        shutil.rmtree(run_dir / f"eval-{prompt}", ignore_errors=True)  # an interrupted invocation's partial output
        scores, _ = evaluate_checkpoint(
            best, prompt=prompt, out=run_dir / f"eval-{prompt}", device="cpu", dtype="fp32", num_pictures=0
        )
        result["scores"][prompt] = {split: _metrics(values) for split, values in scores.items()}
        result.setdefault("ms_per_sentence", {})[prompt] = _inference_ms(best, run.experiment, prompt, args)
    _write_result(result, done, _store_path(key, seed, args))
    return result


def last_epoch_loss(metrics_file: Path) -> float | None:
    """The mean training loss logged in a run's last epoch (``metrics.jsonl``): near 0.70 for a run still on the
    plateau where a model that has not learnt to read sits; None when the file or its loss records are missing."""
    if not metrics_file.is_file():
        return None
    records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    losses = [(r["epoch"], r["train/loss"]) for r in records if "train/loss" in r]
    if not losses:
        return None
    last = max(epoch for epoch, _ in losses)
    return statistics.fmean(loss for epoch, loss in losses if epoch == last)


def _store_path(key: str, seed: int | None, args: argparse.Namespace) -> Path:
    """Where the store keeps a finished run (``seed`` None: the untuned tiny SAM)."""
    return Path(args.store) / (TINY_SAM_STORE_FILE if seed is None else f"{key}/seed{seed}.json")


def _finished(key: str, seed: int | None, args: argparse.Namespace) -> dict[str, Any] | None:
    """A finished run's result: from its run folder, else from the store; None when neither has it."""
    folder = Path(args.runs) / key if seed is None else Path(args.runs) / key / f"seed{seed}"
    for path in (folder / RESULT_FILE, _store_path(key, seed, args)):
        if path.is_file():
            return json.loads(path.read_text())
    return None


def _write_result(result: dict[str, Any], *paths: Path) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")


def _score_tiny_sam(args: argparse.Namespace) -> dict[str, Any]:
    from ditsam.engine.run_eval import evaluate_checkpoint

    out = Path(args.runs) / "sam"
    finished = _finished("sam", None, args)
    if finished is not None:
        return finished
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"experiment": TINY_SAM_EXPERIMENT, "train_seconds": None, "scores": {}}
    for prompt in TINY_SAM_PROMPTS:
        shutil.rmtree(out / f"eval-{prompt}", ignore_errors=True)  # an interrupted invocation's partial output
        scores, _ = evaluate_checkpoint(
            TINY_SAM,
            data=TINY_SAM_EXPERIMENT,
            overrides=[f"data.root={args.data}"],
            prompt=prompt,
            out=out / f"eval-{prompt}",
            device="cpu",
            dtype="fp32",
            num_pictures=0,
        )
        result["scores"][prompt] = {split: _metrics(values) for split, values in scores.items()}
        result.setdefault("ms_per_sentence", {})[prompt] = _inference_ms(TINY_SAM, TINY_SAM_EXPERIMENT, prompt, args)
    _write_result(result, out / RESULT_FILE, _store_path("sam", None, args))
    return result


def _metrics(values: dict[str, Any]) -> dict[str, float]:
    return {name: float(values[name]) for name in ("miou", "oiou", "p@0.5")}


def _inference_ms(checkpoint: str | Path, experiment: str, prompt: str, args: argparse.Namespace) -> float:
    """Milliseconds per sentence (median) of the checkpoint's forward at batch 1 on val, fp32."""
    from ditsam.model.dit import DITSam

    model = DITSam.from_pretrained(checkpoint).eval()
    batches = _timing_batches(model, experiment, prompt, args)
    _forward_seconds(model, batches[:1])  # warm-up
    return 1000 * statistics.median(_forward_seconds(model, batches))


def _timing_batches(model, experiment: str, prompt: str, args: argparse.Namespace) -> list[tuple[Any, dict]]:
    """:data:`TIMED_SAMPLES` val sentences at batch 1 as ``(images, prompts)``, ready for ``model``'s forward."""
    from torch.utils.data import DataLoader, Subset

    from ditsam.data.collate import RISCollator
    from ditsam.engine.config import load_experiment
    from ditsam.engine.data import ris_dataset
    from ditsam.engine.prompts import evaluation_prompts

    dataset = ris_dataset(load_experiment(experiment, args.common), "val", train=False)
    loader = DataLoader(Subset(dataset, range(TIMED_SAMPLES)), batch_size=1, collate_fn=RISCollator(model.tokenizer))
    return [
        (batch.images, {"text": batch.text} if prompt == "text" else evaluation_prompts(batch.masks, prompt, [index]))
        for index, batch in enumerate(loader)
    ]


def _forward_seconds(model, batches: list[tuple[Any, dict]]) -> list[float]:
    import torch

    seconds = []
    with torch.no_grad():
        for images, prompts in batches:
            started = time.perf_counter()
            model(images, **prompts)
            seconds.append(time.perf_counter() - started)
    return seconds


def retime(keys: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Every row's inference time measured in one sitting, so that the column compares architectures.

    The time of a forward depends on the architecture, not on the weights, so each run's model is built from
    its recipe (the tiny SAM's weights, fresh new parts) rather than from a checkpoint that may be gone; the
    times stored with the runs were taken whenever each run finished, on whatever else the machine was doing.
    The rows take turns, one pass of :data:`TIMED_SAMPLES` sentences each, :data:`RETIME_PASSES` times over,
    so that a machine whose speed drifts over minutes slows every row alike; a row's time is the median.
    """
    from ditsam.engine.config import load_experiment
    from ditsam.engine.text_encoder import resolve_text_encoder
    from ditsam.engine.train import build_model
    from ditsam.model.dit import DITSam

    timed: list[tuple[str, str, Any, list[tuple[Any, dict]]]] = []
    for key in keys:
        run = RUNS[key]
        if run is None:
            model, experiment, prompts = DITSam.from_pretrained(TINY_SAM), TINY_SAM_EXPERIMENT, TINY_SAM_PROMPTS
        else:
            config, text_encoder = resolve_text_encoder(
                load_experiment(run.experiment, {**dict(run.overrides), **args.common})
            )
            if text_encoder is not None:  # RefShapes' tiny BERT, written beside the data (once)
                text_encoder.build()
            model, experiment, prompts = build_model(config), run.experiment, run.prompts
        model.eval()
        timed += [(key, prompt, model, _timing_batches(model, experiment, prompt, args)) for prompt in prompts]
    seconds: dict[tuple[str, str], list[float]] = {}
    for _, _, model, batches in timed:
        _forward_seconds(model, batches[:1])  # warm-up
    for _ in range(RETIME_PASSES):
        for key, prompt, model, batches in timed:
            seconds.setdefault((key, prompt), []).extend(_forward_seconds(model, batches))
    times: dict[str, dict[str, float]] = {}
    for (key, prompt), values in seconds.items():
        times.setdefault(key, {})[prompt] = 1000 * statistics.median(values)
        logger.info("%s %s: %.1f ms / sentence", key, prompt, times[key][prompt])
    return {
        "machine": machine_info(),
        "timed_samples": TIMED_SAMPLES,
        "passes": RETIME_PASSES,
        "statistic": "median, the rows taking turns pass by pass",
        "ms_per_sentence": times,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", nargs="+", default=list(TABLES), choices=list(TABLES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds (default: 0 1 2)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the demo's)")
    parser.add_argument("--runs", default="runs/paper", help="run folders (finished runs are reused)")
    parser.add_argument(
        "--store",
        default="benchmarks/results/refshapes_paper_runs",
        help="where every finished run's result is kept too (committed; reused like the run folders)",
    )
    parser.add_argument("--data", default="data/refshapes")
    parser.add_argument("--out", default="benchmarks/results/refshapes_paper")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list(RUNS),
        default=None,
        help="train only these runs (of --tables), in this order; the report still shows every table",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="train nothing: write the tables from the finished runs"
    )
    parser.add_argument(
        "--retime",
        action="store_true",
        help="train nothing: time every row's model in one sitting (quiet machine) for the report's time column",
    )
    parser.add_argument(
        "--readme",
        type=Path,
        default=None,
        help="also write the report's tables into this Markdown file, between its two marker lines "
        "(benchmarks/README.md has them)",
    )
    parser.add_argument("overrides", nargs="*", help="dotted overrides for every run, e.g. train.lr=0.0005")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args.common = dict(parse_override(o) for o in args.overrides)
    args.common["data.root"] = args.data
    if args.epochs is not None:
        args.common["train.epochs"] = args.epochs
    keys = list(dict.fromkeys(key for table in args.tables for _, key, _ in TABLES[table][1]))
    if args.only:
        keys = [key for key in args.only if key in keys]
    if args.readme is not None:  # before hours of training, not after
        _splice_into(args.readme, "")
    started = time.perf_counter()
    out = Path(args.out)
    timing_file = out.with_name(out.name + TIMING_SUFFIX)
    if args.retime:
        out.parent.mkdir(parents=True, exist_ok=True)
        timing_file.write_text(json.dumps(retime(keys, args), indent=2) + "\n")
    elif not args.report_only:
        if None in (RUNS[key] for key in keys):
            _score_tiny_sam(args)
        for seed in args.seeds:  # seed by seed: a whole picture at one seed comes first
            for key in keys:
                run = RUNS[key]
                if run is not None:
                    result = _train_and_score(key, run, seed, args)
                    print(f"{key} seed {seed}: " + json.dumps(result["scores"]), flush=True)
    results: dict[str, list[dict[str, Any]]] = {}
    for key, run in RUNS.items():
        for seed in [None] if run is None else args.seeds:
            finished = _finished(key, seed, args)
            if finished is not None:
                results.setdefault(key, []).append({**finished, "seed": seed})
    verdicts = [judge(claim, collect_scores(results)) for claim in CLAIMS]
    record = {
        "machine": machine_info(),
        "seeds": args.seeds,
        "overrides": args.common,
        "wall_seconds_this_invocation": time.perf_counter() - started,
        "train_seconds_all_runs": sum(r["train_seconds"] or 0 for runs in results.values() for r in runs),
        "results": results,
        "claims": verdicts,
    }
    timing = json.loads(timing_file.read_text()) if timing_file.is_file() else None
    if timing is not None:
        record["timing"] = timing
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    draw_seeds(collect_scores(results), list(TABLES), plateau=on_plateau(results)).save(out.with_suffix(".png"))
    trained = sum(1 for runs in results.values() for r in runs if r["train_seconds"] is not None)
    body = markdown(results, list(TABLES), verdicts, None if timing is None else timing["ms_per_sentence"])
    times = (
        "ms / sentence: each run's own, timed when it finished"
        if timing is None
        else f"ms / sentence: every row timed in one sitting ({timing_file.name}, {timing['machine']['cpu_model']})"
    )
    out.with_suffix(".md").write_text(
        f"Machine: {record['machine']['cpu_model']}, {record['machine']['usable_cores']} cores "
        f"({', '.join(record['machine']['isa'])}); seeds {args.seeds}; mean ± std over seeds; {times}.\n\n"
        f"Cost: {trained} training runs stored, {record['train_seconds_all_runs'] / 3600:.1f} hours of training in all "
        f"(each run on the machine and in the session it finished in).\n\n"
        f"{body}\n"
    )
    if args.readme is not None:
        args.readme.write_text(_splice_into(args.readme, body))
    print(body)


def _splice_into(readme: Path, report: str) -> str:
    """The text of ``readme`` with ``report`` between its marker lines; SystemExit naming the file if it cannot."""
    try:
        return splice(readme.read_text(), report)
    except (OSError, ValueError) as error:
        raise SystemExit(f"--readme {readme}: {error}") from error


if __name__ == "__main__":
    main()
