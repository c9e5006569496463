"""Point and box prompts collected from clicks on the web demo's input image (:mod:`ditsam.serve`),
and the markers drawn for them on the answer."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

CLICK_OFF = "off"
CLICK_FOREGROUND = "foreground point"
CLICK_BACKGROUND = "background point"
CLICK_BOX = "box (two corners)"
CLICK_MODES = (CLICK_OFF, CLICK_FOREGROUND, CLICK_BACKGROUND, CLICK_BOX)

#: Markers drawn on the overlay: foreground / background points, the box and a pending corner.
_FOREGROUND_COLOUR = (40, 220, 60)
_BACKGROUND_COLOUR = (40, 120, 255)
_BOX_COLOUR = (255, 210, 0)


@dataclasses.dataclass
class Clicks:
    """Point and box prompts collected from clicks on the input image, in original image pixels.

    ``points``: ``[x, y, label]`` rows, label 1 = foreground, 0 = background; ``box``: ``[x1, y1,
    x2, y2]`` once both corners are clicked; ``corner``: the first corner of a box in progress.
    """

    points: list[list[float]] = dataclasses.field(default_factory=list)
    box: list[float] | None = None
    corner: list[float] | None = None

    def add(self, *, mode: str, x: float, y: float) -> "Clicks":
        """A copy with the click at ``(x, y)`` applied in ``mode`` (one of :data:`CLICK_MODES`)."""
        if mode not in CLICK_MODES:
            raise ValueError(f"unknown click mode {mode!r}; modes are {', '.join(CLICK_MODES)}")
        out = Clicks(points=[list(p) for p in self.points], box=self.box, corner=self.corner)
        if mode == CLICK_FOREGROUND:
            out.points.append([float(x), float(y), 1.0])
        elif mode == CLICK_BACKGROUND:
            out.points.append([float(x), float(y), 0.0])
        elif mode == CLICK_BOX:
            if out.corner is None:
                out.corner = [float(x), float(y)]
            else:
                (x0, y0), out.corner = out.corner, None
                out.box = [min(x0, x), min(y0, y), max(x0, x), max(y0, y)]
        return out

    @property
    def empty(self) -> bool:
        """No point, box or pending corner."""
        return not self.points and self.box is None and self.corner is None

    def predict_kwargs(self) -> dict[str, Any]:
        """``points=`` / ``boxes=`` for :meth:`Segmenter.predict` (a pending corner is not used)."""
        kwargs: dict[str, Any] = {}
        if self.points:
            rows = np.asarray(self.points, dtype=np.float64)
            kwargs["points"] = (rows[:, :2], rows[:, 2].astype(np.int64))
        if self.box is not None:
            kwargs["boxes"] = np.asarray(self.box, dtype=np.float64)
        return kwargs

    def describe(self) -> str:
        """One line for the page: the prompts the next prediction uses (x, y in image pixels)."""
        if self.empty:
            return "Clicks: none (text only)."

        def where(rows: list[list[float]]) -> str:
            return ", ".join(f"({round(p[0])}, {round(p[1])})" for p in rows)

        parts = []
        foreground = [p for p in self.points if p[2] == 1]
        background = [p for p in self.points if p[2] != 1]
        if foreground:
            parts.append(f"foreground {where(foreground)}")
        if background:
            parts.append(f"background {where(background)}")
        if self.box is not None:
            x1, y1, x2, y2 = (round(v) for v in self.box)
            parts.append(f"box ({x1}, {y1}) to ({x2}, {y2})")
        if self.corner is not None:
            parts.append(f"box corner ({round(self.corner[0])}, {round(self.corner[1])}), click the opposite corner")
        return "Clicks: " + "; ".join(parts) + "."


def as_clicks(value: Any) -> Clicks:
    """The clicks of Gradio's state: a :class:`Clicks`, its fields as a mapping, or none."""
    if isinstance(value, Clicks):
        return value
    if isinstance(value, Mapping):
        return Clicks(
            points=[list(p) for p in value.get("points", [])], box=value.get("box"), corner=value.get("corner")
        )
    return Clicks()


def draw_clicks(image: "Image.Image", clicks: Clicks, scale: float) -> None:
    """Point markers and the box (scaled like the displayed image), drawn in place."""
    from PIL import ImageDraw

    if clicks.empty:
        return
    draw = ImageDraw.Draw(image)
    radius = max(3, round(min(image.size) / 60))
    if clicks.box is not None:
        x1, y1, x2, y2 = (v * scale for v in clicks.box)
        draw.rectangle((x1, y1, x2, y2), outline=_BOX_COLOUR, width=max(1, radius // 2))
    markers = [(p[0], p[1], _FOREGROUND_COLOUR if p[2] == 1 else _BACKGROUND_COLOUR) for p in clicks.points]
    if clicks.corner is not None:
        markers.append((clicks.corner[0], clicks.corner[1], _BOX_COLOUR))
    for x, y, colour in markers:
        cx, cy = x * scale, y * scale
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour, outline=(255, 255, 255))
