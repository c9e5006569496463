"""The tables, runs and claims of ``refshapes_paper.py``, and how a claim is judged and a table is written.

Pure data and arithmetic on finished runs' scores: nothing here trains, loads a model or touches a file, so the
report can be rebuilt (and tested) from the stored results alone.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any

# Splits a claim averages its metric over (mIoU of val, testA and testB: less noise than one split).
CLAIM_SPLITS = ("val", "testA", "testB")
CLAIM_METRIC = "miou"
# Last-epoch training loss at or above which a run counts as still on the plateau (RefShapes, the demo's budget):
# the runs that never learnt to read ended at 0.68-0.73 (26-28 val mIoU); L-DIT with its text encoder frozen,
# which learns the attributes but not positions, at 0.63-0.67; every other at 0.37-0.58 (Mix, trained on points and
# boxes too, at 0.33-0.36).
PLATEAU_LOSS = 0.67
# The lines between which --readme writes the report into a Markdown file (kept by hand around it).
README_BEGIN = "<!-- refshapes_paper.py --readme: begin -->"
README_END = "<!-- refshapes_paper.py --readme: end -->"


@dataclasses.dataclass(frozen=True)
class Run:
    """One training recipe (trained once per seed) and the prompts its best checkpoint is scored with."""

    experiment: str
    overrides: tuple[tuple[str, Any], ...] = ()
    prompts: tuple[str, ...] = ("text",)


# Every training run of every table, once. None: the untuned tiny SAM (scored, not trained).
RUNS: dict[str, Run | None] = {
    "sam": None,
    "default": Run("refshapes/default"),
    "dec2": Run("refshapes/dec2"),
    "dec4": Run("refshapes/dec4"),
    "edit": Run("refshapes/edit"),
    "ldit": Run("refshapes/ldit"),
    "default_frozen": Run("refshapes/default_frozen"),
    "dec2_frozen": Run("refshapes/dec2_frozen"),
    "dec4_frozen": Run("refshapes/dec4_frozen"),
    "edit_frozen": Run("refshapes/edit_frozen"),
    "ldit_frozen": Run("refshapes/ldit_frozen"),
    "edit_static": Run("refshapes/edit_static"),
    "ldit_static": Run("refshapes/ldit_static"),
    "edit_textfrozen": Run("refshapes/edit", (("model.text.trainable", False),)),
    "ldit_textfrozen": Run("refshapes/ldit", (("model.text.trainable", False),)),
    "edit_bothfrozen": Run("refshapes/edit_frozen", (("model.text.trainable", False),)),
    "ldit_bothfrozen": Run("refshapes/ldit_frozen", (("model.text.trainable", False),)),
    "crossatt": Run("refshapes/crossatt"),
    "crossatt_ffn": Run("refshapes/crossatt_ffn"),
    "mix": Run("refshapes/mix", prompts=("text", "points", "box")),
}

# A table row: (label, run key, prompt scored).
Row = tuple[str, str, str]
TABLES: dict[str, tuple[str, tuple[Row, ...]]] = {
    "1": (
        "Table 1: where the text enters (* = image encoder frozen)",
        (
            ("Default (text in the decoder)", "default", "text"),
            ("+2 decoder layers", "dec2", "text"),
            ("+4 decoder layers", "dec4", "text"),
            ("E-DIT", "edit", "text"),
            ("L-DIT", "ldit", "text"),
            ("Default*", "default_frozen", "text"),
            ("+2 decoder layers*", "dec2_frozen", "text"),
            ("+4 decoder layers*", "dec4_frozen", "text"),
            ("E-DIT*", "edit_frozen", "text"),
            ("L-DIT*", "ldit_frozen", "text"),
        ),
    ),
    "2": (
        "Table 2: dynamic vs dynamic + static prompt tokens",
        (
            ("E-DIT, dynamic", "edit", "text"),
            ("E-DIT, dynamic + static", "edit_static", "text"),
            ("L-DIT, dynamic", "ldit", "text"),
            ("L-DIT, dynamic + static", "ldit_static", "text"),
        ),
    ),
    "frozen": (
        "Frozen visual / text encoders (arXiv version)",
        (
            ("E-DIT, both trained", "edit", "text"),
            ("E-DIT, visual frozen", "edit_frozen", "text"),
            ("E-DIT, text frozen", "edit_textfrozen", "text"),
            ("E-DIT, both frozen", "edit_bothfrozen", "text"),
            ("L-DIT, both trained", "ldit", "text"),
            ("L-DIT, visual frozen", "ldit_frozen", "text"),
            ("L-DIT, text frozen", "ldit_textfrozen", "text"),
            ("L-DIT, both frozen", "ldit_bothfrozen", "text"),
        ),
    ),
    "3": (
        "Table 3 (ACM MM): the text injection of L-DIT",
        (
            ("Linear projection", "ldit", "text"),
            ("CrossAtt", "crossatt", "text"),
            ("CrossAtt + FFN", "crossatt_ffn", "text"),
        ),
    ),
    "4": (
        "Table 4: prompts",
        (
            ("Tiny SAM, not trained on text, points", "sam", "points"),
            ("Tiny SAM, not trained on text, box", "sam", "box"),
            ("Decoder-only, trained on text", "default", "text"),
            ("L-DIT, trained on text", "ldit", "text"),
            ("L-DIT, trained on Mix, points", "mix", "points"),
            ("L-DIT, trained on Mix, box", "mix", "box"),
            ("L-DIT, trained on Mix, text", "mix", "text"),
        ),
    ),
}


@dataclasses.dataclass(frozen=True)
class Claim:
    """A claim of the paper: sum(plus) - sum(minus) > 0, each term a (run key, prompt) score."""

    table: str
    text: str
    plus: tuple[tuple[str, str], ...]
    minus: tuple[tuple[str, str], ...]


def _text(key: str) -> tuple[str, str]:
    return (key, "text")


CLAIMS: tuple[Claim, ...] = (
    Claim("1", "L-DIT > E-DIT", (_text("ldit"),), (_text("edit"),)),
    Claim("1", "E-DIT > decoder-only (Default)", (_text("edit"),), (_text("default"),)),
    Claim("1", "L-DIT > the deepest decoder (+4 layers)", (_text("ldit"),), (_text("dec4"),)),
    Claim("1", "more decoder layers help the decoder-only model (+4 > Default)", (_text("dec4"),), (_text("default"),)),
    Claim(
        "1",
        "L-DIT* > E-DIT* > Default* also with the encoder frozen (L-DIT* > Default*)",
        (_text("ldit_frozen"),),
        (_text("default_frozen"),),
    ),
    Claim(
        "1",
        "the L-DIT advantage over Default is larger with the encoder frozen",
        (_text("ldit_frozen"), _text("default")),
        (_text("default_frozen"), _text("ldit")),
    ),
    Claim("2", "static tokens help E-DIT", (_text("edit_static"),), (_text("edit"),)),
    Claim("2", "static tokens hurt L-DIT", (_text("ldit"),), (_text("ldit_static"),)),
    Claim(
        "frozen",
        "L-DIT: training the visual encoder helps (both > visual frozen)",
        (_text("ldit"),),
        (_text("ldit_frozen"),),
    ),
    Claim(
        "frozen",
        "L-DIT: training the text encoder helps (both > text frozen)",
        (_text("ldit"),),
        (_text("ldit_textfrozen"),),
    ),
    Claim(
        "frozen",
        "E-DIT: training the visual encoder helps (both > visual frozen)",
        (_text("edit"),),
        (_text("edit_frozen"),),
    ),
    Claim(
        "frozen",
        "E-DIT: training the text encoder helps (both > text frozen)",
        (_text("edit"),),
        (_text("edit_textfrozen"),),
    ),
    Claim("3", "linear projection beats CrossAtt", (_text("ldit"),), (_text("crossatt"),)),
    Claim("3", "linear projection beats CrossAtt + FFN", (_text("ldit"),), (_text("crossatt_ffn"),)),
    Claim("4", "L-DIT (text) > decoder-only (text)", (_text("ldit"),), (_text("default"),)),
    Claim("4", "Mix improves points over the untuned SAM", (("mix", "points"),), (("sam", "points"),)),
    Claim("4", "Mix improves boxes over the untuned SAM", (("mix", "box"),), (("sam", "box"),)),
)


def claim_score(result: dict[str, Any]) -> float:
    """The number a claim compares: mIoU averaged over :data:`CLAIM_SPLITS` of one scored run."""
    return statistics.fmean(result[split][CLAIM_METRIC] for split in CLAIM_SPLITS)


def judge(claim: Claim, scores: dict[tuple[str, str], list[float]]) -> dict[str, Any]:
    """Per seed, the claim's difference; holds if the mean is > 0; margin = mean / std of the differences.

    ``scores[(run, prompt)]``: ``{seed: value}`` (seed None: the untuned SAM's single value, serving every seed),
    or a list of one value per seed 0, 1, ... (one value: serving every seed). The differences are taken over the
    seeds every trained term has; a claim whose runs are not all measured is "not measured"."""
    terms = [*claim.plus, *claim.minus]
    if any(not scores.get(term) for term in terms):
        return {"claim": claim.text, "table": claim.table, "verdict": "not measured"}
    by_seed = {term: _by_seed(scores[term]) for term in terms}
    seeded = [set(values) for values in by_seed.values() if None not in values]
    seeds = sorted(set.intersection(*seeded)) if seeded else [None]
    if not seeds:
        return {"claim": claim.text, "table": claim.table, "verdict": "not measured"}

    def value(term: tuple[str, str], seed: int | None) -> float:
        values = by_seed[term]
        return values[seed] if seed in values else values[None]

    differences = [sum(value(t, seed) for t in claim.plus) - sum(value(t, seed) for t in claim.minus) for seed in seeds]
    mean = statistics.fmean(differences)
    spread = statistics.stdev(differences) if len(differences) > 1 else None
    margin = None if not spread else mean / spread
    return {
        "claim": claim.text,
        "table": claim.table,
        "verdict": "holds" if mean > 0 else "does not hold",
        "difference": mean,
        "std": spread,
        "margin_in_std": margin,
        "seeds": len(differences),
    }


def _stat(values: list[float], *, digits: int = 1) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _known(values: list[float | None], *, digits: int) -> str:
    """:func:`_stat` of the values known, saying how many of all they are when some are not (None)."""
    known = [value for value in values if value is not None]
    cell = _stat(known, digits=digits)
    return cell if len(known) in (0, len(values)) else f"{cell} ({len(known)} of {len(values)})"


def markdown(
    results: dict[str, list[dict[str, Any]]],
    tables: list[str],
    verdicts: list[dict[str, Any]],
    timing: dict[str, dict[str, float]] | None = None,
) -> str:
    """One Markdown table per paper table, then its claims (``results[run key]``: one result per seed).

    ``timing`` (``{run key: {prompt: ms}}``, from :func:`retime`) replaces the times stored with the runs."""
    blocks = []
    for table in tables:
        title, rows = TABLES[table]
        lines = [
            f"### {title}",
            "",
            "| row | seeds | val mIoU | testA mIoU | testB mIoU | val P@0.5 | last-epoch loss | train s | ms / sentence |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for label, key, prompt in rows:
            runs = [r for r in results.get(key, []) if prompt in r["scores"]]
            cells = [_stat([r["scores"][prompt][s]["miou"] for r in runs]) for s in CLAIM_SPLITS]
            p50 = _stat([r["scores"][prompt]["val"]["p@0.5"] for r in runs])
            loss = _known([r.get("last_epoch_loss") for r in runs], digits=2)
            train_s = _stat([r["train_seconds"] for r in runs if r["train_seconds"] is not None])
            if timing is not None and prompt in timing.get(key, {}):
                infer = f"{timing[key][prompt]:.1f}"
            else:
                infer = _stat([r["ms_per_sentence"][prompt] for r in runs])
            lines.append(f"| {label} | {len(runs)} | {' | '.join(cells)} | {p50} | {loss} | {train_s} | {infer} |")
        claims = [v for v in verdicts if v["table"] == table]
        if claims:
            lines += [
                "",
                "| the paper's claim | here | difference (mIoU, mean of 3 splits) | margin |",
                "|---|---|---|---|",
            ]
            for v in claims:
                if v["verdict"] == "not measured":
                    lines.append(f"| {v['claim']} | not measured | - | - |")
                    continue
                if v["margin_in_std"] is None:
                    margin = f"n/a ({v['seeds']} seed{'s' if v['seeds'] > 1 else ''})"
                else:
                    margin = f"{v['margin_in_std']:+.1f} std ({v['seeds']} seeds)"
                lines.append(f"| {v['claim']} | **{v['verdict']}** | {v['difference']:+.2f} | {margin} |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def collect_scores(results: dict[str, list[dict[str, Any]]]) -> dict[tuple[str, str], dict[int | None, float]]:
    """``{(run key, prompt): {seed: claim score}}`` of every finished run (``result["seed"]``; None: untrained)."""
    scores: dict[tuple[str, str], dict[int | None, float]] = {}
    for key, runs in results.items():
        for run in runs:
            for prompt, values in run["scores"].items():
                scores.setdefault((key, prompt), {})[run.get("seed")] = claim_score(values)
    return scores


def on_plateau(results: dict[str, list[dict[str, Any]]]) -> frozenset[tuple[str, int]]:
    """The (run key, seed) of every finished run whose last-epoch training loss is at least :data:`PLATEAU_LOSS`."""
    return frozenset(
        (key, run["seed"])
        for key, runs in results.items()
        for run in runs
        if run.get("seed") is not None and (run.get("last_epoch_loss") or 0.0) >= PLATEAU_LOSS
    )


def _by_seed(values: list[float] | dict[int | None, float]) -> dict[int | None, float]:
    if isinstance(values, dict):
        return values
    return {None: values[0]} if len(values) == 1 else dict(enumerate(values))


def splice(document: str, report: str) -> str:
    """``document`` with the lines between :data:`README_BEGIN` and :data:`README_END` replaced by ``report``.

    Raises ValueError naming the marker lines when the document does not hold each once, in that order."""
    begin, end = document.count(README_BEGIN), document.count(README_END)
    if begin != 1 or end != 1 or document.index(README_BEGIN) > document.index(README_END):
        raise ValueError(
            f"needs the line {README_BEGIN!r} once and, after it, the line {README_END!r} once "
            f"(found {begin} and {end})"
        )
    head, rest = document.split(README_BEGIN)
    _, tail = rest.split(README_END)
    return f"{head}{README_BEGIN}\n{report.strip()}\n{README_END}{tail}"
