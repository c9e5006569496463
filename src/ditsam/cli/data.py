"""``ditsam data ...``: dataset generation, validation and statistics.

The sub-commands live in :mod:`ditsam.cli.data_synth` (``synth``) and
:mod:`ditsam.cli.data_tools` (``validate``, ``stats``).
"""

from __future__ import annotations

import argparse
import importlib

DATA_COMMAND_MODULES = ("data_synth", "data_tools")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="generate, validate and inspect datasets")
    data_subparsers = parser.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    for name in DATA_COMMAND_MODULES:
        importlib.import_module(f"ditsam.cli.{name}").register(data_subparsers)
