"""Properties of the JSONL readers (custom datasets: ditsam.data.custom; ``ditsam predict --jsonl`` pairs:
ditsam.cli.predict_inputs): any file gives a valid result or the documented error naming the file and
line, never another exception. Found bugs are kept as plain regression tests at the end."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import struct
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from ditsam.cli.errors import CLIError
from ditsam.cli.predict_inputs import read_pairs_jsonl
from ditsam.data.base import clean_sentence
from ditsam.data.custom import CustomDataset, read_custom, validate_custom
from ditsam.data.sample import DataError, accepted_sizes
from strategies import (
    broken_bytes,
    example_dir,
    hostile_texts,
    mutated,
    odd_text,
    segmentations,
    sentences,
    valid_or_documented,
)

H, W = 12, 10
# A header claiming this many pixels per side is over PIL's decompression-bomb limit (2 x 89.5 megapixels).
BOMB_SIDE = 30_000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMAGES = ("img.png", "wrong_size.png", "noise.png", "truncated.png", "bomb.png", "missing.png", "folder.png")
MASKS = ("mask.png", "empty_mask.png", "wrong_size.png", "noise.png", "bomb.png", "img.png", "missing.png")
SPLITS = ("train", "val", "testA")


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A tiny PNG file whose header declares a ``side`` x ``side`` 1-bit image (no real pixel data)."""
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\0")) + _chunk(b"IEND", b"")


@functools.lru_cache(maxsize=1)
def _assets() -> dict[str, bytes]:
    """The files an example's records may name, as bytes (written anew into every example's folder)."""
    mask = np.zeros((H, W), np.uint8)
    mask[2:6, 3:7] = 1
    image = _png(Image.new("RGB", (W, H), (40, 80, 120)))
    return {
        "img.png": image,
        "mask.png": _png(Image.fromarray(mask)),
        "empty_mask.png": _png(Image.new("L", (W, H))),
        "wrong_size.png": _png(Image.new("L", (W + 1, H))),
        "noise.png": PNG_SIGNATURE + b"not a png",
        "truncated.png": image[: len(image) // 2],
        "bomb.png": bomb_png(),
    }


def write_assets(folder: Path) -> None:
    for name, data in _assets().items():
        (folder / name).write_bytes(data)
    (folder / "folder.png").mkdir()


@contextlib.contextmanager
def jsonl_example(name: str, data: bytes) -> Iterator[Path]:
    """A JSONL file of ``data`` in a fresh folder holding the assets its lines may name."""
    with example_dir() as folder:
        write_assets(folder)
        path = folder / name
        path.write_bytes(data)
        yield path


@st.composite
def custom_records(draw: st.DrawFn, *, valid: bool = False) -> dict:
    """One line of a custom JSONL file; ``valid``: every field as the format wants it and the files exist."""
    record: dict = {"image": "img.png" if valid else draw(st.sampled_from(IMAGES))}
    if draw(st.booleans()):
        record["sentences"] = draw(st.lists(sentences, min_size=1, max_size=3))
    else:
        record["sentence"] = draw(sentences)
    if draw(st.booleans()):
        record["mask"] = "mask.png" if valid else draw(st.sampled_from(MASKS))
    else:
        record["segmentation"] = draw(segmentations(H, W))
    for field, values in (("split", st.sampled_from(SPLITS) | sentences), ("category_id", st.integers())):
        if draw(st.booleans()):
            record[field] = draw(values)
    return record


@st.composite
def jsonl_bytes(draw: st.DrawFn, records: st.SearchStrategy, *, corrupt: bool = True) -> bytes:
    """A JSONL file of ``records`` as bytes: any JSON spelling (ASCII escapes or not, CRLF, BOM, blank
    lines), and with ``corrupt`` hostile lines and broken bytes."""
    lines = [json.dumps(record, ensure_ascii=draw(st.booleans())) for record in draw(st.lists(records, max_size=4))]
    if corrupt and draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), draw(hostile_texts | odd_text))
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), "")
    text = ("\r\n" if draw(st.booleans()) else "\n").join(lines)
    data = ("\ufeff" if draw(st.booleans()) else "").encode() + text.encode("utf-8", "surrogatepass")
    return draw(broken_bytes(data)) if corrupt and draw(st.booleans()) else data


def _problems_name_the_file(problems: list[str], path: Path) -> None:
    assert all(isinstance(problem, str) and problem.startswith(str(path)) for problem in problems), problems


# ---------------------------------------------------------------------------------------------------
# Custom datasets
# ---------------------------------------------------------------------------------------------------
@given(
    data=jsonl_bytes(custom_records().flatmap(mutated)),
    split=st.sampled_from(SPLITS),
    mode=st.sampled_from(("train", "eval")),
    check_pixels=st.booleans(),
)
def test_any_custom_file_gives_records_or_named_problems(
    data: bytes, split: str, mode: str, check_pixels: bool
) -> None:
    with jsonl_example("data.jsonl", data) as path:
        records, problems = read_custom(path)
        _problems_name_the_file(problems, path)
        assert all(record.line >= 1 for record in records)
        _problems_name_the_file(validate_custom(path, check_pixels=check_pixels), path)
        dataset = valid_or_documented(lambda: CustomDataset(path=path, split=split, mode=mode), DataError, path)
        if dataset is None:
            return
        checked = dataset.validate()
        _problems_name_the_file([message for _, message in checked], path)
        bad = {index for index, _ in checked}
        for index in range(len(dataset)):
            sample = valid_or_documented(lambda: dataset[index], DataError, path, "ref ")
            object_index = dataset._index[index][0]
            if object_index not in bad:  # what the check before training passes must read
                assert sample is not None and sample.mask.any()
                assert (sample.mask.shape[1], sample.mask.shape[0]) in accepted_sizes(sample.image_path)


@given(records=st.lists(custom_records(valid=True), min_size=1, max_size=4), data=st.data())
def test_valid_custom_records_read_back_unchanged(records: list[dict], data: st.DataObject) -> None:
    with jsonl_example("data.jsonl", data.draw(jsonl_bytes(st.sampled_from(records), corrupt=False))) as path:
        read, problems = read_custom(path)
        assert problems == [] or not read and problems == [f"{path}: no records; expected one JSON object per line"]
        written = {_fields(record) for record in records}
        assert all((record.sentences, record.split, record.category_id) in written for record in read)


def _fields(record: dict) -> tuple:
    """What read_custom keeps of a valid record's text fields: (sentences, split, category_id)."""
    sentences = tuple(clean_sentence(s) for s in record.get("sentences", [record.get("sentence")]))
    return sentences, record.get("split", "train"), record.get("category_id", 0)


# ---------------------------------------------------------------------------------------------------
# ditsam predict --jsonl
# ---------------------------------------------------------------------------------------------------
@st.composite
def pair_records(draw: st.DrawFn, *, valid: bool = False) -> dict:
    record: dict = {"image": "img.png" if valid else draw(st.sampled_from(IMAGES))}
    record["text" if draw(st.booleans()) else "sentence"] = draw(sentences)
    if draw(st.booleans()):
        record["id"] = draw(st.integers() | sentences)
    return record


@given(data=jsonl_bytes(pair_records().flatmap(mutated)))
def test_any_pairs_file_gives_pairs_or_one_error_naming_it(data: bytes) -> None:
    with jsonl_example("pairs.jsonl", data) as path:
        pairs = valid_or_documented(lambda: read_pairs_jsonl(path), CLIError, path)
        for pair in pairs or []:
            assert pair["image"].is_file() and isinstance(pair["text"], str) and pair["text"].strip()


@given(records=st.lists(pair_records(valid=True), min_size=1, max_size=4), data=st.data())
def test_valid_pairs_read_back_unchanged(records: list[dict], data: st.DataObject) -> None:
    with jsonl_example("pairs.jsonl", data.draw(jsonl_bytes(st.sampled_from(records), corrupt=False))) as path:
        pairs = valid_or_documented(lambda: read_pairs_jsonl(path), CLIError, f"{path} holds no pairs")
        for pair in pairs or []:
            assert any(pair["text"] == record.get("text", record.get("sentence")) for record in records)


# ---------------------------------------------------------------------------------------------------
# Regressions: the examples the properties found
# ---------------------------------------------------------------------------------------------------
def _write_lines(folder: Path, name: str, lines: list, *, prefix: bytes = b"") -> Path:
    write_assets(folder)
    path = folder / name
    path.write_bytes(
        prefix + b"\n".join(line if isinstance(line, bytes) else json.dumps(line).encode() for line in lines)
    )
    return path


GOOD_LINE = {"image": "img.png", "sentence": "the box", "mask": "mask.png"}
BAD_LINES = [b"[" * 100_000 + b"]" * 100_000, b'{"id": ' + b"9" * 5000 + b"}", b'{"image": "caf\xe9.png"}']


def test_lines_json_cannot_hold_are_named_with_the_rest_read(tmp_path: Path) -> None:
    """Nesting past the recursion limit, an integer over Python's digit limit and a Latin-1 line used to
    escape as RecursionError / ValueError / UnicodeDecodeError (the last one for the whole file)."""
    path = _write_lines(tmp_path, "data.jsonl", [GOOD_LINE, *BAD_LINES])
    records, problems = read_custom(path)
    assert [record.line for record in records] == [1]
    assert [problem.split(": ", 1)[0] for problem in problems] == [f"{path}:{line}" for line in (2, 3, 4)]
    assert "RecursionError" in problems[0] and "digits" in problems[1] and "not UTF-8 text" in problems[2]


def test_pairs_lines_json_cannot_hold_are_one_error_naming_each(tmp_path: Path) -> None:
    path = _write_lines(tmp_path, "pairs.jsonl", [{"image": "img.png", "text": "a"}, *BAD_LINES])
    try:
        read_pairs_jsonl(path)
    except CLIError as error:
        assert all(f"{path}:{line}: not " in str(error) for line in (2, 3, 4)), error
    else:
        raise AssertionError("bad lines were not reported")


def test_line_separators_inside_strings_do_not_cut_lines(tmp_path: Path) -> None:
    """U+0085 / U+2028 / U+2029 are characters JSON strings may hold raw; str.splitlines cut the line there."""
    record = {**GOOD_LINE, "sentence": "left\x85one\u2028two\u2029"}
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    records, problems = read_custom(path)
    assert problems == [] and records[0].sentences == ("left one two",) and records[0].line == 1


def test_pairs_file_with_a_byte_order_mark_reads(tmp_path: Path) -> None:
    path = _write_lines(tmp_path, "pairs.jsonl", [{"image": "img.png", "text": "a"}], prefix=b"\xef\xbb\xbf")
    assert [pair["text"] for pair in read_pairs_jsonl(path)] == ["a"]


def test_image_over_pils_pixel_limit_is_a_problem_of_its_line(tmp_path: Path) -> None:
    """A PNG header declaring 30000 x 30000 pixels escaped validation as PIL's DecompressionBombError."""
    path = _write_lines(tmp_path, "data.jsonl", [{**GOOD_LINE, "image": "bomb.png"}, {**GOOD_LINE, "mask": "bomb.png"}])
    problems = validate_custom(path, check_pixels=False)
    assert [problem.split(": ", 1)[0] for problem in problems] == [f"{path}:1", f"{path}:2"]
    assert all("exceeds limit" in problem for problem in problems), problems


def test_polygon_far_outside_or_not_finite_is_refused_not_rasterised(tmp_path: Path) -> None:
    """pycocotools crashed the process (SIGSEGV) on such polygons, in validation and in training."""
    lines = [
        {"image": "img.png", "sentence": "x", "segmentation": [[1, 1, far, 1, 1, 8]]}
        for far in (1e9, math.nan, 10**400)
    ]
    path = _write_lines(tmp_path, "data.jsonl", lines)
    problems = validate_custom(path)
    assert len(problems) == 3 and all("far outside the 10x12 image" in problem for problem in problems), problems


def test_malformed_compressed_rle_is_refused_not_decoded(tmp_path: Path) -> None:
    """pycocotools decoded "0" and "" into 120-pixel masks read from beyond its buffer (7273 and 8486 pixels set)."""
    lines = [
        {"image": "img.png", "sentence": "x", "segmentation": {"size": [H, W], "counts": counts}}
        for counts in ("0", "", "zzzz", "1" * 50)
    ]
    path = _write_lines(tmp_path, "data.jsonl", lines)
    problems = validate_custom(path)
    assert len(problems) == 4 and all("not a run-length encoding of 12x10 pixels" in p for p in problems), problems
