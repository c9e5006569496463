"""JSON Lines files (one JSON value per line), read so that every bad line is reported with its number:
custom datasets (:mod:`ditsam.data.custom`) and ``ditsam predict --jsonl`` pairs."""

from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Any, Iterator

from ditsam.data.sample import clip


def json_lines(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """``(line number, value, None)`` for every non-blank line, or ``(line number, None, problem)`` for a line
    that is not UTF-8 text or not one JSON value (``problem`` says why and quotes the line).

    Lines end at ``\\n``, ``\\r\\n`` or ``\\r`` only, as editors number them: U+2028, U+0085 and the like are
    characters that JSON strings may hold (``str.splitlines`` would cut the line there). A UTF-8 byte-order
    mark is ignored. Raises OSError as ``open`` does.
    """
    data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    for number, raw in enumerate(data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"), start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            yield number, None, f"not UTF-8 text ({error.reason} at byte {error.start + 1}): {clip(repr(raw))}"
            continue
        if not text.strip():
            continue
        try:
            yield number, json.loads(text), None
        except json.JSONDecodeError as error:
            yield number, None, f"not valid JSON ({error.msg} at column {error.colno}): {clip(text.strip())}"
        except (ValueError, RecursionError) as error:  # integers over Python's digit limit; nesting past the stack
            yield (
                number,
                None,
                f"not valid JSON here ({type(error).__name__}: {clip(str(error))}): {clip(text.strip())}",
            )
