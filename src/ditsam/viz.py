"""Pictures people would rather look at than read: mask overlays with the sentence."""

from __future__ import annotations

import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PRED_COLOUR = (255, 64, 64)
GT_COLOUR = (64, 255, 64)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Boolean (H, W) boundary pixels of a mask."""
    padded = np.pad(mask, 1, mode="edge")
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def overlay(
    image: Image.Image, pred: np.ndarray | None, gt: np.ndarray | None = None, *, alpha: float = 0.45
) -> Image.Image:
    """The image with the prediction filled in red and the ground truth outlined in green."""
    canvas = np.asarray(image.convert("RGB"), dtype=np.float32).copy()
    if pred is not None:
        canvas[pred] = (1 - alpha) * canvas[pred] + alpha * np.asarray(PRED_COLOUR, np.float32)
    if gt is not None:
        edge = _outline(gt)
        edge = edge | np.roll(edge, 1, 0) | np.roll(edge, 1, 1)
        canvas[edge] = GT_COLOUR
    return Image.fromarray(canvas.clip(0, 255).astype(np.uint8))


def captioned(image: Image.Image, caption: str) -> Image.Image:
    """The image with ``caption`` written on a white band below it, wrapped to the image width."""
    font = ImageFont.load_default()
    # PIL's default bitmap font is about 6 px per character.
    lines = textwrap.wrap(caption, width=max(8, (image.width - 8) // 6)) or [""]
    band = 14 * len(lines) + 6
    out = Image.new("RGB", (image.width, image.height + band), "white")
    out.paste(image, (0, 0))
    draw = ImageDraw.Draw(out)
    for index, line in enumerate(lines):
        draw.text((4, image.height + 3 + 14 * index), line, fill="black", font=font)
    return out


def side_by_side(images: list[Image.Image], *, gap: int = 4) -> Image.Image:
    """Images in one row, top-aligned."""
    height = max(i.height for i in images)
    out = Image.new("RGB", (sum(i.width for i in images) + gap * (len(images) - 1), height), "white")
    x = 0
    for image in images:
        out.paste(image, (x, 0))
        x += image.width + gap
    return out


def stacked(rows: list[Image.Image], *, gap: int = 4) -> Image.Image:
    """Images one above the other, left-aligned (e.g. rows made by :func:`side_by_side`)."""
    out = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows) + gap * (len(rows) - 1)), "white")
    y = 0
    for row in rows:
        out.paste(row, (0, y))
        y += row.height + gap
    return out


def fit_within(image: Image.Image, max_side: int) -> Image.Image:
    """``image`` shrunk (bilinear) so that its longer side is at most ``max_side``; never enlarged."""
    scale = max_side / max(image.size)
    if scale >= 1:
        return image
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)


def prediction_card(
    image: Image.Image, sentence: str, pred: np.ndarray, gt: np.ndarray | None, iou: float | None = None
) -> Image.Image:
    """Prediction (red) and ground truth (green outline) on the image, captioned with the sentence."""
    caption = f'"{sentence}"' + (f"  IoU {100 * iou:.1f}" if iou is not None else "")
    return captioned(overlay(image, pred, gt), caption)
