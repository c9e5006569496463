"""The processes of one ``ditsam predict`` run: which one this is, and how they agree.

Under ``accelerate launch`` or ``torchrun`` every process runs the same command. Both launchers set
``WORLD_SIZE`` (and ``RANK`` / ``LOCAL_RANK``, read by accelerate's :class:`~accelerate.PartialState`,
which joins the process group: gloo on CPUs, NCCL on GPUs). Without a launcher (``WORLD_SIZE`` unset
or 1) nothing distributed is touched: :class:`World` is then one process and every collective is a
no-op returning its input.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any, TypeVar

T = TypeVar("T")

#: How long a process waits for the others at a collective. The last one is the end of the run, where a
#: process that finished its share waits for the slowest (a slower GPU, a slower disk); torch's own
#: default (10 to 30 minutes) is too short for a large dataset. A process that dies does not leave the
#: others waiting this long: the launcher stops them all.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=6)


@dataclasses.dataclass(frozen=True)
class World:
    """This process's place among the run's processes: ``rank`` in ``0 .. size - 1``.

    ``device``: the device accelerate assigned to this process (``cuda:LOCAL_RANK`` on GPUs, ``cpu``
    with ``--cpu``); None for a single process, whose device the Segmenter chooses.
    """

    rank: int = 0
    size: int = 1
    device: str | None = None

    @classmethod
    def from_environment(cls, *, cpu: bool) -> "World":
        """One process without a launcher; under one, join its process group (``cpu``, or a machine without
        CUDA: gloo). Raises ValueError for a ``WORLD_SIZE`` that is not a positive integer, or for processes
        that did not join one group."""
        from ditsam.distributed import check_joined, launched_world_size, use_cpu

        if launched_world_size() == 1:
            return cls()
        from accelerate import PartialState

        state = PartialState(cpu=cpu or use_cpu(), timeout=COLLECTIVE_TIMEOUT)
        check_joined(state.num_processes)
        return cls(rank=state.process_index, size=state.num_processes, device=str(state.device))

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that checks ``--out``, plans the work, merges and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def share(self, items: list[T]) -> list[T]:
        """This process's share of ``items``: item ``i`` goes to rank ``i % size`` (every process
        computes the same split from the same list; shares differ in length by at most one)."""
        return items[self.rank :: self.size]

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every process (a picklable object)."""
        from ditsam.distributed import broadcast

        return broadcast(value)

    def gather(self, value: Any) -> list[Any]:
        """Every process's ``value`` (picklable), by rank, on every process."""
        from ditsam.distributed import gather

        return gather(value)

    def close(self) -> None:
        """Leave the process group, all processes together (see :func:`ditsam.distributed.leave_process_group`)."""
        if self.distributed:
            from ditsam.distributed import leave_process_group

            leave_process_group()
