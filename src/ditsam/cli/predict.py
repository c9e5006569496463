"""``ditsam predict``: masks for sentences on your own images, with pictures and COCO RLE.

Inputs (one of):

- ``--image a.jpg [--image b.jpg ...] --text "the man on the left"``: those images, one sentence;
- ``--images DIR --text "..."``: every image file directly in DIR (sorted by name), one sentence;
- ``--jsonl pairs.jsonl``: one JSON object per line, ``{"image": "a.jpg", "text": "the dog"}``
  (``"sentence"`` is accepted for ``"text"``; optional ``"id"``, ``"split"`` and ``"category_id"`` are
  copied to the output; a record's label fields -- ``segmentation``, ``score``, ... -- are read past, so a
  labelled dataset or an earlier ``predictions.jsonl`` is a pairs file as it is).
  Relative image paths are relative to the JSONL file's folder. Every bad line is reported, with
  its number, before anything runs.

Outputs under ``--out`` (default ``runs/predict``): ``overlays/NNNNN_<image>.png`` (the mask in red
on the image, captioned with the sentence), ``masks/NNNNN_<image>.png`` (0 / 255, the image's
size) and ``predictions.json``: a list of records (``docs/record.schema.json``) ``{"id", "image" (absolute
path), "sentence", "score", "segmentation": {"size": [H, W], "counts": RLE string}, "bbox": [x, y, w, h],
"area", "present", "mask_file", "overlay_file"}`` -- COCO-style: ``data.format=custom data.root=OUT`` trains
on them (``data.min_score`` keeps the confident ones). ``present`` is
False when the sentence names nothing: a model with a no-target head (generalized RIS) says so, or a
model without one draws an empty mask; the mask is then empty (an empty COCO RLE is still valid RLE). An image that cannot be
read is reported and skipped; the exit status is then 1.

Nothing made is lost: each prediction is appended to ``predictions.jsonl`` (one JSON line, flushed)
as soon as it is made, and ``predictions.json`` is written at the end through a temporary file
renamed over it. After a kill or a full disk, ``--resume`` predicts only the pairs that the
journal does not hold yet. A non-empty ``--out`` is refused unless ``--resume`` (continue) or
``--overwrite`` (delete this command's outputs -- predictions.json, the journals, masks/,
overlays/ -- and start again; other files are left alone).

Images are decoded ahead of the model by ``--workers`` DataLoader workers (0: in the process).

A dataset on several processes (GPUs, nodes): run the same command under ``accelerate launch`` or
``torchrun``. The pairs still to predict are shared by rank (the i-th goes to rank i % world size);
rank r appends to its own journal ``predictions.rank{r}.jsonl`` and writes the mask and overlay
files of its pairs (named by the pair's input index, so names never collide and are those of a
one-process run); once every process is done, rank 0 merges the journals into one
``predictions.json`` in input order -- the file a single process writes. ``--resume`` skips the pairs
found in any journal in ``--out``, whatever number of processes wrote it. ``--out`` must be one
folder every process sees (on several nodes: a shared file system).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from ditsam.cli.errors import CLIError
from ditsam.cli.predict_inputs import collect_pairs
from ditsam.cli.predict_journal import (
    JOURNAL_FILE,
    PREDICTIONS_FILE,
    journal_name,
    journal_paths,
    pair_key,
    read_journals,
)
from ditsam.cli.predict_loader import IndexedPair
from ditsam.cli.predict_outputs import save_prediction
from ditsam.cli.predict_world import World
from ditsam.cli.source_args import SOURCE_HELP, add_dtype_argument, add_source_arguments, source_options
from ditsam.defaults import MASK_THRESHOLD
from ditsam.inference.devices import exported_backend

logger = logging.getLogger(__name__)

#: Exit statuses: some images could not be read (the rest is done); an error stopped the run (as
#: ditsam.cli.main returns for a reported error).
EXIT_SKIPPED = 1
EXIT_ERROR = 2
#: What this command writes into --out; --overwrite deletes these and nothing else.
PREDICT_OUTPUTS = (PREDICTIONS_FILE, JOURNAL_FILE, "masks", "overlays")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="segment what a sentence describes in your images",
        description="Predict masks for (image, sentence) pairs with a trained model (a checkpoint folder, a Hub id or "
        "the authors' .pth); writes overlay pictures, mask PNGs and one COCO-RLE predictions.json.",
    )
    parser.add_argument("--checkpoint", required=True, help=SOURCE_HELP)
    add_source_arguments(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", action="append", metavar="FILE", help="an image file (repeat for several)")
    source.add_argument("--images", metavar="DIR", help="a folder of images (not recursive)")
    source.add_argument("--jsonl", metavar="FILE", help='pairs, one per line: {"image": path, "text": sentence}')
    parser.add_argument("--text", help="the sentence (with --image / --images)")
    parser.add_argument("--out", default="runs/predict", help="output folder (default: runs/predict)")
    parser.add_argument(
        "--threshold", type=float, default=MASK_THRESHOLD, help=f"sigmoid threshold (default {MASK_THRESHOLD})"
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    add_dtype_argument(parser)
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per forward pass (default 8)")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="DataLoader workers per process decoding images ahead of the model (0: decode in the "
        "process; default: the cores left per process, at most 4)",
    )
    parser.add_argument("--max-pixels", type=int, default=40_000_000, help="refuse larger images (default 40 MP)")
    parser.add_argument("--no-overlays", action="store_true", help="skip the overlay pictures")
    parser.add_argument("--no-masks", action="store_true", help="skip the mask PNGs (predictions.json still has them)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run into --out: pairs already in its journals (predictions.jsonl, "
        "predictions.rank*.jsonl, from any number of processes) are skipped",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="delete this command's earlier outputs in --out and start again (a non-empty --out is "
        "refused without --resume or --overwrite)",
    )
    parser.set_defaults(func=run)


# ---------------------------------------------------------------------------------------------------
# --out
# ---------------------------------------------------------------------------------------------------
def _prepare_out(args: argparse.Namespace) -> Path:
    """--out as a folder this run may write: refused when it is a file, not writable, or holds earlier
    results without --resume / --overwrite (whose outputs are deleted here)."""
    from ditsam.outputs import OutputFolderError, prepare_output_folder, remove_outputs

    out = Path(args.out)
    earlier = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    try:
        prepare_output_folder(out, what="--out", holds_results=earlier, resume=args.resume, overwrite=args.overwrite)
    except OutputFolderError as error:
        raise CLIError(str(error)) from None
    if args.overwrite:
        remove_outputs(out, [*PREDICT_OUTPUTS, *(path.name for path in journal_paths(out))])
    return out


# ---------------------------------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------------------------------
class _SharedError(CLIError):
    """An error every process of a run raises alike (rank 0 decided it): rank 0 reports it, the
    others stop with the same exit status without repeating the line."""


def run(args: argparse.Namespace) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.workers is not None and args.workers < 0:
        raise CLIError(f"--workers must be >= 0 (0: decode images in the process itself), got {args.workers}")
    if not 0 < args.threshold < 1:
        raise CLIError(f"--threshold must lie strictly between 0 and 1, got {args.threshold}")
    pairs = collect_pairs(args)
    world = World.from_environment(cpu=args.device == "cpu" or exported_backend(args.dtype) is not None)
    try:
        todo = _plan(args, pairs, world)  # before the model loads: a wrong --out fails at once
        with logging_redirect_tqdm():
            code = _predict(args, pairs, todo, Path(args.out), world)
    except _SharedError:
        world.close()  # every process raised it: all of them get here
        if world.is_main:
            raise
        return EXIT_ERROR
    world.close()
    return code


def _plan(args: argparse.Namespace, pairs: list[dict[str, Any]], world: World) -> list[int]:
    """The indices of the pairs still to predict, the same on every process. Rank 0 alone (the only
    process when there is one) checks --out -- refusing earlier results, deleting them for
    --overwrite -- and with --resume reads every journal in it, before any process writes; a problem
    becomes the same one-line error on every process."""
    if not world.distributed:
        return _todo(pairs, _prepare_out(args), resume=args.resume)
    plan: tuple[str | None, list[int]] = (None, [])
    if world.is_main:
        try:
            plan = (None, _todo(pairs, _prepare_out(args), resume=args.resume))
        except CLIError as error:
            plan = (str(error), [])
    error, todo = world.broadcast(plan)
    if error is not None:
        raise _SharedError(error)
    return todo


def _todo(pairs: list[dict[str, Any]], out: Path, *, resume: bool) -> list[int]:
    if not resume:
        return list(range(len(pairs)))
    done = read_journals(out)
    todo = [index for index, pair in enumerate(pairs) if pair_key(pair) not in done]
    if done:
        names = ", ".join(path.name for path in journal_paths(out))
        logger.info("--resume: %d of %d pair(s) are already in %s (%s)", len(pairs) - len(todo), len(pairs), out, names)
    return todo


def _write_failure(error: OSError, out: Path, kept: str) -> str:
    """The one line for a failed write: why, where the predictions made so far are, what to do."""
    from ditsam.outputs import describe_write_failure, is_disk_full

    advice = "free some space" if is_disk_full(error) else "fix that"
    return (
        f"{describe_write_failure(error, out)}; every prediction made so far is in {kept}: {advice}, then run "
        f"the same command with --resume"
    )


def _predict(args: argparse.Namespace, pairs: list[dict[str, Any]], todo: list[int], out: Path, world: World) -> int:
    from ditsam.cli.predict_loader import default_workers

    segmenter = _segmenter(args, world)
    workers = default_workers(world.size) if args.workers is None else args.workers
    share = world.share([(index, pairs[index]) for index in todo])
    bar = _progress_bar(world, total=len(pairs), done=len(pairs) - len(todo), share=len(share))
    world.gather(None)  # the clock starts when every process holds its model
    began = time.perf_counter()
    failed: OSError | None = None
    failures: dict[Path, str] = {}
    made = 0
    try:
        failures, made = _predict_share(args, share, out, segmenter, world, workers=workers, bar=bar)
    except OSError as error:
        failed = error
    why = None
    if failed is not None:
        rank = f"rank {world.rank}: " if world.distributed else ""
        why = rank + _write_failure(failed, out, str(out / journal_name(world)))
    reports = world.gather((why, failures, made))  # every process waits for the slowest, then knows how all ended
    seconds = time.perf_counter() - began
    errors = [error for error, _, _ in reports if error is not None]
    if errors:
        raise _SharedError("; ".join(errors)) from failed
    failures = {path: reason for _, theirs, _ in reports for path, reason in theirs.items()}
    made = sum(count for _, _, count in reports)
    outcome: str | None = None
    finish_error: Exception | None = None
    if world.is_main:
        try:
            _finish(args, pairs, todo, out, failures, world, made=made, seconds=seconds)
        except CLIError as error:
            outcome, finish_error = str(error), error
        except OSError as error:
            outcome, finish_error = _write_failure(error, out, f"the journals in {out}"), error
    outcome = world.broadcast(outcome)
    if outcome is not None:
        raise _SharedError(outcome) from finish_error
    return EXIT_SKIPPED if failures else 0


def _segmenter(args: argparse.Namespace, world: World) -> Any:
    """The Segmenter of this process: on the device asked for; by default, under a launcher, on the
    device accelerate gave this process (its own GPU, or the CPU); int8 always on the CPU."""
    from ditsam.api import Segmenter

    device = args.device
    if device is None and exported_backend(args.dtype) is None:
        device = world.device
    return Segmenter.from_pretrained(
        args.checkpoint,
        **source_options(args),
        device=device,
        dtype=args.dtype,
        threshold=args.threshold,
        max_pixels=args.max_pixels,
        batch_size=args.batch_size,
    )


def _progress_bar(world: World, *, total: int, done: int, share: int) -> Any:
    """One process: all pairs, those done before counted in. Several: rank 0 shows its own share (the
    others' bars would overwrite it), the others none."""
    from tqdm.auto import tqdm

    if world.distributed:
        return tqdm(total=share, desc=f"predict (rank 0 of {world.size})", unit="pair", disable=not world.is_main)
    return tqdm(total=total, initial=done, desc="predict", unit="pair")


def _finish(
    args: argparse.Namespace,
    pairs: list[dict[str, Any]],
    todo: list[int],
    out: Path,
    failures: dict[Path, str],
    world: World,
    *,
    made: int,
    seconds: float,
) -> None:
    """Rank 0, once every process is done: merge the journals into predictions.json (input order,
    written atomically) and print the summary. Raises CLIError when a prediction some process made
    is not in the journals (an --out not shared by all processes), OSError when the write fails."""
    from ditsam.outputs import write_text_atomically

    done = read_journals(out)
    missing = [index for index in todo if pair_key(pairs[index]) not in done and pairs[index]["image"] not in failures]
    if missing:
        first = pairs[missing[0]]
        raise CLIError(
            f"{len(missing)} prediction(s) made in this run are not in the journals in {out} (the first: pair "
            f"{missing[0]}, {first['image']}): --out must be one folder every process sees (a shared file system), "
            f"not a local folder on each node"
        )
    records = [done[pair_key(pair)] for pair in pairs if pair_key(pair) in done]
    predictions = write_text_atomically(out / PREDICTIONS_FILE, json.dumps(records, indent=1))
    mean = sum(r["score"] for r in records) / len(records) if records else float("nan")
    print(f"{len(records)} prediction(s) for {len(pairs)} pair(s); mean score {mean:.3f}")
    if made:
        print(
            f"this run: {made} prediction(s) in {seconds:.1f} s, {made / seconds:.2f} pairs/s "
            f"({world.size} process(es))"
        )
    print(f"predictions (COCO RLE): {predictions}")
    if not args.no_masks:
        print(f"masks: {out / 'masks'}/")
    if not args.no_overlays:
        print(f"overlays: {out / 'overlays'}/")
    if failures:
        print(f"{len(failures)} image(s) could not be read and were skipped:")
        for why in failures.values():
            print(f"  {why}")
    # Now, not at exit: a launcher stops the other processes as soon as one exits with an error status,
    # and a pipe's buffered lines would be lost with them.
    sys.stdout.flush()


def _predict_share(
    args: argparse.Namespace,
    share: list[IndexedPair],
    out: Path,
    segmenter: Any,
    world: World,
    *,
    workers: int,
    bar: Any,
) -> tuple[dict[Path, str], int]:
    """Predict this process's ``share`` (pairs with their input indices), DataLoader workers decoding
    the images ahead, appending each record to this process's journal as it is made. Returns the
    unreadable images (path -> why) and the number of predictions made. Raises OSError when a write
    fails."""
    from ditsam.cli.predict_loader import decoded_chunks

    for wanted, folder in ((not args.no_masks, "masks"), (not args.no_overlays, "overlays")):
        if wanted:
            (out / folder).mkdir(exist_ok=True)
    failures: dict[Path, str] = {}  # unreadable image -> why
    made = 0
    chunks = decoded_chunks(share, batch_size=args.batch_size, max_pixels=args.max_pixels, workers=workers)
    with bar, (out / journal_name(world)).open("a", encoding="utf-8") as journal:  # the bar closes before any error
        for chunk in chunks:
            for path, why in chunk.failures.items():
                if path not in failures:  # an image of several chunks is reported once
                    failures[path] = why
                    logger.error("skipped: %s", why)
            ready = [(index, pair) for index, pair in chunk.pairs if pair["image"] in chunk.images]
            if ready:
                results = segmenter.predict([chunk.images[p["image"]] for _, p in ready], [p["text"] for _, p in ready])
                for (index, pair), result in zip(ready, results):
                    record = save_prediction(
                        out,
                        index,
                        pair,
                        chunk.images[pair["image"]],
                        result,
                        masks=not args.no_masks,
                        overlays=not args.no_overlays,
                    )
                    journal.write(json.dumps(record) + "\n")
                    journal.flush()  # a kill after this line loses nothing made before it
                    made += 1
            bar.update(len(chunk.pairs))
    return failures, made
