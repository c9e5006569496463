"""gRefShapes: RefShapes with generalized expressions -- sentences naming several objects, or none.

Scenes, rendering and single-object expressions are RefShapes' own (:mod:`ditsam.data.refshapes`).
Added here, each a program checked by the same three-valued evaluation (a comparison closer than the
perceptual margin is "unsure", and an unsure program is dropped):

- several targets: every object fitting an attribute phrase ("all the red shapes", "both circles",
  "the three stars"); the k objects of a phrase nearest a side, with a clear gap to the next one
  ("the two circles on the left"); every object in a relation to a unique anchor ("the squares
  above the blue heart");
- no target, with near-misses present: an attribute phrase no object fits although each of its
  words alone fits one ("the blue star" with a blue circle and a red star in the scene); a relation
  no object of the phrase satisfies ("the circle left of the green cross" with every circle clearly
  to its right).

Splits keep RefShapes' meaning: testA holds attribute sentences only (single, several, none),
testB spatial ones only. Output (``generate_grefshapes(out)``) is the gRefCOCO layout, read by
``GRefCocoDataset(root=out, dataset="grefshapes", split=..., image_dir=out / "images")``::

    <out>/grefshapes/grefs(unc).json   ref records; ann_id lists the targets, [-1] = no target
    <out>/grefshapes/instances.json    COCO images / annotations / categories
    <out>/grefshapes/scenes.json       per-object attributes, per-sentence kind (e.g. "group", "attribute:none")
    <out>/images/grefshapes_<id>.png
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from ditsam.data.refshapes.language import (
    FALSE,
    TRUE,
    UNSURE,
    Expression,
    NounPhrase,
    _choice,
    _Geometry,
    _noun_phrases,
    render_expression,
    render_phrase,
)
from ditsam.data.refshapes.scene import SceneObject
from ditsam.data.refshapes.vocabulary import (
    ATTRIBUTE,
    PRESETS,
    REFSHAPES_WORDS,
    RELATION,
    SHAPES,
    SPLIT_BY,
    RefShapesPreset,
)
from ditsam.data.refshapes.writer import (
    Scene,
    _ImageJob,
    _ImageRecord,
    dataset_files,
    image_record,
    render_scene,
    sample_scene_objects,
    scene_rng,
    sentence_limit,
    single_target_refs,
    write_generated,
)

log = logging.getLogger(__name__)

DATASET_NAME = "grefshapes"
# Bumped whenever the same seed and preset would write other files: data folders of another version are refused.
GENERATOR_VERSION = 2
REFS_FILE = f"grefs({SPLIT_BY}).json"
# Kinds of the generalized programs (sentence_kinds in scenes.json); a no-target sentence's kind
# gets the suffix NO_TARGET_SUFFIX, e.g. "attribute:none".
GROUP = "group"
NO_TARGET_SUFFIX = ":none"
_ATTRIBUTE_SPLITS = ("train", "val", "testA")
_SPATIAL_SPLITS = ("train", "val", "testB")
# Per scene, at most this many several-target refs (and one no-target ref).
MULTI_REFS_PER_SCENE = 2

_PLURALS: dict[str, str] = {shape: shape + ("es" if shape.endswith("ss") else "s") for shape in SHAPES}
_GENERIC_PLURALS = ("shapes", "objects")
_COUNT_WORDS: dict[int, str] = {2: "two", 3: "three", 4: "four"}
_ALL_TEMPLATES = ("all the {pl}", "the {pl}", "all {pl}", "every {np}")
_GROUP_TEMPLATES: dict[str, tuple[str, ...]] = {
    "left": ("the {count} {pl} on the left", "the {count} leftmost {pl}"),
    "right": ("the {count} {pl} on the right", "the {count} rightmost {pl}"),
    "top": ("the {count} {pl} at the top", "the {count} topmost {pl}", "the {count} highest {pl}"),
    "bottom": ("the {count} {pl} at the bottom", "the {count} bottommost {pl}", "the {count} lowest {pl}"),
}
_PLURAL_RELATION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "left": ("the {pl} left of the {anchor}", "all {pl} to the left of the {anchor}"),
    "right": ("the {pl} right of the {anchor}", "all {pl} to the right of the {anchor}"),
    "above": ("the {pl} above the {anchor}", "all {pl} above the {anchor}"),
    "below": ("the {pl} below the {anchor}", "all {pl} under the {anchor}"),
}


def _vocabulary() -> tuple[str, ...]:
    words = set(REFSHAPES_WORDS) | set(_PLURALS.values()) | set(_GENERIC_PLURALS) | set(_COUNT_WORDS.values())
    words.update(("all", "every", "both", "ones"))
    for table in (_GROUP_TEMPLATES, _PLURAL_RELATION_TEMPLATES):
        words.update(w for ts in table.values() for t in ts for w in t.split() if not w.startswith("{"))
    return tuple(sorted(words))


# Every word a gRefShapes sentence can contain (the tiny text encoder's vocabulary).
GREFSHAPES_WORDS: tuple[str, ...] = _vocabulary()


@dataclasses.dataclass(frozen=True)
class GroupExpression:
    """A program naming a set of objects (``targets``, possibly empty).

    kind "attribute": every object fitting ``phrase``; "group": the ``count`` objects of ``phrase``
    nearest ``side``; "relation": every object of ``phrase`` in ``relation`` to ``anchor`` (named by
    ``anchor_phrase``). No-target programs are worded in the singular, as RefShapes words them.
    """

    kind: str
    phrase: NounPhrase
    targets: tuple[int, ...]
    side: str = ""
    count: int = 0
    relation: str = ""
    anchor: int = -1
    anchor_phrase: NounPhrase | None = None

    @property
    def label(self) -> str:
        """The kind as scenes.json records it."""
        return self.kind + ("" if self.targets else NO_TARGET_SUFFIX)


def render_plural(phrase: NounPhrase, rng: np.random.Generator) -> str:
    """Plural words of a noun phrase, e.g. "small red triangles", "big ones", "shapes"."""
    return render_phrase(phrase, rng, shape_words=_PLURALS, generic_nouns=_GENERIC_PLURALS, pronoun="ones")


def render_group_expression(expression: GroupExpression, rng: np.random.Generator) -> str:
    """One phrasing of ``expression`` (lower case, single spaces)."""
    if not expression.targets:  # no target: RefShapes' singular wording of the same program
        single = Expression(
            kind=expression.kind,
            phrase=expression.phrase,
            relation=expression.relation,
            anchor=expression.anchor,
            anchor_phrase=expression.anchor_phrase,
        )
        return render_expression(single, rng)
    plural = render_plural(expression.phrase, rng)
    if expression.kind == ATTRIBUTE:
        count = len(expression.targets)
        templates = _ALL_TEMPLATES + ((f"the {_COUNT_WORDS[count]} {{pl}}",) if count in _COUNT_WORDS else ())
        templates += ("both {pl}",) if count == 2 else ()
        template = _choice(rng, templates)
        return template.replace("{pl}", plural).replace("{np}", render_phrase(expression.phrase, rng))
    if expression.kind == GROUP:
        template = _choice(rng, _GROUP_TEMPLATES[expression.side]).replace("{count}", _COUNT_WORDS[expression.count])
        return template.replace("{pl}", plural)
    assert expression.anchor_phrase is not None
    anchor = render_phrase(expression.anchor_phrase, rng)
    template = _choice(rng, _PLURAL_RELATION_TEMPLATES[expression.relation])
    return template.replace("{pl}", plural).replace("{anchor}", anchor)


def _unique_anchors(
    objects: Sequence[SceneObject], counts: Mapping[NounPhrase, int]
) -> Iterator[tuple[int, NounPhrase]]:
    """(object index, its shortest unique phrase naming the shape) for every object that has one."""
    for index, obj in enumerate(objects):
        unique = [p for p in _noun_phrases(obj) if p.shape is not None and counts.get(p, 0) == 1]
        if unique:
            yield index, min(unique, key=lambda p: (p.specificity, p.size is not None))


def _group_targets(geometry: _Geometry, members: Sequence[int], side: str, count: int) -> tuple[int, ...] | None:
    """The ``count`` members nearest ``side``, if a clear gap (the margin) parts them from the rest."""
    ordered = sorted(members, key=lambda i: geometry.key(i, side))
    inner, outer = geometry.key(ordered[count - 1], side), geometry.key(ordered[count], side)
    if outer - inner < geometry.margin:
        return None
    return tuple(sorted(ordered[:count]))


def _near_miss(phrase: NounPhrase, objects: Sequence[SceneObject]) -> bool:
    """True when dropping any one word of ``phrase`` leaves a phrase some object fits."""
    fields = [name for name in ("size", "colour", "shape") if getattr(phrase, name) is not None]
    return all(any(dataclasses.replace(phrase, **{name: None}).matches(o) for o in objects) for name in fields)


def find_group_expressions(objects: Sequence[SceneObject], *, height: int, width: int) -> list[GroupExpression]:
    """Every several-target or no-target program that is unambiguous in the scene."""
    geometry = _Geometry(objects, height=height, width=width)
    phrases = list(dict.fromkeys(p for o in objects for p in _noun_phrases(o)))
    counts = {p: sum(p.matches(o) for o in objects) for p in phrases}
    found: list[GroupExpression] = []
    for phrase in phrases:
        members = [i for i, o in enumerate(objects) if phrase.matches(o)]
        if phrase.specificity and len(members) >= 2:
            found.append(GroupExpression(kind=ATTRIBUTE, phrase=phrase, targets=tuple(members)))
        for side in _GROUP_TEMPLATES:
            for count in range(2, len(members)):
                if count in _COUNT_WORDS:
                    targets = _group_targets(geometry, members, side, count)
                    if targets is not None:
                        found.append(
                            GroupExpression(kind=GROUP, phrase=phrase, targets=targets, side=side, count=count)
                        )
    # No target: attribute combinations absent from the scene whose every word is a near miss.
    values = {name: sorted({getattr(o, name) for o in objects}) for name in ("size", "colour", "shape")}
    for colour in values["colour"]:
        for shape in values["shape"]:
            for size in (None, *values["size"]):
                phrase = NounPhrase(size=size, colour=colour, shape=shape)
                if not any(phrase.matches(o) for o in objects) and _near_miss(phrase, objects):
                    found.append(GroupExpression(kind=ATTRIBUTE, phrase=phrase, targets=()))
    for anchor, anchor_phrase in _unique_anchors(objects, counts):
        for phrase in phrases:
            members = [i for i, o in enumerate(objects) if phrase.matches(o) and i != anchor]
            if not members:
                continue
            for relation in _PLURAL_RELATION_TEMPLATES:
                truths = [geometry.relation_truth(i, anchor, relation, members) for i in members]
                if UNSURE in truths:
                    continue
                targets = tuple(i for i, t in zip(members, truths) if t == TRUE)
                if len(targets) >= 2 or (not targets and all(t == FALSE for t in truths)):
                    found.append(
                        GroupExpression(
                            kind=RELATION,
                            phrase=phrase,
                            targets=targets,
                            relation=relation,
                            anchor=anchor,
                            anchor_phrase=anchor_phrase,
                        )
                    )
    return found


def _split_allows(expression: GroupExpression, split: str) -> bool:
    return split in (_ATTRIBUTE_SPLITS if expression.kind == ATTRIBUTE else _SPATIAL_SPLITS)


def _phrasings(
    expressions: Sequence[GroupExpression], *, limit: int, rng: np.random.Generator
) -> list[tuple[str, str]]:
    """Up to ``limit`` distinct (sentence, kind) phrasings of programs that all name the same targets,
    the kind drawn first: relations to some anchor outnumber the other programs many times over, and
    drawing programs uniformly would leave e.g. almost no "the blue star" among the no-target sentences."""
    by_kind: dict[str, list[GroupExpression]] = {}
    for expression in expressions:
        by_kind.setdefault(expression.label, []).append(expression)
    kinds = sorted(by_kind)
    chosen: list[tuple[str, str]] = []
    seen: set[str] = set()
    for _attempt in range(limit * 6):
        if len(chosen) == limit:
            break
        options = by_kind[kinds[int(rng.integers(len(kinds)))]]
        expression = options[int(rng.integers(len(options)))]
        sentence = render_group_expression(expression, rng)
        if sentence not in seen:
            seen.add(sentence)
            chosen.append((sentence, expression.label))
    return chosen


def generalized_refs(
    objects: Sequence[SceneObject], *, height: int, width: int, split: str, limit: int, rng: np.random.Generator
) -> list[tuple[tuple[int, ...], list[tuple[str, str]]]]:
    """Up to MULTI_REFS_PER_SCENE several-target refs and one no-target ref (targets ``()``)."""
    expressions = [e for e in find_group_expressions(objects, height=height, width=width) if _split_allows(e, split)]
    by_targets: dict[tuple[int, ...], list[GroupExpression]] = {}
    for expression in expressions:
        by_targets.setdefault(expression.targets, []).append(expression)
    multi = [t for t in by_targets if t]
    refs = []
    for position in rng.permutation(len(multi))[:MULTI_REFS_PER_SCENE]:
        targets = multi[int(position)]
        refs.append((targets, _phrasings(by_targets[targets], limit=limit, rng=rng)))
    if () in by_targets:
        refs.append(((), _phrasings(by_targets[()], limit=limit, rng=rng)))
    return sorted(refs, key=lambda ref: (len(ref[0]) == 0, ref[0]))


def draw_generalized_scene(rng: np.random.Generator, *, preset: str, split: str) -> tuple[Scene, np.ndarray]:
    """A new scene of ``split``'s kind with single-, several- and no-target refs, and its pixels."""
    spec: RefShapesPreset = PRESETS[preset]
    limit = sentence_limit(spec, split)
    while True:  # redraw the (rare) scenes where nothing can be referred to
        width, height, objects = sample_scene_objects(rng, preset=spec, split=split)
        refs = single_target_refs(objects, height=height, width=width, split=split, limit=limit, rng=rng)
        refs += generalized_refs(objects, height=height, width=width, split=split, limit=limit, rng=rng)
        if refs:
            scene = Scene(width, height, objects, refs)
            return scene, render_scene(rng, scene)


def build_generalized_scene(*, seed: int, preset: str, split: str, image_index: int) -> tuple[Scene, np.ndarray]:
    """Image ``image_index`` of ``split`` exactly as :func:`generate_grefshapes` draws it."""
    return draw_generalized_scene(
        scene_rng(seed=seed, split=split, image_index=image_index), preset=preset, split=split
    )


def _build_generalized_image(job: _ImageJob) -> _ImageRecord:
    """A process-pool task: generate, render and save one gRefShapes image."""
    scene, pixels = build_generalized_scene(
        seed=job.seed, preset=job.preset_name, split=job.split, image_index=job.image_index
    )
    return image_record(job, scene, pixels)


def _generalized_fields(ann_ids: list[int], category_ids: list[int]) -> dict:
    if not ann_ids:
        return {"ann_id": [-1], "category_id": [-1], "no_target": True}
    return {"ann_id": ann_ids, "category_id": category_ids, "no_target": False}


def grefshapes_files(out_dir: str | Path):
    """The gRefShapes files under ``out_dir`` (:class:`~ditsam.data.refshapes.DatasetFiles`)."""
    return dataset_files(out_dir, dataset=DATASET_NAME, refs_name=REFS_FILE)


def generate_grefshapes(
    out_dir: str | Path,
    *,
    seed: int = 0,
    preset: str = "tiny",
    num_images: Mapping[str, int] | None = None,
    workers: int = 0,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write gRefShapes under ``out_dir`` in the gRefCOCO layout and return ``out_dir`` (the ``root`` of
    ``GRefCocoDataset(..., dataset="grefshapes")``). Arguments as :func:`~ditsam.data.refshapes.generate_refshapes`."""
    files = grefshapes_files(out_dir)
    refs = write_generated(
        out_dir,
        files=files,
        build=_build_generalized_image,
        ref_fields=_generalized_fields,
        seed=seed,
        preset=preset,
        num_images=num_images,
        workers=workers,
        overwrite=overwrite,
        progress=progress,
        prefix=DATASET_NAME,
        description="gRefShapes: synthetic generalized referring segmentation (several or no targets)",
        version=GENERATOR_VERSION,
    )
    files.refs.write_text(json.dumps(refs), encoding="utf-8")
    log.info("wrote gRefShapes (%s, seed %d) to %s", preset, seed, out_dir)
    return Path(out_dir)
