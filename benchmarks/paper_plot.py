"""The picture of ``refshapes_paper.py``: every table row's score at every seed, so the seed spread is seen.

One line per (run, prompt), in the order the tables first name it, grouped under the title of that table: a dot
per seed (its colour the seed's), a bar at the mean, a thin line from the lowest seed to the highest. The x axis
is :func:`~paper_tables.claim_score` (mIoU averaged over val, testA and testB), the number every claim compares.
Drawn with PIL only, from the stored scores alone.
"""

from __future__ import annotations

import statistics

from PIL import Image, ImageDraw

from paper_tables import CLAIM_METRIC, CLAIM_SPLITS, TABLES

WIDTH, LABEL_WIDTH, MARGIN = 980, 330, 20
ROW_HEIGHT, GROUP_GAP, AXIS_HEIGHT, TITLE_HEIGHT = 18, 24, 40, 30
X_MAX, X_TICK = 100.0, 10.0  # mIoU in percent
DOT_RADIUS, MEAN_HALF_HEIGHT, MEAN_WIDTH, RING_WIDTH = 4, 7, 2, 2
# Text placement, in pixels: half a line of PIL's default font (to centre text on a row), the tick labels and the
# legend below the axis, the title's top, the row labels' indent, a table title above its first row.
TEXT_HALF_HEIGHT, TICK_LABEL_DROP, LEGEND_DROP, TITLE_TOP, LABEL_INDENT, GROUP_TITLE_RAISE = 6, 6, 22, 8, 10, 16
LEGEND_GAP = "   "
# Seed 0, 1, 2, ... (cycled); the untrained SAM (seed None) in black.
SEED_COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14))
UNSEEDED_COLOUR = (0, 0, 0)
GRID_COLOUR, AXIS_COLOUR, RANGE_COLOUR = (225, 225, 225), (60, 60, 60), (150, 150, 150)
METRIC_NAMES = {"miou": "mIoU", "oiou": "oIoU", "p@0.5": "P@0.5"}


def plotted_rows(tables: list[str]) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """``[(table title, [(label, run key, prompt), ...]), ...]``: each (run, prompt) once, under the first of
    ``tables`` that names it; a table left with no row of its own is left out."""
    seen: set[tuple[str, str]] = set()
    groups = []
    for table in tables:
        title, rows = TABLES[table]
        fresh = [row for row in rows if (row[1], row[2]) not in seen]
        seen.update((key, prompt) for _, key, prompt in fresh)
        if fresh:
            groups.append((title, fresh))
    return groups


def x_of(value: float) -> float:
    """The pixel column of a score (percent), clamped to the axis."""
    right = WIDTH - MARGIN
    return LABEL_WIDTH + (right - LABEL_WIDTH) * min(max(value, 0.0), X_MAX) / X_MAX


def draw_seeds(
    scores: dict[tuple[str, str], dict[int | None, float]],
    tables: list[str],
    *,
    plateau: frozenset[tuple[str, int]] = frozenset(),
) -> Image.Image:
    """The picture of ``scores`` (:func:`~paper_tables.collect_scores`: ``{(run, prompt): {seed: score}}``) for
    ``tables``; a row with no score yet is drawn with its label and "not run". The (run, seed) pairs of
    ``plateau`` -- runs whose training loss never left the plateau -- are drawn as rings instead of dots."""
    groups = plotted_rows(tables)
    rows = sum(len(group) for _, group in groups)
    height = TITLE_HEIGHT + GROUP_GAP * len(groups) + ROW_HEIGHT * rows + AXIS_HEIGHT
    image = Image.new("RGB", (WIDTH, height), "white")
    pen = ImageDraw.Draw(image)
    top, bottom = TITLE_HEIGHT, height - AXIS_HEIGHT
    tick = 0.0
    while tick <= X_MAX:
        pen.line([(x_of(tick), top), (x_of(tick), bottom)], fill=GRID_COLOUR)
        pen.text((x_of(tick) - TEXT_HALF_HEIGHT, bottom + TICK_LABEL_DROP), f"{tick:.0f}", fill=AXIS_COLOUR)
        tick += X_TICK
    splits = " / ".join(CLAIM_SPLITS)
    metric = METRIC_NAMES.get(CLAIM_METRIC, CLAIM_METRIC)
    pen.text((MARGIN, TITLE_TOP), f"RefShapes {metric} (mean of {splits}), one dot per training seed", fill=AXIS_COLOUR)
    seeds = sorted({seed for values in scores.values() for seed in values if seed is not None})
    x = LABEL_WIDTH
    for seed in seeds:
        pen.text((x, bottom + LEGEND_DROP), f"seed {seed}", fill=_colour(seed))
        x += pen.textlength(f"seed {seed}{LEGEND_GAP}")
    legend = f"| = mean over seeds{LEGEND_GAP}o = last-epoch training loss on the plateau"
    pen.text((x, bottom + LEGEND_DROP), legend, fill=AXIS_COLOUR)
    y = top
    for title, group in groups:
        y += GROUP_GAP
        pen.text((MARGIN, y - GROUP_TITLE_RAISE), title, fill=AXIS_COLOUR)
        for label, key, prompt in group:
            middle = y + ROW_HEIGHT / 2
            values = scores.get((key, prompt), {})
            pen.text((MARGIN + LABEL_INDENT, middle - TEXT_HALF_HEIGHT), label, fill=AXIS_COLOUR)
            if not values:
                pen.text((x_of(0) + TEXT_HALF_HEIGHT, middle - TEXT_HALF_HEIGHT), "not run", fill=RANGE_COLOUR)
            else:
                _draw_row(pen, values, middle, rings={seed for run, seed in plateau if run == key})
            y += ROW_HEIGHT
    return image


def _draw_row(pen: ImageDraw.ImageDraw, values: dict[int | None, float], middle: float, *, rings: set[int]) -> None:
    low, high = x_of(min(values.values())), x_of(max(values.values()))
    pen.line([(low, middle), (high, middle)], fill=RANGE_COLOUR, width=1)
    mean = x_of(statistics.fmean(values.values()))
    pen.line([(mean, middle - MEAN_HALF_HEIGHT), (mean, middle + MEAN_HALF_HEIGHT)], fill=AXIS_COLOUR, width=MEAN_WIDTH)
    for seed, value in sorted(values.items(), key=lambda item: -1 if item[0] is None else item[0]):
        x = x_of(value)
        box = [x - DOT_RADIUS, middle - DOT_RADIUS, x + DOT_RADIUS, middle + DOT_RADIUS]
        if seed in rings:
            pen.ellipse(box, outline=_colour(seed), width=RING_WIDTH)
        else:
            pen.ellipse(box, fill=_colour(seed))


def _colour(seed: int | None) -> tuple[int, int, int]:
    return UNSEEDED_COLOUR if seed is None else SEED_COLOURS[seed % len(SEED_COLOURS)]
