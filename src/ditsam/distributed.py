"""Leaving a multi-process run cleanly."""

from __future__ import annotations


def leave_process_group() -> None:
    """Leave torch.distributed's process group, all processes together (a barrier first): gloo aborts a
    process ("terminate called without an active exception") whose peer tears its connections down while
    it still uses them. Call it only where every process arrives (after an error raised on one process
    alone, the others would wait forever: exit instead, the launcher stops them). No-op without a group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
