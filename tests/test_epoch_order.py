"""engine.data.epoch_indices: each training process's order of an epoch's samples."""

from __future__ import annotations

import torch

from ditsam.engine.data import EPOCH_SEED_STRIDE, epoch_indices


def _share(rank: int, *, world: int = 3, skip: int = 0, presorted: bool = False, epoch: int = 1) -> list[int]:
    return epoch_indices(11, seed=7, epoch=epoch, presorted=presorted, rank=rank, world=world, skip_samples=skip)


def test_the_processes_split_one_seeded_permutation_without_overlap() -> None:
    shares = [_share(rank) for rank in range(3)]
    # Pinned: runs resumed from checkpoints written by earlier versions must continue on the same order.
    assert shares == [[7, 9, 5], [6, 2, 10], [3, 8, 0]]
    expected = torch.randperm(11, generator=torch.Generator().manual_seed(7 * EPOCH_SEED_STRIDE + 1)).tolist()
    assert sum(shares, []) == expected[:9]  # 11 // 3 each: the last 2 dropped, every process takes as many steps
    assert shares == [_share(rank) for rank in range(3)]  # a resume sees the same order
    assert _share(0, epoch=2) != shares[0]


def test_a_resume_skips_what_was_seen_and_a_stream_keeps_its_order() -> None:
    assert _share(1, skip=2) == _share(1)[2:]
    assert _share(2, presorted=True) == [6, 7, 8]
    assert epoch_indices(5, seed=0, epoch=0, presorted=False, rank=0, world=1, skip_samples=5) == []
