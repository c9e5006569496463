"""Prompt simulation for mixed training (Table 4 "Mix"): points and boxes drawn from the target masks."""

from __future__ import annotations

from typing import Any

import torch


def prompts_from_masks(masks: torch.Tensor, kind: str, generator: torch.Generator | None = None) -> dict[str, Any]:
    """Point or box prompts derived from (B,1,S,S) target masks on the canvas (Table 4 "Mix").

    "point": one positive point at a random foreground pixel centre; "box": the mask's extent
    (x1, y1, x2, y2). Returns keyword arguments for :class:`DITSam`'s forward.
    """
    foreground = masks[:, 0] > 0.5
    batch = foreground.shape[0]
    if kind == "point":
        coords = torch.zeros(batch, 1, 2, device=masks.device)
        for row in range(batch):
            ys, xs = torch.nonzero(foreground[row], as_tuple=True)
            pick = int(torch.randint(len(ys), (1,), generator=generator))
            coords[row, 0] = torch.stack([xs[pick], ys[pick]]).float() + 0.5
        return {"points": (coords, torch.ones(batch, 1, device=masks.device))}
    boxes = torch.zeros(batch, 4, device=masks.device)
    for row in range(batch):
        ys, xs = torch.nonzero(foreground[row], as_tuple=True)
        boxes[row] = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
    return {"boxes": boxes}
