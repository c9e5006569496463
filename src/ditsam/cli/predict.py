"""``ditsam predict``: masks for sentences on your own images, with pictures and COCO RLE.

Inputs (one of):

- ``--image a.jpg [--image b.jpg ...] --text "the man on the left"``: those images, one sentence;
- ``--images DIR --text "..."``: every image file directly in DIR (sorted by name), one sentence;
- ``--jsonl pairs.jsonl``: one JSON object per line, ``{"image": "a.jpg", "text": "the dog"}``
  (``"sentence"`` is accepted for ``"text"``; an optional ``"id"`` is copied to the output).
  Relative image paths are relative to the JSONL file's folder. Every bad line is reported, with
  its number, before anything runs.

Outputs under ``--out`` (default ``runs/predict``): ``overlays/NNNNN_<image>.png`` (the mask in red
on the image, captioned with the sentence), ``masks/NNNNN_<image>.png`` (0 / 255, the image's
size) and ``predictions.json``: a list of ``{"id", "image", "sentence", "score", "segmentation":
{"size": [H, W], "counts": RLE string}, "bbox": [x, y, w, h], "area", "mask_file",
"overlay_file", "present"}`` -- COCO-style, so the predictions can label a dataset. ``present`` is
False when a model with a no-target head (generalized RIS) says the sentence names nothing; its
mask is then empty (an empty COCO RLE is still valid RLE). An image that cannot be
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
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from ditsam.cli.errors import CLIError
from ditsam.cli.predict_loader import IndexedPair
from ditsam.cli.predict_world import World
from ditsam.cli.source_args import SOURCE_HELP, add_dtype_argument, add_source_arguments, source_options
from ditsam.defaults import MASK_THRESHOLD

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
JSONL_KEYS = ("image", "text", "sentence", "id")
OVERLAY_MAX_SIDE = 1024
PREDICTIONS_FILE = "predictions.json"
JOURNAL_FILE = "predictions.jsonl"
#: The journal of rank r when several processes run (``accelerate launch`` / ``torchrun``).
RANK_JOURNAL_FORMAT = "predictions.rank{rank}.jsonl"
RANK_JOURNAL_GLOB = "predictions.rank*.jsonl"
RANK_JOURNAL_PATTERN = re.compile(r"predictions\.rank(\d+)\.jsonl")
#: Exit statuses: some images could not be read (the rest is done); an error stopped the run (as
#: ditsam.cli.main returns for a reported error).
EXIT_SKIPPED = 1
EXIT_ERROR = 2
#: What this command writes into --out; --overwrite deletes these and nothing else.
PREDICT_OUTPUTS = (PREDICTIONS_FILE, JOURNAL_FILE, "masks", "overlays")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict", help="segment what a sentence describes in your images",
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
    parser.add_argument("--threshold", type=float, default=MASK_THRESHOLD, help=f"sigmoid threshold (default {MASK_THRESHOLD})")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    add_dtype_argument(parser)
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per forward pass (default 8)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="DataLoader workers per process decoding images ahead of the model (0: decode in the "
                             "process; default: the cores left per process, at most 4)")
    parser.add_argument("--max-pixels", type=int, default=40_000_000, help="refuse larger images (default 40 MP)")
    parser.add_argument("--no-overlays", action="store_true", help="skip the overlay pictures")
    parser.add_argument("--no-masks", action="store_true", help="skip the mask PNGs (predictions.json still has them)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run into --out: pairs already in its journals (predictions.jsonl, "
                             "predictions.rank*.jsonl, from any number of processes) are skipped")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete this command's earlier outputs in --out and start again (a non-empty --out is "
                             "refused without --resume or --overwrite)")
    parser.set_defaults(func=run)


# ---------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------
def read_pairs_jsonl(path: Path) -> list[dict[str, Any]]:
    """Parse a JSONL file of ``{"image", "text"}`` objects; raises CLIError listing every bad line."""
    if not path.is_file():
        raise CLIError(f"JSONL file {path} does not exist")
    problems: list[str] = []
    pairs: list[dict[str, Any]] = []
    base = path.parent
    with path.open(encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{number}"
            before = len(problems)
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as error:
                problems.append(f"{where}: not valid JSON ({error.msg} at column {error.colno})")
                continue
            if not isinstance(obj, dict):
                problems.append(f"{where}: expected an object {{\"image\": ..., \"text\": ...}}, got {type(obj).__name__}")
                continue
            unknown = sorted(set(obj) - set(JSONL_KEYS))
            if unknown:
                problems.append(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; allowed: image, text (or sentence), id")
            image = obj.get("image")
            if not isinstance(image, str) or not image.strip():
                problems.append(f"{where}: 'image' must be a file path (a non-empty string), got {image!r}")
                image_path = None
            else:
                image_path = Path(image) if os.path.isabs(image) else base / image
                if not image_path.is_file():
                    problems.append(f"{where}: image file {image_path} not found")
            if "text" in obj and "sentence" in obj:
                problems.append(f"{where}: give 'text' or 'sentence', not both")
            text = obj.get("text", obj.get("sentence"))
            if not isinstance(text, str) or not text.strip():
                problems.append(f"{where}: 'text' must be a non-empty sentence, got {text!r}")
            if len(problems) > before:
                continue
            pairs.append({"image": image_path, "text": text, "id": obj.get("id", len(pairs)), "line": number})
    if problems:
        shown = problems[:50]
        more = f"\n... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        raise CLIError(f"{len(problems)} problem(s) in {path}, nothing was run:\n" + "\n".join(shown) + more)
    if not pairs:
        raise CLIError(f"{path} holds no pairs")
    return pairs


def _collect_pairs(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.jsonl:
        if args.text is not None:
            raise CLIError("--text is not used with --jsonl (each line carries its sentence)")
        return read_pairs_jsonl(Path(args.jsonl))
    if args.text is None or not args.text.strip():
        raise CLIError("--text \"SENTENCE\" is required with --image / --images (and must not be empty)")
    if args.images:
        folder = Path(args.images)
        if not folder.is_dir():
            raise CLIError(f"--images {folder} is not a folder")
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise CLIError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    else:
        files = [Path(p) for p in args.image]
        missing = [str(p) for p in files if not p.is_file()]
        if missing:
            raise CLIError(f"image file(s) not found: {', '.join(missing)}")
    return [{"image": path, "text": args.text, "id": index} for index, path in enumerate(files)]


# ---------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------
def _stem(index: int, image: Path) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", image.stem)[:60] or "image"
    return f"{index:05d}_{safe}"


def _overlay(image, mask, sentence: str, score: float):
    import numpy as np
    from PIL import Image

    from ditsam.viz import prediction_card

    scale = OVERLAY_MAX_SIDE / max(image.size)
    if scale < 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.BILINEAR)
        mask = np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))
    return prediction_card(image, f"{sentence}  (score {score:.2f})", mask, None)


def _record(pair: dict[str, Any], result, *, mask_file: str | None, overlay_file: str | None) -> dict[str, Any]:
    import numpy as np
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(result.mask.astype(np.uint8)))
    return {
        "id": pair["id"], "image": str(pair["image"]), "sentence": pair["text"], "score": round(result.score, 6),
        "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
        "bbox": list(result.bbox), "area": result.area, "mask_file": mask_file, "overlay_file": overlay_file,
        # False (with an empty mask) when a no-target head says the sentence names nothing in the image.
        "present": result.present,
    }


# ---------------------------------------------------------------------------------------------------
# The journals: one line per prediction, appended as it is made; one file per process
# ---------------------------------------------------------------------------------------------------
def _key(pair_or_record: dict[str, Any]) -> str:
    """What identifies a pair across runs: its id, image and sentence."""
    sentence = pair_or_record.get("sentence", pair_or_record.get("text"))
    return json.dumps([pair_or_record["id"], str(pair_or_record["image"]), sentence])


def journal_name(world: World) -> str:
    """The journal this process appends to: ``predictions.jsonl`` when it runs alone (the name from
    before several processes were possible), ``predictions.rank{r}.jsonl`` for rank r of several."""
    return RANK_JOURNAL_FORMAT.format(rank=world.rank) if world.distributed else JOURNAL_FILE


def journal_paths(out: Path) -> list[Path]:
    """Every journal in ``out``, whatever number of processes wrote it: ``predictions.jsonl``, then
    ``predictions.rank{r}.jsonl`` by rank."""
    ranked = sorted(
        (int(match.group(1)), path) for path in out.glob(RANK_JOURNAL_GLOB)
        if (match := RANK_JOURNAL_PATTERN.fullmatch(path.name)) and path.is_file()
    )
    single = out / JOURNAL_FILE
    return ([single] if single.is_file() else []) + [path for _, path in ranked]


def read_journal(path: Path) -> dict[str, dict[str, Any]]:
    """The records of ``predictions.jsonl`` by pair key. A last line cut short by a kill is removed
    from the file, so that appending continues on a line of its own; other unreadable lines are
    skipped with a warning."""
    if not path.is_file():
        return {}
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) < len(data):
        logger.warning("%s: removing an incomplete last line (left by an interrupted run)", path)
        with path.open("r+b") as handle:
            handle.truncate(len(complete))
    records: dict[str, dict[str, Any]] = {}
    for number, raw in enumerate(complete.splitlines(), start=1):
        try:
            record = json.loads(raw)
            records[_key(record)] = record
        except (ValueError, KeyError, TypeError, AttributeError):
            logger.warning("%s:%d: not a prediction record; its pair is predicted again", path, number)
    return records


def read_journals(out: Path) -> dict[str, dict[str, Any]]:
    """The records of every journal in ``out`` (:func:`journal_paths`) by pair key, so that a run
    resumes what any number of processes left, in any number of processes. Only while no process
    appends: a cut last line is removed (:func:`read_journal`)."""
    records: dict[str, dict[str, Any]] = {}
    for path in journal_paths(out):
        records.update(read_journal(path))
    return records


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
    pairs = _collect_pairs(args)
    world = World.from_environment(cpu=args.device == "cpu" or args.dtype == "int8")
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
    todo = [index for index, pair in enumerate(pairs) if _key(pair) not in done]
    if done:
        names = ", ".join(path.name for path in journal_paths(out))
        logger.info("--resume: %d of %d pair(s) are already in %s (%s)", len(pairs) - len(todo), len(pairs), out, names)
    return todo


def _write_failure(error: OSError, out: Path, kept: str) -> str:
    """The one line for a failed write: why, where the predictions made so far are, what to do."""
    from ditsam.outputs import describe_write_failure, is_disk_full

    advice = "free some space" if is_disk_full(error) else "fix that"
    return (f"{describe_write_failure(error, out)}; every prediction made so far is in {kept}: {advice}, then run "
            f"the same command with --resume")


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
    if device is None and args.dtype != "int8":
        device = world.device
    return Segmenter.from_pretrained(
        args.checkpoint, **source_options(args), device=device, dtype=args.dtype, threshold=args.threshold,
        max_pixels=args.max_pixels, batch_size=args.batch_size,
    )


def _progress_bar(world: World, *, total: int, done: int, share: int) -> Any:
    """One process: all pairs, those done before counted in. Several: rank 0 shows its own share (the
    others' bars would overwrite it), the others none."""
    from tqdm.auto import tqdm

    if world.distributed:
        return tqdm(total=share, desc=f"predict (rank 0 of {world.size})", unit="pair", disable=not world.is_main)
    return tqdm(total=total, initial=done, desc="predict", unit="pair")


def _finish(args: argparse.Namespace, pairs: list[dict[str, Any]], todo: list[int], out: Path,
            failures: dict[Path, str], world: World, *, made: int, seconds: float) -> None:
    """Rank 0, once every process is done: merge the journals into predictions.json (input order,
    written atomically) and print the summary. Raises CLIError when a prediction some process made
    is not in the journals (an --out not shared by all processes), OSError when the write fails."""
    from ditsam.outputs import write_text_atomically

    done = read_journals(out)
    missing = [index for index in todo if _key(pairs[index]) not in done and pairs[index]["image"] not in failures]
    if missing:
        first = pairs[missing[0]]
        raise CLIError(
            f"{len(missing)} prediction(s) made in this run are not in the journals in {out} (the first: pair "
            f"{missing[0]}, {first['image']}): --out must be one folder every process sees (a shared file system), "
            f"not a local folder on each node"
        )
    records = [done[_key(pair)] for pair in pairs if _key(pair) in done]
    predictions = write_text_atomically(out / PREDICTIONS_FILE, json.dumps(records, indent=1))
    mean = sum(r["score"] for r in records) / len(records) if records else float("nan")
    print(f"{len(records)} prediction(s) for {len(pairs)} pair(s); mean score {mean:.3f}")
    if made:
        print(f"this run: {made} prediction(s) in {seconds:.1f} s, {made / seconds:.2f} pairs/s "
              f"({world.size} process(es))")
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
    args: argparse.Namespace, share: list[IndexedPair], out: Path, segmenter: Any, world: World, *, workers: int,
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
                    record = _save(args, out, index, pair, chunk.images[pair["image"]], result)
                    journal.write(json.dumps(record) + "\n")
                    journal.flush()  # a kill after this line loses nothing made before it
                    made += 1
            bar.update(len(chunk.pairs))
    return failures, made


def _save(args: argparse.Namespace, out: Path, index: int, pair: dict[str, Any], image: Any, result: Any) -> dict[str, Any]:
    """Write the mask PNG and the overlay of one prediction (unless turned off); its record."""
    from PIL import Image

    stem = _stem(index, pair["image"])  # the input index: unique across processes, the same in any of them
    mask_file = overlay_file = None
    if not args.no_masks:
        mask_file = f"masks/{stem}.png"
        Image.fromarray(result.mask.astype("uint8") * 255).save(out / mask_file)
    if not args.no_overlays:
        overlay_file = f"overlays/{stem}.png"
        _overlay(image, result.mask, pair["text"], result.score).save(out / overlay_file)
    return _record(pair, result, mask_file=mask_file, overlay_file=overlay_file)
