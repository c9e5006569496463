"""Entry point of the ``ditsam`` command.

Each sub-command lives in its own module of :mod:`ditsam.cli` exposing ``register(subparsers)``,
which adds its parser and sets ``func`` (called with the parsed namespace, returns an exit code).
Modules are imported only when ``main`` runs, so importing :mod:`ditsam` stays cheap.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from ditsam import __version__
from ditsam.cli.errors import CLIError

COMMAND_MODULES = ("data", "config", "train", "eval", "demo", "predict", "export", "serve", "convert")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ditsam", description="Text-instructed segmentation with SAM (DIT).")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"ditsam.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except (CLIError, FileNotFoundError, ValueError) as error:
        if args.verbose:
            raise
        from ditsam.distributed import reported_elsewhere

        if not reported_elsewhere(error):  # a copy of another process's error: that process prints it
            print(f"ditsam {args.command}: error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        if args.verbose or not _peer_failed(error):
            raise
        print(
            f"ditsam {args.command}: error: another process of this run stopped (its connection closed); its "
            f"own error, above, says why",
            file=sys.stderr,
        )
        return 2


def _peer_failed(error: RuntimeError) -> bool:
    """Whether ``error`` is a collective failing because another process of the run ended."""
    import torch.distributed as dist

    return isinstance(error, getattr(dist, "DistBackendError", ())) or "Connection closed by peer" in str(error)


if __name__ == "__main__":
    sys.exit(main())
