""":class:`LoadReport`: what a load did with every tensor, printed one line per module; :class:`CheckpointError`:
why a load could not be done."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model; the message names the file and the keys."""


def _group(keys: list[str]) -> list[str]:
    """Collapse numbered keys: ``blocks.3.attn.rel_pos_h`` and ``blocks.4...`` -> ``blocks.*.attn.rel_pos_h (x2)``."""
    counts = Counter(re.sub(r"\.\d+(?=\.|$)", ".*", key) for key in keys)
    return [pattern if count == 1 else f"{pattern} (x{count})" for pattern, count in counts.items()]


def _ranges(indices: set[int]) -> str:
    """{0, 1, 2, 5} -> "0-2,5"."""
    ordered, parts = sorted(indices), []
    start = previous = ordered[0]
    for index in [*ordered[1:], None]:
        if index is not None and index == previous + 1:
            previous = index
            continue
        parts.append(str(start) if start == previous else f"{start}-{previous}")
        if index is not None:
            start = previous = index
    return ",".join(parts)


def _summarise(keys: list[str]) -> list[str]:
    """One line per module: ``mask_decoder.transformer.layers.{2-3}.* (72 tensors)``, ``text_proj.* (2 tensors)``."""
    groups: dict[str, tuple[set[int], list[str]]] = {}
    for key in keys:
        parts = key.split(".")
        numbered = next((i for i, part in enumerate(parts) if part.isdigit()), None)
        if numbered is not None:
            prefix = ".".join(parts[:numbered])
            groups.setdefault(prefix, (set(), []))[0].add(int(parts[numbered]))
        else:
            prefix = ".".join(parts[: min(3, len(parts) - 1)])
        groups.setdefault(prefix, (set(), []))[1].append(key)
    lines = []
    for prefix, (indices, members) in groups.items():
        if len(members) == 1:
            lines.append(members[0])
        elif indices:
            lines.append(f"{prefix}.{{{_ranges(indices)}}}.* ({len(members)} tensors)")
        else:
            lines.append(f"{prefix}.* ({len(members)} tensors)")
    return lines


@dataclasses.dataclass
class LoadReport:
    """What a load did with every tensor.

    ``loaded``: model keys set from the checkpoint (resized ones included). ``resized``: (key, checkpoint
    shape, model shape). ``fresh``: model parameters the checkpoint does not have, left at their initial
    values (text injection, W_o, extra decoder layers). ``kept``: model parameters deliberately not taken
    from this kind of checkpoint and left as they were (the BERT of a model loaded from SAM weights).
    ``ignored``: checkpoint keys skipped on purpose. ``notes``: anything else worth knowing.
    """

    source: str
    kind: str
    loaded: list[str] = dataclasses.field(default_factory=list)
    resized: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = dataclasses.field(default_factory=list)
    fresh: list[str] = dataclasses.field(default_factory=list)
    kept: list[str] = dataclasses.field(default_factory=list)
    ignored: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        lines = [
            f"{self.kind} checkpoint {self.source}: {len(self.loaded)} tensors loaded ({len(self.resized)} resized), "
            f"{len(self.fresh)} freshly initialised, {len(self.kept)} kept, {len(self.ignored)} ignored"
        ]
        resized = _group([f"{key} {tuple(old)} -> {tuple(new)}" for key, old, new in self.resized])
        lines += [f"  resized: {entry}" for entry in resized]
        lines += [f"  fresh: {entry}" for entry in _summarise(self.fresh)]
        lines += [f"  kept: {entry}" for entry in _summarise(self.kept)]
        lines += [f"  ignored: {entry}" for entry in _summarise(self.ignored)]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)
