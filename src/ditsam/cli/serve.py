"""``ditsam serve``: the web demo (Gradio) for a checkpoint -- upload an image, type a sentence,
see the mask. Needs the ``demo`` extra (``pip install -e ".[demo]"``).

Examples under the inputs come from ``--examples DIR`` (a RefShapes root written by ``ditsam data
synth``, or any folder of images) or, without it, from a few RefShapes images generated into a
temporary folder that is removed when the server stops (``--no-examples`` skips them).

Beyond this machine (``--host 0.0.0.0``): ``--auth-file FILE`` (``user:password`` lines) or ``--auth
user:password`` puts Gradio's login page in front; without either a warning is logged. ``--max-queue``
and ``--request-timeout`` bound the waiting requests and the time of each.
"""

from __future__ import annotations

import argparse
import logging
import math
import tempfile
from pathlib import Path

from ditsam.cli.errors import CLIError
from ditsam.cli.source_args import SOURCE_HELP, add_dtype_argument, add_source_arguments, source_options
from ditsam.defaults import MASK_THRESHOLD
from ditsam.web.access import parse_credentials, read_credentials
from ditsam.web.limits import DEFAULT_MAX_QUEUE, DEFAULT_REQUEST_TIMEOUT_S

logger = logging.getLogger(__name__)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="the web demo: upload an image, type a sentence, see the mask",
        description="Serve a Gradio page for a model (a checkpoint folder, a Hub id or the authors' .pth): image + "
        "sentence -> overlay, mask and score; optional point / box clicks for Mix-trained models.",
    )
    parser.add_argument("--checkpoint", required=True, help=SOURCE_HELP)
    add_source_arguments(parser)
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)"
    )
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument(
        "--examples",
        metavar="DIR",
        help="example images: a RefShapes root or a folder of images (default: a few generated RefShapes images)",
    )
    parser.add_argument("--no-examples", action="store_true", help="show no examples")
    parser.add_argument(
        "--max-pixels",
        type=_positive_int,
        default=40_000_000,
        help="refuse larger images with a message in the page (default 40 MP)",
    )
    parser.add_argument(
        "--threshold", type=float, default=MASK_THRESHOLD, help=f"sigmoid threshold (default {MASK_THRESHOLD})"
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    add_dtype_argument(parser)
    login = parser.add_mutually_exclusive_group()
    login.add_argument(
        "--auth",
        metavar="USER:PASSWORD",
        help="require this login (visible to other users of this machine in the process list: prefer --auth-file)",
    )
    login.add_argument("--auth-file", metavar="FILE", help="require a login from FILE: user:password lines")
    parser.add_argument(
        "--max-queue",
        type=_positive_int,
        default=DEFAULT_MAX_QUEUE,
        metavar="N",
        help=f"requests that may wait for the model; more are told the demo is busy (default {DEFAULT_MAX_QUEUE})",
    )
    parser.add_argument(
        "--request-timeout",
        type=_positive_seconds,
        default=DEFAULT_REQUEST_TIMEOUT_S,
        metavar="SECONDS",
        help=f"answer a request that takes longer with a message (default {DEFAULT_REQUEST_TIMEOUT_S:g})",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise CLIError("serve needs gradio: pip install 'ditsam[demo]'") from None
    if not 0 < args.port < 65536:
        raise CLIError(f"--port must lie in 1..65535, got {args.port}")
    if args.examples and args.no_examples:
        raise CLIError("give --examples DIR or --no-examples, not both")
    from ditsam.api import Segmenter
    from ditsam.serve import serve
    from ditsam.web.examples import example_pairs, make_refshapes_examples

    # Credentials are read before the model loads: a typo fails at once. Messages never echo a password.
    auth = read_credentials(args.auth_file) if args.auth_file else None
    if args.auth is not None:
        auth = [parse_credentials(args.auth, source="--auth")]
    examples: list[tuple[Path, str]] = []
    if args.examples:  # checked before the model loads: a typo fails at once
        try:
            examples = example_pairs(args.examples)
        except FileNotFoundError as error:
            raise CLIError(str(error)) from None
        if not examples:
            logger.warning("no images found in %s: the page shows no examples", args.examples)
    segmenter = Segmenter.from_pretrained(
        args.checkpoint,
        **source_options(args),
        device=args.device,
        dtype=args.dtype,
        threshold=args.threshold,
        max_pixels=args.max_pixels,
    )
    logger.info("%r", segmenter)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's own start-up requests, one INFO line each
    options = dict(
        host=args.host, port=args.port, auth=auth, max_queue=args.max_queue, request_timeout_s=args.request_timeout
    )
    try:
        if args.examples or args.no_examples:
            serve(segmenter, examples=examples, **options)
            return 0
        with tempfile.TemporaryDirectory(prefix="ditsam-examples-") as folder:
            serve(segmenter, examples=make_refshapes_examples(folder, count=4), **options)
    except OSError as error:  # e.g. the port is taken
        raise CLIError(f"cannot serve on {args.host}:{args.port}: {error}") from None
    return 0
