"""Images decoded ahead of the model for ``ditsam predict``.

The pairs are cut into chunks of ``--batch-size``; DataLoader workers read the images of the next
chunks (header size check against ``--max-pixels`` first, then EXIF rotation and RGB, as
:func:`ditsam.api.read_image` does) while the model runs on the current one. An image that cannot be
read is not an error here: the chunk carries the reason, and the command reports and skips it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    from PIL import Image

#: Default workers per process at most: decoding a batch of typical photos takes a fraction of a
#: forward pass, so a few workers keep any model fed; more only hold more decoded images in memory.
DEFAULT_MAX_WORKERS = 4

#: A pair to predict: its index in the input order (it names the output files) and the pair itself.
IndexedPair = tuple[int, dict[str, Any]]


def default_workers(processes: int) -> int:
    """Workers per process when ``--workers`` is not given: the cores left to each process beside its
    own (the model's), at most :data:`DEFAULT_MAX_WORKERS`; 0 (decode in the process) when a process
    has one core or less to itself."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(DEFAULT_MAX_WORKERS, cores // max(1, processes) - 1))


@dataclasses.dataclass
class DecodedChunk:
    """A chunk of pairs, the images of its pairs that could be read, and why the others could not."""

    pairs: list[IndexedPair]
    images: dict[Path, "Image.Image"]
    failures: dict[Path, str]


class _ChunkImages:
    """A map-style dataset: chunk ``i`` with its distinct images decoded (each once per chunk)."""

    def __init__(self, *, chunks: list[list[IndexedPair]], max_pixels: int | None) -> None:
        self.chunks = chunks
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, index: int) -> DecodedChunk:
        from ditsam.api import read_image
        from ditsam.data.sample import DataError

        chunk = DecodedChunk(pairs=self.chunks[index], images={}, failures={})
        for _, pair in chunk.pairs:
            path = pair["image"]
            if path in chunk.images or path in chunk.failures:
                continue
            try:
                chunk.images[path] = read_image(path, max_pixels=self.max_pixels, what=str(path))
            except DataError as error:
                chunk.failures[path] = str(error)
        return chunk


def _as_is(chunk: DecodedChunk) -> DecodedChunk:
    """The DataLoader's collate function: a chunk is already a batch (and holds no tensors)."""
    return chunk


def decoded_chunks(
    pairs: list[IndexedPair], *, batch_size: int, max_pixels: int | None, workers: int
) -> Iterator[DecodedChunk]:
    """The ``pairs`` in chunks of ``batch_size``, in order, their images decoded by ``workers``
    DataLoader worker processes (0: in this process, one chunk at a time)."""
    from torch.utils.data import DataLoader

    chunks = [pairs[start : start + batch_size] for start in range(0, len(pairs), batch_size)]
    if not chunks:
        return iter(())
    dataset = _ChunkImages(chunks=chunks, max_pixels=max_pixels)
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers, collate_fn=_as_is)  # type: ignore[arg-type]
    return iter(loader)
