"""The data check ``ditsam train`` runs before its first step (and ``ditsam data validate`` without training)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from ditsam.data import DataError

logger = logging.getLogger(__name__)

#: Bad records named in the error that stops a run; the report file lists them all.
SHOWN_PROBLEMS = 50


def check_data(
    datasets: Mapping[str, Any], *, skip_bad: bool, report: Path | None = None, progress: bool = False
) -> int:
    """Check every record the run will read, before its first step; returns how many were dropped.

    ``datasets``: split -> :class:`~ditsam.data.collate.RISDataset` (streams of generated scenes have
    nothing to check and are passed over). Raises :class:`DataError` listing every bad record (file and
    record named; at most :data:`SHOWN_PROBLEMS` lines, the rest in ``report``) unless ``skip_bad``,
    which drops them and logs how many per split.
    """
    found: dict[str, list[tuple[int, str]]] = {}
    for split, dataset in datasets.items():
        reader = dataset.base
        if hasattr(reader, "validate"):
            found[split] = reader.validate(progress=progress)
    messages = list(dict.fromkeys(message for problems in found.values() for _, message in problems))
    if not messages:
        return 0
    if report is not None:
        report.write_text("\n".join(messages) + "\n", encoding="utf-8")
    listed = f"; all listed in {report}" if report is not None else ""
    if not skip_bad:
        shown = messages[:SHOWN_PROBLEMS]
        more = f"\n... and {len(messages) - len(shown)} more" if len(messages) > len(shown) else ""
        raise DataError(
            f"{len(messages)} bad record(s) in the data this run reads{listed}; nothing was trained. Fix them, or pass "
            f"--skip-bad-data to train on the rest:\n" + "\n".join(shown) + more
        )
    dropped = 0
    for split, problems in found.items():
        if problems:
            datasets[split].base.drop_objects(index for index, _ in problems)
            dropped += len(problems)
            logger.warning("--skip-bad-data: dropped %d bad record(s) of split %s%s", len(problems), split, listed)
    return dropped
