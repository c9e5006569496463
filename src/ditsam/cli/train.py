"""``ditsam train EXPERIMENT [key=value ...]``: train one experiment (Accelerate-aware)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ditsam.engine.config import ExperimentConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train an experiment (a packaged name such as refshapes/ldit, or a YAML file)",
        description="Train an experiment. Runs as is on one CPU/GPU; for several GPUs or nodes start it with "
        "`accelerate launch -m ditsam.cli.main train ...` or torchrun.",
    )
    parser.add_argument(
        "experiment", nargs="?", help="packaged experiment name (see `ditsam train --list`) or a .yaml path"
    )
    parser.add_argument(
        "overrides", nargs="*", help="dotted key=value overrides, e.g. train.epochs=2 model.injection=e2e"
    )
    parser.add_argument("--run-dir", default=None, help="run folder (default: <output_dir>/<name>)")
    parser.add_argument("--resume", action="store_true", help="continue from <run-dir>/checkpoints/last")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in <run-dir> (its checkpoints, logs and results are deleted); a run "
        "folder holding checkpoints is refused without --resume or --overwrite",
    )
    parser.add_argument(
        "--skip-bad-data",
        action="store_true",
        help="train on the records that pass the data check instead of stopping (how many were "
        "dropped is logged, the list written to <run-dir>/bad_records.txt)",
    )
    parser.epilog = (
        "SIGTERM, SIGINT or SIGUSR1 (a scheduler preempting the job) finish the current step, write "
        "<run-dir>/checkpoints/last and exit with status 75; --resume continues from there."
    )
    parser.add_argument("--list", action="store_true", help="list the packaged experiments and exit")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ditsam.cli.errors import CLIError
    from ditsam.config import parse_override
    from ditsam.engine.config import list_experiments, load_experiment

    if args.list:
        print("\n".join(list_experiments()))
        return 0
    if not args.experiment:
        raise CLIError("which experiment? give a packaged name (`ditsam train --list`) or a .yaml path")
    config = load_experiment(args.experiment, dict(parse_override(o) for o in args.overrides))
    from ditsam.distributed import leave_process_group, rank
    from ditsam.engine.stopping import PREEMPTED_EXIT_STATUS, TrainingStopped
    from ditsam.metrics import format_table

    try:
        results = train_reporting_errors(
            config, run_dir=args.run_dir, resume=args.resume, overwrite=args.overwrite, skip_bad_data=args.skip_bad_data
        )
    except TrainingStopped as stopped:
        first = rank() == 0
        leave_process_group()  # every process stopped after the same step
        if first:
            print(f"ditsam train: {stopped}", file=sys.stderr)
        return PREEMPTED_EXIT_STATUS
    leave_process_group()  # under a launcher every process gets here; gloo aborts one whose peer left first

    if results:
        print(format_table(results, title=f"## {config.name}"), file=sys.stdout)
    return 0


def train_reporting_errors(config: "ExperimentConfig", **kwargs: Any) -> dict[str, dict[str, float]]:
    """:func:`ditsam.engine.train.train`, with a NaN / inf loss turned into a one-line error
    (run folder, data and config errors are ValueErrors, reported as one line already)."""
    from ditsam.cli.errors import CLIError
    from ditsam.engine.train import NonFiniteLossError, train

    try:
        return train(config, **kwargs)
    except NonFiniteLossError as error:
        from ditsam.distributed import REPORTED_ELSEWHERE, rank

        reported = CLIError(str(error))
        setattr(reported, REPORTED_ELSEWHERE, rank() != 0)  # every process finds the loss non-finite at once
        raise reported from error
