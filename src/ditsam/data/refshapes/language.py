"""RefShapes expressions: small programs over a scene (attribute filter, extreme / ordinal position,
relation to an anchor) evaluated in three-valued logic (TRUE, FALSE, UNSURE: closer than a margin),
kept only when true for exactly one object and clearly false for all others; and their phrasing.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterator, Mapping, Sequence

import numpy as np

from ditsam.data.refshapes.scene import SceneObject
from ditsam.data.refshapes.vocabulary import (
    _ATTRIBUTE_TEMPLATES,
    _GENERIC_NOUNS,
    _MIDDLE_TEMPLATES,
    _ORDINAL_TEMPLATES,
    _ORDINAL_WORDS,
    _PAIR_TEMPLATES,
    _POSITION_TEMPLATES,
    _RELATION_TEMPLATES,
    _SIDE_WORDS,
    _SIZE_WORDS,
    ATTRIBUTE,
    MIDDLE,
    ORDINAL,
    POSITION,
    RELATION,
)

TRUE, FALSE, UNSURE = 1, 0, -1


@dataclasses.dataclass(frozen=True)
class NounPhrase:
    """An attribute filter; ``None`` fields are unconstrained."""

    size: str | None = None
    colour: str | None = None
    shape: str | None = None

    def matches(self, obj: SceneObject) -> bool:
        return (
            (self.size is None or obj.size == self.size)
            and (self.colour is None or obj.colour == self.colour)
            and (self.shape is None or obj.shape == self.shape)
        )

    @property
    def specificity(self) -> int:
        return sum(v is not None for v in (self.size, self.colour, self.shape))


@dataclasses.dataclass(frozen=True)
class Expression:
    """One referring program. Which fields matter depends on ``kind``:

    attribute: phrase. position: phrase, side, count (objects fitting the phrase). ordinal: phrase,
    side, rank (0-based, counted from side).
    middle: phrase, side ("left": along x, "top": along y). relation: phrase, relation, anchor
    (object index), anchor_phrase (the phrase naming the anchor alone).
    """

    kind: str
    phrase: NounPhrase
    side: str = ""
    rank: int = 0
    count: int = 0
    relation: str = ""
    anchor: int = -1
    anchor_phrase: NounPhrase | None = None


class _Geometry:
    """Positions of a scene's objects and the perceptual margin (pixels) comparisons must clear."""

    def __init__(self, objects: Sequence[SceneObject], *, height: int, width: int) -> None:
        self.objects = objects
        self.cx = [o.cx for o in objects]
        self.cy = [o.cy for o in objects]
        # Centres closer than this along an axis are not reliably "left of" one another to the eye.
        self.margin = max(6.0, 0.08 * min(height, width))
        # Per side, a key that grows away from that side.
        self._keys = {
            "left": self.cx,
            "right": [-v for v in self.cx],
            "top": self.cy,
            "bottom": [-v for v in self.cy],
        }

    def key(self, index: int, side: str) -> float:
        """Smaller = closer to ``side``."""
        return self._keys[side][index]

    def rank_truth(self, members: Sequence[int], target: int, side: str, rank: int) -> int:
        """Is ``target`` the ``rank``-th of ``members`` counted from ``side``? Three-valued."""
        keys = self._keys[side]
        k = keys[target]
        before = sum(1 for o in members if k - keys[o] >= self.margin)
        after = sum(1 for o in members if keys[o] - k >= self.margin)
        low, high = before, len(members) - 1 - after
        if low == high == rank:
            return TRUE
        return FALSE if not low <= rank <= high else UNSURE

    def relation_truth(self, target: int, anchor: int, relation: str, members: Sequence[int]) -> int:
        dx = self.cx[target] - self.cx[anchor]
        dy = self.cy[target] - self.cy[anchor]
        if relation == "closest":
            d = math.hypot(dx, dy)
            others = [
                math.hypot(self.cx[o] - self.cx[anchor], self.cy[o] - self.cy[anchor]) for o in members if o != target
            ]
            if all(o >= 1.4 * d for o in others):
                return TRUE
            return FALSE if any(d >= 1.4 * o for o in others) else UNSURE
        along, across = {"left": (-dx, dy), "right": (dx, dy), "above": (-dy, dx), "below": (dy, dx)}[relation]
        if along >= max(self.margin, 0.5 * abs(across)):
            return TRUE
        return FALSE if along <= 0 else UNSURE


def evaluate(expression: Expression, geometry: _Geometry) -> list[int] | None:
    """Truth value (TRUE / FALSE / UNSURE) of ``expression`` for every object; None if it is
    ill-formed in this scene (e.g. an ordinal beyond the number of matching objects)."""
    objects = geometry.objects
    members = [i for i, o in enumerate(objects) if expression.phrase.matches(o)]
    truths = [FALSE] * len(objects)
    kind = expression.kind
    if kind == ATTRIBUTE:
        for i in members:
            truths[i] = TRUE
        return truths
    if kind in (POSITION, ORDINAL):
        if len(members) < 2 or expression.rank >= len(members) or len(members) != expression.count:
            return None
        for i in members:
            truths[i] = geometry.rank_truth(members, i, expression.side, expression.rank)
        return truths
    if kind == MIDDLE:
        if len(members) != 3:
            return None
        xs, ys = [geometry.cx[i] for i in members], [geometry.cy[i] for i in members]
        spread_x, spread_y = max(xs) - min(xs), max(ys) - min(ys)
        # "middle" names an axis only when the three lie roughly along it.
        along, across = (spread_x, spread_y) if expression.side == "left" else (spread_y, spread_x)
        if along < 2 * across:
            return None
        for i in members:
            truths[i] = geometry.rank_truth(members, i, expression.side, 1)
        return truths
    if kind == RELATION:
        assert expression.anchor_phrase is not None
        anchors = [i for i, o in enumerate(objects) if expression.anchor_phrase.matches(o)]
        if anchors != [expression.anchor]:
            return None
        members = [i for i in members if i != expression.anchor]
        if len(members) < 2:
            return None
        for i in members:
            truths[i] = geometry.relation_truth(i, expression.anchor, expression.relation, members)
        return truths
    raise ValueError(f"unknown expression kind {kind!r}")


def referent(truths: Sequence[int] | None) -> int | None:
    """Index of the only object the expression is true for, if every other one is clearly false."""
    if truths is None:
        return None
    hits = [i for i, t in enumerate(truths) if t == TRUE]
    if len(hits) != 1 or any(t == UNSURE for t in truths):
        return None
    return hits[0]


def _noun_phrases(obj: SceneObject) -> list[NounPhrase]:
    return [
        NounPhrase(size=s, colour=c, shape=h)
        for s in (None, obj.size)
        for c in (None, obj.colour)
        for h in (None, obj.shape)
    ]


def _candidate_expressions(objects: Sequence[SceneObject]) -> Iterator[Expression]:
    """Every expression worth evaluating in the scene (spatial ones only where the noun phrase
    alone is ambiguous, so that the spatial words are needed)."""
    phrases = list(dict.fromkeys(p for o in objects for p in _noun_phrases(o)))
    counts = {p: sum(p.matches(o) for o in objects) for p in phrases}
    for phrase in phrases:
        n = counts[phrase]
        if phrase.specificity and n == 1:
            yield Expression(kind=ATTRIBUTE, phrase=phrase)
        if n < 2:
            continue
        for side in _SIDE_WORDS:
            yield Expression(kind=POSITION, phrase=phrase, side=side, count=n)
            for rank in range(1, min(n, len(_ORDINAL_WORDS))):
                yield Expression(kind=ORDINAL, phrase=phrase, side=side, rank=rank, count=n)
        if n == 3:
            for side in ("left", "top"):
                yield Expression(kind=MIDDLE, phrase=phrase, side=side)
    # Anchors: named by their shortest unique phrase that includes the shape.
    for anchor, obj in enumerate(objects):
        unique = [p for p in _noun_phrases(obj) if p.shape is not None and counts[p] == 1]
        if not unique:
            continue
        anchor_phrase = min(unique, key=lambda p: (p.specificity, p.size is not None))
        for phrase in phrases:
            if counts[phrase] - int(phrase.matches(obj)) < 2:
                continue
            for relation in _RELATION_TEMPLATES:
                yield Expression(
                    kind=RELATION, phrase=phrase, relation=relation, anchor=anchor, anchor_phrase=anchor_phrase
                )


def find_expressions(objects: Sequence[SceneObject], *, height: int, width: int) -> dict[int, list[Expression]]:
    """Object index -> every candidate expression that provably refers to it alone."""
    geometry = _Geometry(objects, height=height, width=width)
    found: dict[int, list[Expression]] = {}
    for expression in _candidate_expressions(objects):
        index = referent(evaluate(expression, geometry))
        if index is not None:
            found.setdefault(index, []).append(expression)
    return found


def _choice(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def render_phrase(
    phrase: NounPhrase,
    rng: np.random.Generator,
    *,
    shape_words: Mapping[str, str] | None = None,
    generic_nouns: Sequence[str] = _GENERIC_NOUNS,
    pronoun: str = "one",
) -> str:
    """Words of a noun phrase, e.g. "small red triangle", "big one", "object". ``shape_words`` (shape ->
    word), ``generic_nouns`` and ``pronoun`` replace the singular nouns (plurals: "red triangles", "big ones")."""
    words = []
    if phrase.size is not None:
        words.append(_choice(rng, _SIZE_WORDS[phrase.size]))
    if phrase.colour is not None:
        words.append(phrase.colour)
    if phrase.shape is not None:
        words.append(phrase.shape if shape_words is None else shape_words[phrase.shape])
    else:
        words.append(_choice(rng, tuple(generic_nouns) + ((pronoun,) if words else ())))
    return " ".join(words)


def render_expression(expression: Expression, rng: np.random.Generator) -> str:
    """One phrasing of ``expression`` (lower case, words separated by single spaces)."""
    np_text = render_phrase(expression.phrase, rng)
    kind = expression.kind
    if kind == ATTRIBUTE:
        template = _choice(rng, _ATTRIBUTE_TEMPLATES)
    elif kind == POSITION:
        pair = _PAIR_TEMPLATES[expression.side] if expression.count == 2 else ()
        template = _choice(rng, _POSITION_TEMPLATES[expression.side] + pair)
    elif kind == ORDINAL:
        template = _choice(rng, _ORDINAL_TEMPLATES).replace("{ord}", _ORDINAL_WORDS[expression.rank])
        template = template.replace("{side}", _SIDE_WORDS[expression.side])
    elif kind == MIDDLE:
        template = _choice(rng, _MIDDLE_TEMPLATES)
    else:
        assert expression.anchor_phrase is not None
        template = _choice(rng, _RELATION_TEMPLATES[expression.relation])
        template = template.replace("{anchor}", render_phrase(expression.anchor_phrase, rng))
    return template.replace("{np}", np_text)


def _pick_sentences(
    expressions: Sequence[Expression], *, kinds: Sequence[str], limit: int, rng: np.random.Generator
) -> list[tuple[str, str]]:
    """Up to ``limit`` distinct (sentence, kind) pairs, cycling over kinds so that one object's
    sentences differ in kind where possible."""
    by_kind = {k: [e for e in expressions if e.kind == k] for k in kinds}
    available = [k for k in kinds if by_kind[k]]
    if not available:
        return []
    order = [available[i] for i in rng.permutation(len(available))]
    chosen: list[tuple[str, str]] = []
    seen: set[str] = set()
    for attempt in range(limit * 6):
        if len(chosen) == limit:
            break
        kind = order[attempt % len(order)]
        options = by_kind[kind]
        sentence = render_expression(options[int(rng.integers(len(options)))], rng)
        if sentence not in seen:
            seen.add(sentence)
            chosen.append((sentence, kind))
    return chosen
