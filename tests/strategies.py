"""Hypothesis strategies shared by the property tests of the input readers (``test_properties_*.py``):
odd scalars, structured mutations of valid records (fields dropped, retyped, re-nested, pushed to
extremes), and corruptions of whole files (broken JSON / YAML text, broken pickle bytes), plus the
checks every reader's property ends with (the error is the documented class and names the place).
"""

from __future__ import annotations

import contextlib
import copy
import math
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from hypothesis import strategies as st
from pycocotools import mask as mask_utils

from helpers import uncompressed_counts

# Nesting deep enough to exhaust Python's recursion limit in any recursive parser or walker.
DEEP_NESTING = 100_000
# Digits of an integer literal above Python's int-to-str limit (4300): int() refuses such text.
HUGE_DIGITS = 5_000
# A path component longer than any file system accepts (255 bytes): stat() raises ENAMETOOLONG.
LONG_NAME = 300
#: A few values each reader must survive wherever a field holds a scalar.
EXTREMES = (
    math.nan,
    math.inf,
    -math.inf,
    -0.0,
    1e308,
    -1,
    -(10**20),
    10**20,
    2**63,
    2**64 + 1,
    10**400,
    0.5,
    -2.5,
    True,
    False,
    None,
    "",
    " ",
    "\x00",
    "\ud800",
    "\u202e\u2028",
    "\ufeff",
    "a" * LONG_NAME,
    "../..",
    "/",
    "nan",
    "-1",
    "1e999",
    [],
    {},
    [[]],
    [None],
)

#: Text with the characters that break naive code: controls, lone surrogates, separators, RTL marks.
odd_text = st.one_of(
    st.text(max_size=12),
    st.text(st.characters(codec="utf-8"), max_size=8),
    st.sampled_from(["", " \t", "\x00", "\ud800x", "e\u0301", "\u2028", "\u3000", "\U0001f600", "a/b", "C:\\x"]),
)
#: Any JSON scalar, NaN / infinities and integers of any size included.
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    odd_text,
    st.sampled_from(EXTREMES[:14]),
)
#: Any JSON value (small trees).
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(odd_text, inner, max_size=3),
    max_leaves=6,
)
#: What a plain-data pickle may hold beyond JSON: bytes (not always UTF-8), tuples, sets, int keys.
pickle_values = st.recursive(
    st.one_of(json_scalars, st.binary(max_size=8), st.sampled_from([b"\xff\xfe", b"caf\xe9"])),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner, inner)
        | st.frozensets(st.integers(), max_size=2)
        | st.dictionaries(st.one_of(odd_text, st.integers(), st.binary(max_size=4)), inner, max_size=3)
    ),
    max_leaves=6,
)

#: Sentences as readers must take them: any non-blank text.
sentences = st.text(min_size=1, max_size=20).filter(str.strip)


def _rectangle(height: int, width: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def rectangles(height: int, width: int) -> st.SearchStrategy:
    """Bool (height, width) masks of one axis-aligned rectangle (possibly empty)."""
    return st.builds(
        _rectangle,
        st.just(height),
        st.just(width),
        st.integers(0, height - 1),
        st.integers(1, height),
        st.integers(0, width - 1),
        st.integers(1, width),
    )


def _compressed(mask: np.ndarray) -> dict:
    counts = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode("ascii")
    return {"size": list(mask.shape), "counts": counts}


def segmentations(height: int, width: int) -> st.SearchStrategy:
    """Valid COCO segmentations of a height x width image: polygons (points up to 2 pixels outside it),
    compressed or uncompressed RLE, or a list of RLE parts."""
    coordinate = st.floats(-2, max(height, width) + 2, allow_nan=False)
    polygons = st.lists(
        st.lists(st.tuples(coordinate, coordinate), min_size=3, max_size=5).map(
            lambda points: [v for point in points for v in point]
        ),
        min_size=1,
        max_size=2,
    )
    uncompressed = rectangles(height, width).map(
        lambda mask: {"size": list(mask.shape), "counts": uncompressed_counts(mask)}
    )
    return st.one_of(
        polygons,
        rectangles(height, width).map(_compressed),
        uncompressed,
        st.lists(uncompressed, min_size=1, max_size=2),
    )


MUTATIONS = ("drop", "retype", "wrap", "unwrap", "empty", "extreme", "extra_key", "duplicate", "edit")


# Deepest node paths() walks to: YAML aliases can make a list that holds itself.
MAX_PATH_DEPTH = 12


def paths(value: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every path (keys / indices from the root) to a node of a tree of dicts and lists, down to
    :data:`MAX_PATH_DEPTH`."""
    yield prefix
    if len(prefix) >= MAX_PATH_DEPTH:
        return
    if isinstance(value, dict):
        for key, child in value.items():
            yield from paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from paths(child, (*prefix, index))


def _replaced(value: Any, path: tuple, make: Callable[[Any], Any]) -> Any:
    """``value`` with the node at ``path`` replaced by ``make(node)``; a ``_DROP`` result removes the node."""
    if not path:
        return make(value)
    head, rest = path[0], path[1:]
    child = _replaced(value[head], rest, make)
    if child is _DROP:
        if isinstance(value, dict):
            return {key: item for key, item in value.items() if key != head}
        return value[:head] + value[head + 1 :]
    if isinstance(value, dict):
        return {**value, head: child}
    return [*value[:head], child, *value[head + 1 :]]


_DROP = object()


def _unwrapped(node: Any) -> Any:
    if isinstance(node, dict) and node:
        return next(iter(node.values()))
    if isinstance(node, list) and node:
        return node[0]
    return str(node)


def _edited(node: str, draw: st.DrawFn) -> str:
    """One character of a string inserted, deleted or replaced (broken RLE counts, paths, numbers)."""
    position = draw(st.integers(0, len(node)))
    insert = draw(st.sampled_from(["", "0", "\x7f", "z", " ", "\ud800", "\n"]))
    return node[:position] + insert + node[position + (draw(st.booleans()) and position < len(node)) :]


def _mutation(node: Any, kind: str, draw: st.DrawFn, leaves: st.SearchStrategy) -> Any:
    """What ``node`` becomes under one mutation of :data:`MUTATIONS` (``_DROP``: removed from its parent)."""
    if kind == "drop":
        return _DROP
    if kind == "retype":
        return draw(leaves)
    if kind == "wrap":
        return [node]
    if kind == "unwrap":
        return _unwrapped(node)
    if kind == "empty":
        return type(node)() if isinstance(node, (dict, list, str, int, float)) else None
    if kind == "extreme":
        return copy.deepcopy(draw(st.sampled_from(EXTREMES)))
    if kind == "extra_key" and isinstance(node, dict):
        return {**node, draw(odd_text): draw(leaves)}
    if kind == "duplicate" and isinstance(node, list) and node:
        return [*node, copy.deepcopy(node[-1])]
    if kind == "edit" and isinstance(node, str):
        return _edited(node, draw)
    return node


@st.composite
def mutated(draw: st.DrawFn, value: Any, *, max_mutations: int = 3, leaves: st.SearchStrategy = json_values) -> Any:
    """``value`` (a tree of dicts, lists and scalars) with up to ``max_mutations`` structural changes at
    random nodes: dropped, retyped (``leaves``), wrapped in a list, unwrapped, emptied, set to an extreme,
    given an unknown key, duplicated, or a string edited by one character."""
    value = copy.deepcopy(value)
    for _ in range(draw(st.integers(0, max_mutations))):
        path = draw(st.sampled_from(list(paths(value))))
        kind = draw(st.sampled_from(MUTATIONS))
        value = _replaced(value, path, lambda node: _mutation(node, kind, draw, leaves))
        if value is _DROP:  # the root itself
            value = None
    return value


# ---------------------------------------------------------------------------------------------------
# Whole files
# ---------------------------------------------------------------------------------------------------
#: Texts that no JSON / YAML parser should let escape as anything but its documented error.
hostile_texts = st.sampled_from(
    [
        "[" * DEEP_NESTING + "]" * DEEP_NESTING,
        '{"a": ' * DEEP_NESTING + "1" + "}" * DEEP_NESTING,
        "1" * HUGE_DIGITS,
        '{"id": ' + "9" * HUGE_DIGITS + "}",
        "NaN",
        "-Infinity",
        '{"a": 1',
        "{'a': 1}",
        "\x00",
        "\ufeff{}",
        "null",
        "[]",
        '""',
    ]
)


@st.composite
def broken_bytes(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` truncated, with bytes flipped, inserted or spliced in, or replaced by noise."""
    kind = draw(st.sampled_from(("truncate", "flip", "insert", "noise", "keep")))
    if kind == "truncate":
        return data[: draw(st.integers(0, max(0, len(data) - 1)))]
    if kind == "noise":
        return draw(st.binary(max_size=64))
    if kind == "keep" or not data:
        return data
    position = draw(st.integers(0, len(data) - 1))
    if kind == "flip":
        return data[:position] + bytes([data[position] ^ (1 << draw(st.integers(0, 7)))]) + data[position + 1 :]
    return (
        data[:position]
        + draw(st.sampled_from([b"\xff", b"\xc3", b"\x00", b"\n", b"\r\n", b"\xe2\x80\xa8"]))
        + data[position:]
    )


def deep_pickle(depth: int = DEEP_NESTING) -> bytes:
    """Protocol-2 pickle bytes of lists nested ``depth`` deep (pickling such a list would itself recurse)."""
    return b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."


def self_referencing_pickle() -> bytes:
    """Pickle bytes of a list that contains itself (the memo makes cycles cheap)."""
    import pickle

    loop: list = []
    loop.append(loop)
    return pickle.dumps([{"ref_id": 1, "ann_id": 1, "image_id": 1, "split": "train", "sentences": loop}], protocol=2)


# ---------------------------------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def example_dir() -> Iterator[Path]:
    """A fresh empty folder for one example (hypothesis runs many examples per test function)."""
    with tempfile.TemporaryDirectory(prefix="prop-") as folder:
        yield Path(folder)


def assert_names_place(error: BaseException, *places: Any) -> None:
    """The message is one line's worth of text naming one of ``places`` (a file, a line, a record, a key)."""
    message = str(error)
    assert message.strip(), f"{type(error).__name__} without a message"
    # A place is named as it is, or as repr() quotes it ('\n' for a newline, '\\U000cf572' for an unprintable).
    assert any(str(place) in message or repr(str(place))[1:-1] in message for place in places), (
        f"{message!r} names none of {places}"
    )


def valid_or_documented(call: Callable[[], Any], error_type: type[BaseException], *places: Any) -> Any:
    """``call()``'s result, or None when it raised ``error_type`` with a message naming one of ``places``.
    Any other exception escapes as itself, so hypothesis shrinks the input and reports it."""
    try:
        return call()
    except error_type as error:
        assert_names_place(error, *places)
        return None


def assert_raises_naming(error_type: type[BaseException], call: Callable[[], Any], *fragments: str) -> None:
    """``call()`` raises ``error_type`` with a message holding every one of ``fragments`` (the regressions)."""
    try:
        call()
    except error_type as error:
        assert all(fragment in str(error) for fragment in fragments), f"{error!s} lacks one of {fragments}"
    else:
        raise AssertionError(f"no {error_type.__name__} naming {fragments}")
