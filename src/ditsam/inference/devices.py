"""Where and in what precision a :class:`~ditsam.api.Segmenter` runs: ``device=`` and ``dtype=``
checked and resolved, with one-sentence errors for what this machine cannot do.

``dtype="auto"`` (the default) runs bf16 autocast where the device does bf16 matrix products in hardware --
a CUDA GPU that supports bf16, a CPU with AMX-BF16 or AVX512-BF16 -- and float32 elsewhere. On such a CPU
(an Intel Xeon with AMX, 2 cores) the whole ViT-B L-DIT predict took 0.35 s in bf16 against 1.02 s in float32
(benchmarks/README.md, "CPU backends"); on CPUs without those instructions bf16 is emulated and several
times slower than float32, so the CPU's flags decide, not a guess.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported when a device is resolved, not with this module
    import torch

logger = logging.getLogger(__name__)

#: The device name that picks the best one here (as ``device_map="auto"`` users expect); None means it too.
AUTO_DEVICE = "auto"
#: The dtype name that picks bf16 where the device runs it in hardware, else float32.
AUTO_DTYPE = "auto"
#: CPU flags (Linux /proc/cpuinfo names) of bf16 matrix instructions: with one of them bf16 autocast is fast.
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
_CPUINFO = "/proc/cpuinfo"

_DTYPE_NAMES = {
    "fp32": "float32",
    "float32": "float32",
    "float": "float32",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
    "half": "float16",
}


#: ``dtype`` values that run an exported graph on the CPU instead of the PyTorch model: ``"int8"`` (ONNX
#: Runtime, :mod:`ditsam.int8`) and ``"openvino"`` (:mod:`ditsam.openvino_backend`).
EXPORTED_BACKENDS = ("int8", "openvino")


def exported_backend(dtype: object) -> str | None:
    """``"int8"`` / ``"openvino"`` (any case) for those ``dtype`` values (:data:`EXPORTED_BACKENDS`), else None."""
    if isinstance(dtype, str) and dtype.lower() in EXPORTED_BACKENDS:
        return dtype.lower()
    return None


def exported_device(device: "torch.device | str | None", backend: str) -> str:
    """The device of an exported ``backend`` (:data:`EXPORTED_BACKENDS`): the CPU; any other explicit device is
    an error."""
    if device not in (None, AUTO_DEVICE) and str(device).split(":")[0] != "cpu":
        raise ValueError(f"dtype={backend!r} runs on the CPU, not on {str(device)!r}: pass device='cpu'")
    return "cpu"


@functools.lru_cache(maxsize=1)
def auto_device() -> "torch.device":
    """The best device here: CUDA, then MPS (Apple GPUs), then the CPU; chosen (and said in the log) once per
    process, however many segmenters are built."""
    import torch

    if torch.cuda.is_available():
        chosen = torch.device("cuda")
    elif torch.backends.mps.is_available():
        chosen = torch.device("mps")
    else:
        chosen = torch.device("cpu")
    logger.info("device='auto': running on %s", chosen)
    return chosen


def resolve_device(device: "torch.device | str | None") -> "torch.device":
    """None or ``"auto"`` -> :func:`auto_device` (CUDA, then MPS, then the CPU); anything else as
    ``torch.device`` takes it, checked to be usable here. Raises ValueError in one sentence for an unknown
    device name, or for a CUDA device on a machine or torch build without one (torch itself would fail
    later, deep in ``.to()``)."""
    import torch

    if device is None or device == AUTO_DEVICE:
        return auto_device()
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}: expected cpu, cuda, cuda:N or mps") from None
    if resolved.type == "cuda":
        if torch.version.cuda is None:
            raise ValueError(
                f"device {str(device)!r} asked for, but this torch build ({torch.__version__}) has no CUDA support; "
                f"use --device cpu (device='cpu'), or install the torch build for your CUDA"
            )
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {str(device)!r} asked for, but no CUDA GPU is visible; use --device cpu (device='cpu')"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {str(device)!r} asked for, but only {torch.cuda.device_count()} CUDA GPU(s) are visible "
                f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})"
            )
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            f"device {str(device)!r} asked for, but MPS is not available here; use --device cpu (device='cpu')"
        )
    return resolved


def cpu_bf16_flags() -> tuple[str, ...]:
    """Which of :data:`CPU_BF16_FLAGS` this CPU has (none where /proc/cpuinfo cannot be read: not Linux)."""
    try:
        with open(_CPUINFO, encoding="utf-8", errors="replace") as handle:
            flags = next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), [])
    except OSError:
        return ()
    return tuple(flag for flag in CPU_BF16_FLAGS if flag in flags)


@functools.lru_cache(maxsize=None)
def auto_dtype(device_type: str) -> "torch.dtype | None":
    """The precision ``dtype="auto"`` picks on a device of ``device_type``: bfloat16 on a CUDA GPU with bf16 and
    on a CPU with bf16 matrix instructions, else None (float32); said in the log once per device type."""
    import torch

    if device_type == "cuda":
        chosen, why = (
            (torch.bfloat16, "this GPU supports bf16")
            if torch.cuda.is_bf16_supported()
            else (None, "this GPU has no bf16")
        )
    elif device_type == "cpu":
        flags = cpu_bf16_flags()
        chosen, why = (
            (torch.bfloat16, f"the CPU has {' and '.join(flags)}")
            if flags
            else (None, "the CPU has no bf16 matrix instructions (bf16 would be emulated, slower than float32)")
        )
    else:
        chosen, why = None, f"bf16 is not used on {device_type}"
    logger.info("dtype='auto' on %s: %s (%s)", device_type, "bf16 autocast" if chosen is not None else "float32", why)
    return chosen


def resolve_dtype(dtype: "torch.dtype | str | None", *, device: "torch.device | None" = None) -> "torch.dtype | None":
    """None / float32 -> None (no autocast); bfloat16 / float16 (or "bf16", "fp16", ...) -> that dtype;
    ``"auto"`` -> :func:`auto_dtype` of ``device`` (the CPU when None)."""
    import torch

    if dtype is None:
        return None
    if isinstance(dtype, str) and dtype.lower() == AUTO_DTYPE:
        return auto_dtype(device.type if device is not None else "cpu")
    if isinstance(dtype, str):
        name = _DTYPE_NAMES.get(dtype.lower().removeprefix("torch."))
        if name is None:
            raise ValueError(f"unknown dtype {dtype!r}: use auto, fp32, bf16 or fp16")
        dtype = getattr(torch, name)
    if dtype == torch.float32:
        return None
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
    return dtype


def resolve_device_for(device: "torch.device | str | None", dtype: "torch.dtype | str | None") -> "torch.device":
    """:func:`resolve_device`, the CPU for an exported backend (:func:`exported_device`)."""
    backend = exported_backend(dtype)
    return resolve_device(exported_device(device, backend) if backend is not None else device)
