"""The inputs of one :meth:`ditsam.api.Segmenter.predict` call paired up into jobs (one image, one
sentence, its prompts), validated before any work, and grouped into batches with one prompt layout
whose images are preprocessed once."""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any, Callable, Hashable, Iterator

import numpy as np

from ditsam.inference.prompts import check_inside, parse_box, parse_points

if TYPE_CHECKING:
    import torch

    from ditsam.data.transforms import TransformMeta


@dataclasses.dataclass
class Job:
    """One image-sentence pair of a call, at its place ``index`` in the answer."""

    index: int
    image_key: Hashable
    image: Any
    # None: no text, the job is prompted by its points / box only (a SAM such as refshapes-sam).
    sentence: str | None
    points: tuple[np.ndarray, np.ndarray] | None
    box: np.ndarray | None
    what: str

    @property
    def signature(self) -> tuple[int, bool]:
        """Jobs batched together must have the same prompt layout."""
        return (0 if self.points is None else len(self.points[1]), self.box is not None)


@dataclasses.dataclass
class Prepared:
    """An image read and preprocessed for the model."""

    canvas: "torch.Tensor"  # (3, S, S) float32, normalised
    meta: "TransformMeta"


def image_key(image: Any) -> Hashable:
    """What tells images apart within a call: a path by its name, anything else by its identity."""
    if isinstance(image, (str, os.PathLike)):
        return ("path", os.fspath(image))
    return ("object", id(image))


def make_jobs(image: Any, text: Any, points: Any, boxes: Any) -> tuple[list[Job], bool]:
    """Validate the inputs (types, sentences, prompt shapes) and pair them up, before any work.
    Returns the jobs and whether the call asked for one result (not a list)."""
    many_images = isinstance(image, (list, tuple))
    if text is None:
        if points is None and boxes is None:
            raise ValueError(
                "give text, or points= / boxes= without text for a model trained with them (e.g. refshapes-sam)"
            )
        sentences, many_sentences = [None], False
    elif isinstance(text, str):
        sentences, many_sentences = [text], False
    elif isinstance(text, (list, tuple)):
        sentences, many_sentences = list(text), True
    else:
        raise TypeError(
            f"text must be a sentence (str), a list of sentences or None (points / boxes only), got {type(text).__name__}"
        )
    if many_sentences and not sentences:
        raise ValueError("text is an empty list: give at least one sentence")
    for index, sentence in enumerate(sentences if text is not None else ()):
        if not isinstance(sentence, str):
            raise TypeError(f"sentence {index} must be a str, got {type(sentence).__name__}")
        if not sentence.strip():
            raise ValueError(f"sentence {index} is empty ({sentence!r}): every prediction needs a description")
    if many_images:
        images = list(image)
        if not images:
            raise ValueError("image is an empty list: give at least one image")
        if many_sentences and len(sentences) != len(images):
            raise ValueError(
                f"{len(images)} images but {len(sentences)} sentences: give one sentence for all images, "
                f"or one per image"
            )
        if not many_sentences:
            sentences = sentences * len(images)
        point_list = _per_pair(points, len(images), "points")
        box_list = _per_pair(boxes, len(images), "boxes")
    else:
        images = [image] * len(sentences)
        point_list = [points] * len(sentences)
        box_list = [boxes] * len(sentences)
    jobs = []
    for index, (img, sentence, pts, box) in enumerate(zip(images, sentences, point_list, box_list)):
        what = f"image {index}" if many_images else "image"
        if isinstance(img, (str, os.PathLike)):
            what = os.fspath(img)
        jobs.append(
            Job(
                index=index,
                image_key=image_key(img),
                image=img,
                sentence=sentence,
                points=parse_points(pts, what),
                box=parse_box(box, what),
                what=what,
            )
        )
    return jobs, not many_images and not many_sentences


def _per_pair(value: Any, count: int, name: str) -> list[Any]:
    if value is None:
        return [None] * count
    if isinstance(value, np.ndarray) and name == "boxes" and value.shape == (count, 4):
        return list(value)
    if not isinstance(value, (list, tuple)) or len(value) != count:
        raise ValueError(
            f"with a list of {count} images, {name} must be a list of {count} entries (None or one "
            f"prompt per image), got {type(value).__name__}"
            + (f" of length {len(value)}" if isinstance(value, (list, tuple)) else "")
        )
    return list(value)


def chunk_jobs(
    jobs: list[Job], *, batch_size: int, prepare: Callable[[Job], Prepared], progress: bool
) -> Iterator[tuple[list[Job], dict[Hashable, Prepared]]]:
    """Batches of jobs with one prompt layout, and their preprocessed images (``prepare``). Each
    distinct image is prepared once per batch; the previous batch's images are reused, then released."""
    from tqdm.auto import tqdm

    ordered = sorted(jobs, key=lambda job: (job.signature, job.index))
    cache: dict[Hashable, Prepared] = {}
    bar = tqdm(total=len(jobs), desc="predict", unit="sentence", disable=not progress, leave=False)
    try:
        start = 0
        while start < len(ordered):
            stop = start + 1
            while (
                stop < len(ordered)
                and stop - start < batch_size
                and ordered[stop].signature == ordered[start].signature
            ):
                stop += 1
            chunk = ordered[start:stop]
            prepared: dict[Hashable, Prepared] = {}
            for job in chunk:
                if job.image_key not in prepared:
                    prepared[job.image_key] = cache.get(job.image_key) or prepare(job)
                meta = prepared[job.image_key].meta
                check_inside(job.points, job.box, meta.orig_w, meta.orig_h, job.what)
            cache = prepared
            yield chunk, prepared
            bar.update(len(chunk))
            start = stop
    finally:
        bar.close()
