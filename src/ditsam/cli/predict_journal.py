"""``ditsam predict``'s journals: one JSON line per prediction, appended as it is made, one file per
process (``predictions.jsonl`` alone, ``predictions.rank{r}.jsonl`` for rank r of several); read
back to resume and to merge into ``predictions.json``."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from ditsam.cli.predict_world import World
from ditsam.data.records import JOURNAL_FILE, PREDICTIONS_FILE

logger = logging.getLogger("ditsam.cli.predict")  # the command's log, under the name it always had

__all__ = ["JOURNAL_FILE", "PREDICTIONS_FILE", "journal_name", "journal_paths", "pair_key", "read_journals"]
#: The journal of rank r when several processes run (``accelerate launch`` / ``torchrun``).
RANK_JOURNAL_FORMAT = "predictions.rank{rank}.jsonl"
RANK_JOURNAL_GLOB = "predictions.rank*.jsonl"
RANK_JOURNAL_PATTERN = re.compile(r"predictions\.rank(\d+)\.jsonl")


def pair_key(pair_or_record: dict[str, Any]) -> str:
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
        (int(match.group(1)), path)
        for path in out.glob(RANK_JOURNAL_GLOB)
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
            records[pair_key(record)] = record
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
