"""ditsam: Deep Instruction Tuning (DIT) for the Segment Anything Model.

Public names are imported on first use, so ``import ditsam`` does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "DITSam": "ditsam.model.dit",
    "DITSamOutput": "ditsam.model.dit",
    "DITSamConfig": "ditsam.model.config",
    "reference_config": "ditsam.model.config",
    "TextConfig": "ditsam.model.text",
    "RISMetrics": "ditsam.metrics",
    "GRESMetrics": "ditsam.metrics",
    "Segmenter": "ditsam.api",
    "SegmentationResult": "ditsam.api",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ditsam' has no attribute {name!r}")
