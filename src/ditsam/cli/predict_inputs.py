"""``ditsam predict``'s inputs: the (image, sentence) pairs of ``--image`` / ``--images`` with
``--text``, or of a ``--jsonl`` file, every problem reported before anything runs."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ditsam.cli.errors import CLIError
from ditsam.data.images import IMAGE_SUFFIXES
from ditsam.data.jsonl import json_lines
from ditsam.schema import is_integer

JSONL_KEYS = ("image", "text", "sentence", "id", "split", "category_id")
#: Label fields of a record (docs/record.schema.json) that a pairs file may hold: read past, not used (the
#: model predicts them anew), so a labelled file or an earlier predictions.jsonl is a pairs file as it is.
LABEL_KEYS = (
    "segmentation",
    "mask",
    "score",
    "bbox",
    "area",
    "present",
    "presence",
    "masks",
    "mask_file",
    "overlay_file",
)


def read_pairs_jsonl(path: Path) -> list[dict[str, Any]]:
    """Parse a JSONL file of ``{"image", "text"}`` objects; raises CLIError listing every bad line."""
    if not path.is_file():
        raise CLIError(f"JSONL file {path} does not exist")
    problems: list[str] = []
    pairs: list[dict[str, Any]] = []
    base = path.parent
    try:
        lines = list(json_lines(path))
    except OSError as error:
        raise CLIError(f"cannot read JSONL file {path}: {error}") from error
    for number, obj, problem in lines:
        where = f"{path}:{number}"
        before = len(problems)
        if problem:
            problems.append(f"{where}: {problem}")
            continue
        if not isinstance(obj, dict):
            problems.append(f'{where}: expected an object {{"image": ..., "text": ...}}, got {type(obj).__name__}')
            continue
        if "sentences" in obj:
            problems.append(
                f"{where}: 'sentences' (a list) is a training record's; a pairs line takes one sentence: give "
                f"'sentence' (or 'text'), one line per sentence"
            )
        unknown = sorted(set(obj) - set(JSONL_KEYS) - set(LABEL_KEYS) - {"sentences"})
        if unknown:
            problems.append(
                f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; allowed: image, text (or sentence), id, "
                f"split, category_id (and a record's label fields, not used: {', '.join(LABEL_KEYS)})"
            )
        split = obj.get("split", "train")
        if not isinstance(split, str) or not split.strip():
            problems.append(f"{where}: 'split' must be a non-empty string such as \"train\", got {split!r}")
        if "category_id" in obj and not is_integer(obj["category_id"]):
            problems.append(f"{where}: 'category_id' must be an integer, got {obj['category_id']!r}")
        image = obj.get("image")
        if not isinstance(image, str) or not image.strip():
            problems.append(f"{where}: 'image' must be a file path (a non-empty string), got {image!r}")
            image_path = None
        else:
            # Absolute: the records name images wherever predictions.json is read from (and resume matches them).
            image_path = Path(os.path.abspath(Path(image) if os.path.isabs(image) else base / image))
            if not os.path.isfile(image_path):  # never raises: Path.is_file does for a name too long
                problems.append(f"{where}: image file {image_path} not found")
        if "text" in obj and "sentence" in obj:
            problems.append(f"{where}: give 'text' or 'sentence', not both")
        text = obj.get("text", obj.get("sentence"))
        if not isinstance(text, str) or not text.strip():
            problems.append(f"{where}: 'text' must be a non-empty sentence, got {text!r}")
        if len(problems) > before:
            continue
        pair = {"image": image_path, "text": text, "id": obj.get("id", len(pairs)), "line": number}
        pair.update({key: obj[key] for key in ("split", "category_id") if key in obj})
        pairs.append(pair)
    if problems:
        shown = problems[:50]
        more = f"\n... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        raise CLIError(f"{len(problems)} problem(s) in {path}, nothing was run:\n" + "\n".join(shown) + more)
    if not pairs:
        raise CLIError(f"{path} holds no pairs")
    return pairs


def collect_pairs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The pairs of ``--image`` / ``--images`` with ``--text``, or of ``--jsonl``, checked before anything runs."""
    if args.jsonl:
        if args.text is not None:
            raise CLIError("--text is not used with --jsonl (each line carries its sentence)")
        return read_pairs_jsonl(Path(args.jsonl))
    if args.text is None or not args.text.strip():
        raise CLIError('--text "SENTENCE" is required with --image / --images (and must not be empty)')
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
    return [{"image": Path(os.path.abspath(path)), "text": args.text, "id": index} for index, path in enumerate(files)]
