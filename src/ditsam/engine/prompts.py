"""Point and box prompts drawn from target masks: SAM's promptable training and Table 4's scoring.

Training (``train.prompt_mix`` / ``train.prompt_sampling``): a micro-batch prompted by points gets, per
sample, 1..``max_points`` positive clicks on the target and 0..``max_negatives`` clicks on the background,
padded with SAM's "not a point" label to one length; a box prompt is the target's extent, each side
moved by Gaussian noise of ``box_noise`` x the box's side (SAM trains with such jitter so a user's loose
box still works). Scoring (``ditsam eval --prompt``, Table 4 of the paper): the ground-truth box, or
:data:`EVAL_POINTS` positive points drawn at random on the ground-truth mask -- drawn per sample from a
generator seeded by the sample's index, so the score does not depend on the batch size or the number of
processes.

Coordinates are continuous canvas coordinates (x, y), as :class:`ditsam.api.Segmenter` takes them: pixel
column ``i`` spans ``[i, i + 1)``, so a click on a pixel is its centre and a box's right edge is one past its
last column.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch

from ditsam.model.sam.prompt_encoder import PADDING_LABEL

if TYPE_CHECKING:
    from ditsam.engine.config import TrainConfig

# Offset of a pixel's centre from its top-left corner in continuous coordinates.
PIXEL_CENTRE = 0.5
POSITIVE_LABEL = 1.0
NEGATIVE_LABEL = 0.0
# Table 4 of the paper scores point prompts with five clicks on the ground-truth mask.
EVAL_POINTS = 5
# Seed of the evaluation prompts' generators (offset by the sample's index).
EVAL_PROMPT_SEED = 20240
# What ``ditsam eval --prompt`` and ``train.eval_prompt`` accept.
EVAL_PROMPTS: tuple[str, ...] = ("text", "points", "box")


def _random_pixels(region: torch.Tensor, count: int, generator: torch.Generator | None) -> torch.Tensor:
    """The centres (x, y) of ``count`` pixels drawn with replacement from the True pixels of an (S, S) ``region``."""
    ys, xs = torch.nonzero(region, as_tuple=True)
    picks = torch.randint(len(ys), (count,), generator=generator)
    return torch.stack([xs[picks], ys[picks]], dim=1).float() + PIXEL_CENTRE


def point_prompts(
    masks: torch.Tensor,
    *,
    positives: Sequence[int],
    negatives: Sequence[int],
    generators: Sequence[torch.Generator | None],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clicks on (B, 1, S, S) targets: ``positives[b]`` on the mask, ``negatives[b]`` off it.

    Returns (B, N, 2) pixel coordinates and (B, N) labels (1 positive, 0 negative, padding
    :data:`PADDING_LABEL` where a sample has fewer than N = max(positives + negatives) clicks).
    A sample whose mask covers the whole canvas gets no negative click.
    """
    foreground = masks[:, 0] > 0.5
    batch = foreground.shape[0]
    length = max(p + n for p, n in zip(positives, negatives))
    coords = torch.zeros(batch, length, 2)
    labels = torch.full((batch, length), float(PADDING_LABEL))
    for row in range(batch):
        region = foreground[row].cpu()
        clicks = [_random_pixels(region, positives[row], generators[row])]
        kinds = [torch.full((positives[row],), POSITIVE_LABEL)]
        if negatives[row] and not bool(region.all()):
            clicks.append(_random_pixels(~region, negatives[row], generators[row]))
            kinds.append(torch.full((negatives[row],), NEGATIVE_LABEL))
        row_coords, row_labels = torch.cat(clicks), torch.cat(kinds)
        coords[row, : len(row_labels)] = row_coords
        labels[row, : len(row_labels)] = row_labels
    return coords.to(masks.device), labels.to(masks.device)


def box_prompts(masks: torch.Tensor, *, noise: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, 4) boxes (x0, y0, x1, y1) around (B, 1, S, S) targets, x1 / y1 one past the last pixel.

    ``noise`` > 0 moves each side by N(0, noise x that side's length) pixels, clamped to the canvas
    and keeping at least one pixel of width and height.
    """
    foreground = masks[:, 0] > 0.5
    batch, size = foreground.shape[0], foreground.shape[-1]
    boxes = torch.zeros(batch, 4)
    for row in range(batch):
        ys, xs = torch.nonzero(foreground[row].cpu(), as_tuple=True)
        boxes[row] = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
    if noise > 0:
        sides = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
        boxes = boxes + noise * sides * torch.randn(boxes.shape, generator=generator)
        boxes = boxes.clamp(0, size)
        boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1).clamp(max=size)
        boxes[:, :2] = torch.minimum(boxes[:, :2], boxes[:, 2:] - 1)
    return boxes.to(masks.device)


def training_prompts(
    masks: torch.Tensor,
    kind: str,
    *,
    max_points: int = 1,
    max_negatives: int = 0,
    box_noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """Keyword arguments of :class:`~ditsam.model.dit.DITSam`'s forward for a ``"point"`` or ``"box"``
    training micro-batch (see the module docstring)."""
    batch = masks.shape[0]
    if kind == "box":
        return {"boxes": box_prompts(masks, noise=box_noise, generator=generator)}
    positives = torch.randint(1, max_points + 1, (batch,), generator=generator).tolist()
    negatives = torch.randint(0, max_negatives + 1, (batch,), generator=generator).tolist()
    points = point_prompts(masks, positives=positives, negatives=negatives, generators=[generator] * batch)
    return {"points": points}


def mixed_prompts(text: Any, masks: torch.Tensor, train: TrainConfig) -> dict[str, Any]:
    """A training micro-batch's prompts: ``{"text": text}``, or for a Mix experiment (``train.prompt_mix``:
    the chances of text, point and box) sometimes a point or a box drawn from ``masks`` (B, H, W) as
    ``train.prompt_sampling`` says; text when any mask is empty (a point or box needs an object)."""
    mix = train.prompt_mix
    if mix[1] == 0 and mix[2] == 0:
        return {"text": text}
    kind = ("text", "point", "box")[int(torch.multinomial(torch.tensor(mix, dtype=torch.float), 1))]
    if kind == "text" or not bool((masks.flatten(1) > 0.5).any(1).all()):
        return {"text": text}
    sampling = train.prompt_sampling
    return training_prompts(
        masks,
        kind,
        max_points=sampling.max_points,
        max_negatives=sampling.max_negatives,
        box_noise=sampling.box_noise,
    )


def evaluation_prompts(masks: torch.Tensor, kind: str, indices: Sequence[int]) -> dict[str, Any]:
    """Table 4's prompts for (B, 1, S, S) targets of the samples ``indices`` of a split: ``"box"`` (the
    ground-truth box) or ``"points"`` (:data:`EVAL_POINTS` positive clicks on the mask)."""
    if kind == "box":
        return {"boxes": box_prompts(masks)}
    if kind != "points":
        raise ValueError(f"unknown evaluation prompt {kind!r}: use one of {', '.join(EVAL_PROMPTS)}")
    generators = [torch.Generator().manual_seed(EVAL_PROMPT_SEED + index) for index in indices]
    batch = masks.shape[0]
    points = point_prompts(masks, positives=[EVAL_POINTS] * batch, negatives=[0] * batch, generators=generators)
    return {"points": points}
