"""gRefShapes: every sentence names exactly its targets (one, several or none), proved independently.

The sentences are parsed here with a grammar of their own (plural forms added to the RefShapes
test's grammar) and evaluated with plain comparisons over the boxes in instances.json.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ditsam.data import GRefCocoDataset
from ditsam.data.grefshapes import GREFSHAPES_WORDS, build_generalized_scene, generate_grefshapes, grefshapes_files
from helpers import (
    COLOUR_PATTERN,
    NOUN_PHRASE_PATTERN,
    RELATION_PATTERN,
    RELATIONS,
    SIZE_OF_WORD,
    parse,
    referents,
    scene_objects,
)

NUM_IMAGES = {"train": 10, "val": 6, "testA": 8, "testB": 8}
_SINGULAR = {
    "squares": "square",
    "triangles": "triangle",
    "stars": "star",
    "hexagons": "hexagon",
    "diamonds": "diamond",
    "crosses": "cross",
    "circles": "circle",
    "rings": "ring",
    "hearts": "heart",
    "shapes": None,
    "objects": None,
    "ones": None,
}
_NP_PLURAL = rf"(?:(small|little|large|big) )?(?:({COLOUR_PATTERN}) )?({'|'.join(_SINGULAR)})"
_COUNTS = {"two": 2, "three": 3, "four": 4}
_GROUP_SIDES = {
    "leftmost": "left",
    "rightmost": "right",
    "topmost": "top",
    "highest": "top",
    "bottommost": "bottom",
    "lowest": "bottom",
    "on the left": "left",
    "on the right": "right",
    "at the top": "top",
    "at the bottom": "bottom",
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_grefshapes(tmp_path_factory.mktemp("grefshapes"), seed=0, num_images=NUM_IMAGES)


def _load(root: Path) -> tuple[list[dict], dict, dict]:
    files = grefshapes_files(root)
    return (
        json.loads(files.refs.read_text()),
        json.loads(files.instances.read_text()),
        json.loads(files.scenes.read_text()),
    )


def _plural_phrase(groups: tuple) -> tuple:
    size, colour, noun = groups
    return (SIZE_OF_WORD.get(size) if size else None, colour, _SINGULAR[noun])


def parse_generalized(sentence: str) -> dict:
    """Sentence -> program; plural forms here, singular ones by the RefShapes test's parser."""
    m = re.fullmatch(
        rf"the (two|three|four) {_NP_PLURAL} (on the left|on the right|at the top|at the bottom)", sentence
    )
    if m:
        g = m.groups()
        return {"kind": "group", "np": _plural_phrase(g[1:4]), "count": _COUNTS[g[0]], "side": _GROUP_SIDES[g[4]]}
    m = re.fullmatch(
        rf"the (two|three|four) (leftmost|rightmost|topmost|highest|bottommost|lowest) {_NP_PLURAL}", sentence
    )
    if m:
        g = m.groups()
        return {"kind": "group", "np": _plural_phrase(g[2:5]), "count": _COUNTS[g[0]], "side": _GROUP_SIDES[g[1]]}
    m = re.fullmatch(rf"(?:the|all) {_NP_PLURAL} ({RELATION_PATTERN}) the {NOUN_PHRASE_PATTERN}", sentence)
    if m:
        g = m.groups()
        anchor = (
            SIZE_OF_WORD.get(g[4]) if g[4] else None,
            g[5],
            g[6] if g[6] not in ("shape", "object", "one") else None,
        )
        return {"kind": "relation", "np": _plural_phrase(g[0:3]), "relation": RELATIONS[g[3]], "anchor": anchor}
    m = re.fullmatch(rf"(all the|the|all|both|the two|the three|the four) {_NP_PLURAL}", sentence)
    if m:
        quantifier = m.group(1)
        count = 2 if quantifier == "both" else _COUNTS.get(quantifier.split()[-1])
        return {"kind": "attribute", "np": _plural_phrase(m.groups()[1:4]), "count": count, "plural": True}
    m = re.fullmatch(rf"every {NOUN_PHRASE_PATTERN}", sentence)
    if m:
        g = m.groups()
        return {
            "kind": "attribute",
            "np": (
                SIZE_OF_WORD.get(g[0]) if g[0] else None,
                g[1],
                g[2] if g[2] not in ("shape", "object", "one") else None,
            ),
            "plural": True,
        }
    return parse(sentence)


def generalized_referents(program: dict, objects: list[dict]) -> set[int]:
    """The objects a program names, by plain comparisons (several allowed, possibly none)."""
    if program["kind"] == "group":
        members = sorted(
            referents({"kind": "attribute", "np": program["np"]}, objects),
            key=lambda i: {
                "left": objects[i]["cx"],
                "right": -objects[i]["cx"],
                "top": objects[i]["cy"],
                "bottom": -objects[i]["cy"],
            }[program["side"]],
        )
        assert len(members) > program["count"]
        return set(members[: program["count"]])
    found = referents(program, objects)
    if program.get("count") is not None:
        assert len(found) == program["count"], program
    return found


def test_every_sentence_names_exactly_its_targets(dataset: Path) -> None:
    refs, instances, scenes = _load(dataset)
    objects_by_image = scene_objects(instances, scenes)
    checked = Counter()
    for ref in refs:
        objects = objects_by_image[ref["image_id"]]
        ann_ids = [o["ann_id"] for o in objects]
        targets = set() if ref["ann_id"] == [-1] else {ann_ids.index(a) for a in ref["ann_id"]}
        assert ref["no_target"] == (not targets)
        for sentence in ref["sentences"]:
            program = parse_generalized(sentence["sent"])
            if program["kind"] == "relation":  # the anchor is one object, or the sentence proves nothing
                assert len(referents({"kind": "attribute", "np": program["anchor"]}, objects)) == 1, sentence["sent"]
            assert generalized_referents(program, objects) == targets, (ref["image_id"], sentence["sent"])
            if program.get("plural"):
                assert len(targets) >= 2, sentence["sent"]
            checked["none" if not targets else "multi" if len(targets) > 1 else "single", program["kind"]] += 1
    assert {
        ("multi", "attribute"),
        ("multi", "group"),
        ("multi", "relation"),
        ("none", "relation"),
        ("single", "attribute"),
        ("single", "relation"),
    } <= set(checked), checked


def test_no_target_attributes_have_near_misses(dataset: Path) -> None:
    """ "the blue star" with no blue star: each word alone still fits some object in the scene."""
    refs, instances, scenes = _load(dataset)
    objects_by_image = scene_objects(instances, scenes)
    seen = 0
    for ref in refs:
        for sentence in ref["sentences"]:
            program = parse_generalized(sentence["sent"])
            if ref["no_target"] and program["kind"] == "attribute":
                objects = objects_by_image[ref["image_id"]]
                phrase = program["np"]
                assert sum(v is not None for v in phrase) >= 2, sentence["sent"]
                for dropped in range(3):
                    if phrase[dropped] is not None:
                        relaxed = tuple(None if i == dropped else v for i, v in enumerate(phrase))
                        assert referents({"kind": "attribute", "np": relaxed}, objects), (sentence["sent"], dropped)
                seen += 1
    assert seen >= 2


def test_splits_keep_their_meaning_and_words_are_known(dataset: Path) -> None:
    refs, _, scenes = _load(dataset)
    kinds: dict[str, Counter] = {}
    for ref in refs:
        for sentence in ref["sentences"]:
            kinds.setdefault(ref["split"], Counter())[scenes["sentence_kinds"][str(sentence["sent_id"])]] += 1
            assert set(sentence["sent"].split()) <= set(GREFSHAPES_WORDS), sentence["sent"]
    assert set(kinds["testA"]) <= {"attribute", "attribute:none"} and kinds["testA"]["attribute:none"] > 0
    assert not {"attribute", "attribute:none"} & set(kinds["testB"])
    assert {"group", "relation:none"} <= set(kinds["testB"])


def test_reader_masks_are_the_union_of_the_generator_masks(dataset: Path) -> None:
    refs, _, _ = _load(dataset)
    data = GRefCocoDataset(root=dataset, dataset="grefshapes", split="val", image_dir=dataset / "images", mode="train")
    scene, pixels = build_generalized_scene(seed=0, preset="tiny", split="val", image_index=0)
    first_image = min(r["image_id"] for r in refs if r["split"] == "val")
    samples = [data[i] for i in range(len(data)) if data[i].image_id == first_image]
    assert len(samples) == len(scene.refs)
    for sample, (targets, sentences) in zip(samples, scene.refs):
        expected = np.zeros_like(sample.mask)
        for index in targets:
            expected |= scene.objects[index].mask
        assert np.array_equal(sample.mask, expected) and sample.no_target == (not targets)
        assert sample.sentences == [s for s, _ in sentences]
