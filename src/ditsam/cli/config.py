"""``ditsam config show EXPERIMENT [key=value ...]``: the experiment ``ditsam train`` would run, as YAML.

The packaged experiments are composed (a scale's ``_base.yaml`` with a shared variant, or a YAML file's
``base`` chain) and the overrides applied exactly as ``ditsam train`` does (:func:`ditsam.engine.config.
load_experiment`), so an unknown experiment or key is the same one-line error; the printed YAML holds every
field, defaults included, and is itself a valid experiment file (``ditsam train shown.yaml``).
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("config", help="show the composed, validated config of an experiment")
    config_subparsers = parser.add_subparsers(dest="config_command", metavar="CONFIG_COMMAND", required=True)
    show = config_subparsers.add_parser(
        "show",
        help="print an experiment (a packaged name or a .yaml path) with overrides applied, as YAML",
        description="Print the experiment `ditsam train EXPERIMENT [key=value ...]` would run: composed from its "
        "base and variant, overrides applied, validated; every field, defaults included.",
    )
    show.add_argument("experiment", help="packaged experiment name (see `ditsam train --list`) or a .yaml path")
    show.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.epochs=2")
    show.set_defaults(func=run_show)


def show_yaml(experiment: str, overrides: list[str]) -> str:
    """The composed, validated experiment as YAML text (field order of the dataclasses)."""
    import yaml

    from ditsam.config import parse_override
    from ditsam.engine.config import load_experiment

    config = load_experiment(experiment, dict(parse_override(o) for o in overrides))
    return yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True)


def run_show(args: argparse.Namespace) -> int:
    print(show_yaml(args.experiment, args.overrides), end="")
    return 0
