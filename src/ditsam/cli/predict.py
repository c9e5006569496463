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
``--overwrite`` (delete this command's outputs -- predictions.json, predictions.jsonl, masks/,
overlays/ -- and start again; other files are left alone).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from ditsam.cli.errors import CLIError
from ditsam.cli.source_args import SOURCE_HELP, add_source_arguments, source_options

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
JSONL_KEYS = ("image", "text", "sentence", "id")
OVERLAY_MAX_SIDE = 1024
PREDICTIONS_FILE = "predictions.json"
JOURNAL_FILE = "predictions.jsonl"
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
    parser.add_argument("--threshold", type=float, default=0.35, help="sigmoid threshold (default 0.35)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"), help="bf16: autocast (CPU / GPU)")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per forward pass (default 8)")
    parser.add_argument("--max-pixels", type=int, default=40_000_000, help="refuse larger images (default 40 MP)")
    parser.add_argument("--no-overlays", action="store_true", help="skip the overlay pictures")
    parser.add_argument("--no-masks", action="store_true", help="skip the mask PNGs (predictions.json still has them)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run into --out: pairs already in its predictions.jsonl are skipped")
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
# The journal: one line per prediction, appended as it is made
# ---------------------------------------------------------------------------------------------------
def _key(pair_or_record: dict[str, Any]) -> str:
    """What identifies a pair across runs: its id, image and sentence."""
    sentence = pair_or_record.get("sentence", pair_or_record.get("text"))
    return json.dumps([pair_or_record["id"], str(pair_or_record["image"]), sentence])


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
        remove_outputs(out, PREDICT_OUTPUTS)
    return out


# ---------------------------------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 0 < args.threshold < 1:
        raise CLIError(f"--threshold must lie strictly between 0 and 1, got {args.threshold}")
    pairs = _collect_pairs(args)
    out = _prepare_out(args)  # before the model loads: a wrong --out fails at once
    with logging_redirect_tqdm():
        return _predict(args, pairs, out)


def _predict(args: argparse.Namespace, pairs: list[dict[str, Any]], out: Path) -> int:
    from ditsam.api import Segmenter
    from ditsam.outputs import describe_write_failure, is_disk_full

    segmenter = Segmenter.from_pretrained(
        args.checkpoint, **source_options(args), device=args.device, dtype=args.dtype, threshold=args.threshold,
        max_pixels=args.max_pixels, batch_size=args.batch_size,
    )
    try:
        predictions, records, failures = _write_predictions(args, pairs, out, segmenter)
    except OSError as error:
        advice = "free some space" if is_disk_full(error) else "fix that"
        raise CLIError(
            f"{describe_write_failure(error, out)}; every prediction made so far is in {out / JOURNAL_FILE}: "
            f"{advice}, then run the same command with --resume"
        ) from error
    mean = sum(r["score"] for r in records) / len(records) if records else float("nan")
    print(f"{len(records)} prediction(s) for {len(pairs)} pair(s); mean score {mean:.3f}")
    print(f"predictions (COCO RLE): {predictions}")
    if not args.no_masks:
        print(f"masks: {out / 'masks'}/")
    if not args.no_overlays:
        print(f"overlays: {out / 'overlays'}/")
    if failures:
        print(f"{len(failures)} image(s) could not be read and were skipped:")
        for why in failures.values():
            print(f"  {why}")
        return 1
    return 0


def _write_predictions(
    args: argparse.Namespace, pairs: list[dict[str, Any]], out: Path, segmenter: Any
) -> tuple[Path, list[dict[str, Any]], dict[Path, str]]:
    """Predict the pairs the journal does not hold yet (all of them without --resume), appending each
    record as it is made, then write predictions.json atomically. Returns its path, the records in
    input order and the unreadable images (path -> why). Raises OSError when a write fails."""
    from PIL import Image
    from tqdm.auto import tqdm

    from ditsam.data.sample import DataError
    from ditsam.outputs import write_text_atomically

    masks_dir, overlays_dir = out / "masks", out / "overlays"
    if not args.no_masks:
        masks_dir.mkdir(exist_ok=True)
    if not args.no_overlays:
        overlays_dir.mkdir(exist_ok=True)

    journal_path = out / JOURNAL_FILE
    done = read_journal(journal_path) if args.resume else {}
    todo = [(index, pair) for index, pair in enumerate(pairs) if _key(pair) not in done]
    if done:
        logger.info("--resume: %d of %d pair(s) are already in %s", len(pairs) - len(todo), len(pairs), journal_path)
    failures: dict[Path, str] = {}  # unreadable image -> why
    cache: dict[Path, Any] = {}  # images of the current chunk (pairs often share an image)
    bar = tqdm(total=len(pairs), initial=len(pairs) - len(todo), desc="predict", unit="pair")
    with bar, journal_path.open("a", encoding="utf-8") as journal:  # the bar is closed before any error is shown
        for start in range(0, len(todo), args.batch_size):
            chunk = todo[start : start + args.batch_size]
            images: dict[Path, Any] = {}
            for _, pair in chunk:
                path = pair["image"]
                if path in images or path in failures:
                    continue
                try:
                    images[path] = cache[path] if path in cache else segmenter.read_image(path, what=str(path))
                except DataError as error:
                    failures[path] = str(error)
                    logger.error("skipped: %s", error)
            cache = images
            ready = [(index, pair) for index, pair in chunk if pair["image"] in images]
            if ready:
                results = segmenter.predict([images[p["image"]] for _, p in ready], [p["text"] for _, p in ready])
                for (index, pair), result in zip(ready, results):
                    stem = _stem(index, pair["image"])
                    mask_file = overlay_file = None
                    if not args.no_masks:
                        mask_file = f"masks/{stem}.png"
                        Image.fromarray(result.mask.astype("uint8") * 255).save(out / mask_file)
                    if not args.no_overlays:
                        overlay_file = f"overlays/{stem}.png"
                        _overlay(images[pair["image"]], result.mask, pair["text"], result.score).save(out / overlay_file)
                    record = _record(pair, result, mask_file=mask_file, overlay_file=overlay_file)
                    journal.write(json.dumps(record) + "\n")
                    journal.flush()  # a kill after this line loses nothing made before it
                    done[_key(record)] = record
            bar.update(len(chunk))

    records = [done[_key(pair)] for pair in pairs if _key(pair) in done]
    return write_text_atomically(out / PREDICTIONS_FILE, json.dumps(records, indent=1)), records, failures
