"""The processes of one run under ``torchrun`` / ``accelerate launch``: joining them, agreeing, leaving.

Every process of a launched run executes the same command. Two rules keep them together:

- **One decides, all hear it.** Work that must happen once before the others go on (preparing a run
  folder, generating a dataset) runs on rank 0 first (:func:`on_main`, :func:`main_first`); its value,
  or its error, reaches every rank. An error raised on one rank is raised on every rank, and printed
  once: the copies carry :data:`REPORTED_ELSEWHERE` (see :func:`reported_elsewhere`), which the command
  line prints nothing for.
- **A launcher on a machine without CUDA still means several processes.** accelerate joins a gloo
  group on CPUs only when asked to (``cpu=True``); without it every process of ``torchrun
  --nproc_per_node 2`` ran as a lone process writing the same folder. :func:`use_cpu` says when to ask,
  :func:`check_joined` refuses a run whose processes did not find each other.

Collectives of Python objects and of stop flags go through a gloo group (the default group when it is
gloo already), so that asking "does any rank want to stop?" after every step never waits for a GPU.
Without a launcher (``WORLD_SIZE`` unset or 1) nothing here touches torch.distributed.
"""

from __future__ import annotations

import logging
import os
import pickle
from typing import TYPE_CHECKING, Any, Callable, TypeVar

if TYPE_CHECKING:
    from accelerate import Accelerator

T = TypeVar("T")
logger = logging.getLogger(__name__)

#: Set by accelerate launch and torchrun (and by hand for a multi-node run) to the number of processes.
WORLD_SIZE_ENV = "WORLD_SIZE"
#: The attribute set on an error that another rank raised first and reports: print nothing for it.
REPORTED_ELSEWHERE = "ditsam_reported_elsewhere"

_object_group: Any = None


def launched_world_size() -> int:
    """The number of processes the launcher started (1 without a launcher). Raises ValueError for a
    ``WORLD_SIZE`` that is not a positive integer."""
    raw = os.environ.get(WORLD_SIZE_ENV, "1").strip() or "1"
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"environment variable {WORLD_SIZE_ENV}={raw!r}: expected the number of processes (>= 1)")
    return int(raw)


def use_cpu(device: str | None = None) -> bool:
    """Whether accelerate must be told ``cpu=True``: the device asked for is the CPU, or no GPU is there to
    use (then only a CPU group -- gloo -- can join the launched processes)."""
    import torch

    return device == "cpu" or (device is None and not torch.cuda.is_available())


def check_joined(num_processes: int) -> None:
    """Refuse, in one line, a run whose launcher started several processes that did not join one group
    (each would run alone and write the same files)."""
    launched = launched_world_size()
    if launched != num_processes:
        raise ValueError(
            f"the launcher started {launched} processes ({WORLD_SIZE_ENV}={launched}) but they did not join one "
            f"process group (this process sees {num_processes}); on a machine without CUDA pass --device cpu, or "
            f"launch with torchrun / accelerate launch --multi_gpu"
        )


def training_accelerator(*, mixed_precision: str, log_with: Any = None) -> "Accelerator":
    """accelerate's ``Accelerator`` for a training run, its processes checked to have joined one group.

    ``cpu=True`` on a machine without CUDA (:func:`use_cpu`): only then do launched CPU processes join one
    (gloo) group. DDP must expect unused parameters: text-only steps leave the point / box embeddings out of
    the graph."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    accelerator = Accelerator(
        mixed_precision=mixed_precision,
        cpu=use_cpu(),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        log_with=log_with,
    )
    check_joined(accelerator.num_processes)
    return accelerator


def _initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    import torch.distributed as dist

    return dist.get_rank() if _initialized() else 0


def _group() -> Any:
    """The gloo group for objects and flags: the default group when it is gloo, else one made once (every
    rank makes it at its first collective here, which every rank reaches in the same order)."""
    global _object_group
    import torch.distributed as dist

    if dist.get_backend() == "gloo":
        return None
    if _object_group is None:
        _object_group = dist.new_group(backend="gloo")
    return _object_group


def _portable(error: BaseException) -> BaseException:
    """``error`` itself when another rank can rebuild it as pickle does (its class called with its args gives
    the same message), else a ValueError with its text, so that another rank can raise it."""
    try:
        pickle.dumps(error)
        rebuilt = type(error)(*error.args)
    except Exception:  # a class whose constructor wants other arguments, or unpicklable state
        return ValueError(f"{type(error).__name__}: {error}")
    return error if str(rebuilt) == str(error) else ValueError(f"{type(error).__name__}: {error}")


def reported_elsewhere(error: BaseException) -> bool:
    """Whether ``error`` is a copy of one that another rank raised and reports."""
    return bool(getattr(error, REPORTED_ELSEWHERE, False))


def _copy_of_theirs(error: BaseException) -> BaseException:
    setattr(error, REPORTED_ELSEWHERE, True)
    return error


def broadcast(value: T) -> T:
    """Rank 0's picklable ``value`` on every rank."""
    if not _initialized():
        return value
    import torch.distributed as dist

    box = [value if rank() == 0 else None]
    dist.broadcast_object_list(box, src=0, group=_group())
    return box[0]  # type: ignore[return-value]


def gather(value: Any) -> list[Any]:
    """Every rank's picklable ``value``, by rank, on every rank."""
    if not _initialized():
        return [value]
    import torch.distributed as dist

    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value, group=_group())
    return values


def _attempt(work: Callable[[], T]) -> tuple[T | None, Exception | None]:
    try:
        return work(), None
    except Exception as error:  # raised again below, on every rank
        return None, error


def on_main(work: Callable[[], T]) -> T:
    """``work()`` on rank 0 only; its (picklable) value on every rank. An error it raises is raised on every
    rank (the copies marked :data:`REPORTED_ELSEWHERE`)."""
    if not _initialized():
        return work()
    value, error = _attempt(work) if rank() == 0 else (None, None)
    shared_value, shared_error = broadcast((value, None if error is None else _portable(error)))
    if error is not None:
        raise error
    if shared_error is not None:
        raise _copy_of_theirs(shared_error)
    return shared_value  # type: ignore[return-value]


def main_first(work: Callable[[], T]) -> T:
    """``work()`` on every rank, rank 0 first (it may create what the others then read: a generated dataset,
    a text encoder). An error on any rank is raised on every rank; the lowest failing rank reports it."""
    if not _initialized():
        return work()
    first = rank() == 0
    value, error = _attempt(work) if first else (None, None)
    main_error = broadcast(None if error is None else _portable(error))
    if error is not None:
        raise error
    if main_error is not None:
        raise _copy_of_theirs(main_error)
    if not first:
        value, error = _attempt(work)
    errors = gather(None if error is None else _portable(error))
    failing = next((index for index, theirs in enumerate(errors) if theirs is not None), None)
    if failing is None:
        return value  # type: ignore[return-value]
    if failing == rank() and error is not None:
        raise error
    raise _copy_of_theirs(errors[failing])


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (every rank calls it at the same point)."""
    if not _initialized():
        return flag
    import torch
    import torch.distributed as dist

    box = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(box, op=dist.ReduceOp.MAX, group=_group())
    return bool(box.item())


def leave_process_group() -> None:
    """Leave torch.distributed's process group, all processes together (a barrier first): gloo aborts a
    process ("terminate called without an active exception") whose peer tears its connections down while
    it still uses them. Call it only where every process arrives (after an error raised on one process
    alone, the others would wait forever: exit instead, the launcher stops them). No-op without a group."""
    global _object_group
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    _object_group = None
