"""Datasets: readers for REFER, gRefCOCO, SimREC and custom JSONL data, all yielding :class:`RefSample`.

``open_dataset({"format": "refer", ...})`` builds a reader from a config mapping; the reader
classes are imported on first use so that ``import ditsam.data`` stays cheap.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, Mapping

from ditsam.data.sample import DataError, RefSample, load_image, load_sample_image
from ditsam.schema import key_problems

__all__ = [
    "CustomDataset",
    "DataError",
    "FORMATS",
    "GRefCocoDataset",
    "RefSample",
    "ReferDataset",
    "SimRecDataset",
    "list_splits",
    "load_image",
    "load_sample_image",
    "open_dataset",
]

# format name -> (module, dataset class); the class's keyword arguments are the spec's keys.
FORMATS: dict[str, tuple[str, str]] = {
    "refer": ("ditsam.data.refer", "ReferDataset"),
    "grefcoco": ("ditsam.data.grefcoco", "GRefCocoDataset"),
    "simrec": ("ditsam.data.simrec", "SimRecDataset"),
    "custom": ("ditsam.data.custom", "CustomDataset"),
}
_LAZY = {class_name: module for module, class_name in FORMATS.values()}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_dataset(spec: Mapping[str, Any]) -> Any:
    """Build a dataset from a mapping: ``format`` (refer | grefcoco | simrec | custom) plus the keyword
    arguments of that format's class, e.g.::

        {"format": "refer", "root": "data/refer", "dataset": "refcocog", "split_by": "umd",
         "image_dir": "data/coco/train2014", "split": "val", "mode": "eval"}

    For ``simrec``, ``root`` + ``dataset`` may replace ``ann_file`` + ``mask_dir`` (standard
    ``anns/`` / ``masks/`` layout). Unknown or missing keys raise :class:`DataError`.
    """
    builder, kwargs = _builder(spec)
    return builder(**kwargs)


def list_splits(spec: Mapping[str, Any]) -> list[str]:
    """Split names available for a spec as :func:`open_dataset` takes it (``split``/``mode`` ignored)."""
    fmt = _format(spec)
    args = {key: value for key, value in spec.items() if key not in ("format", "split", "mode")}
    if fmt == "refer":
        from ditsam.data.refer import available_splits as refer_splits

        return refer_splits(**_pick(args, ("root", "dataset", "split_by"), fmt))
    if fmt == "grefcoco":
        from ditsam.data.grefcoco import available_splits as grefcoco_splits

        optional = {key: args[key] for key in ("dataset", "split_by") if key in args}
        return grefcoco_splits(**_pick(args, ("root",), fmt), **optional)
    if fmt == "simrec":
        from pathlib import Path

        from ditsam.data.simrec import available_splits as simrec_splits

        if "root" in args and "dataset" in args:
            return simrec_splits(Path(args["root"]) / "anns" / f"{args['dataset']}.json")
        return simrec_splits(**_pick(args, ("ann_file",), fmt))
    from ditsam.data.custom import available_splits as custom_splits

    return custom_splits(**_pick(args, ("path",), fmt))


def _format(spec: Mapping[str, Any]) -> str:
    if not isinstance(spec, Mapping):
        raise DataError(f"dataset spec must be a mapping, got {spec!r}")
    fmt = spec.get("format")
    if fmt not in FORMATS:
        raise DataError(f"dataset spec: unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return fmt


def _builder(spec: Mapping[str, Any]) -> tuple[Callable[..., Any], dict[str, Any]]:
    fmt = _format(spec)
    module, class_name = FORMATS[fmt]
    cls = getattr(importlib.import_module(module), class_name)
    kwargs = {key: value for key, value in spec.items() if key != "format"}
    builder = cls.from_root if fmt == "simrec" and "root" in kwargs else cls
    parameters = inspect.signature(builder).parameters
    missing, unknown = key_problems(
        kwargs,
        required=sorted(name for name, p in parameters.items() if p.default is inspect.Parameter.empty),
        allowed=parameters,
    )
    unknown = sorted(unknown)
    if unknown or missing:
        parts = ([f"unknown key(s) {', '.join(unknown)}"] if unknown else []) + (
            [f"missing key(s) {', '.join(missing)}"] if missing else []
        )
        raise DataError(
            f"dataset spec for format {fmt!r}: {'; '.join(parts)}; accepted keys: format, {', '.join(parameters)}"
        )
    return builder, kwargs


def _pick(args: Mapping[str, Any], keys: tuple[str, ...], fmt: str) -> dict[str, Any]:
    missing, _ = key_problems(args, required=keys)
    if missing:
        raise DataError(f"dataset spec for format {fmt!r}: missing key(s) {', '.join(missing)}")
    return {key: args[key] for key in keys}
