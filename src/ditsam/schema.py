"""The one field check shared by every reader of records: configs, dataset specs, REFER refs, SimREC entries
and custom JSONL lines each name their own file and wording, but find missing and unknown keys (and true
integers) here."""

from __future__ import annotations

from typing import Any, Iterable, Mapping


def key_problems(
    record: Mapping[str, Any], *, required: Iterable[str] = (), allowed: Iterable[str] | None = None
) -> tuple[list[str], list[str]]:
    """``(missing, unknown)``: the ``required`` keys absent from ``record`` (in ``required``'s order) and
    its keys outside ``allowed`` (in the record's order; ``None`` allows any key)."""
    missing = [key for key in required if key not in record]
    known = None if allowed is None else set(allowed)
    unknown = [] if known is None else [key for key in record if key not in known]
    return missing, unknown


def is_integer(value: Any) -> bool:
    """``value`` is an int and not a bool (JSON / YAML ``true`` is no count or id)."""
    return isinstance(value, int) and not isinstance(value, bool)
