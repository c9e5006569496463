"""RefShapes: determinism, REFER round trip, and an independent proof that every sentence names
exactly one object (the sentences are parsed here and evaluated with plain comparisons over the
boxes in instances.json, not with the generator's code)."""

from __future__ import annotations

import hashlib
import json
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ditsam.data.refer import ReferDataset
from ditsam.data.refshapes import (
    COLOURS,
    REFSHAPES_WORDS,
    SPLITS,
    build_scene,
    generate_refshapes,
    refshapes_files,
)
from helpers import parse, referents, scene_objects

NUM_IMAGES = {"train": 8, "val": 4, "testA": 4, "testB": 4}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_refshapes(tmp_path_factory.mktemp("refshapes"), seed=0, num_images=NUM_IMAGES)


def _digests(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _load(root: Path) -> tuple[list[dict], dict, dict]:
    refs_path, instances_path, scenes_path, _ = refshapes_files(root)
    with refs_path.open("rb") as handle:
        refs = pickle.load(handle)
    return refs, json.loads(instances_path.read_text()), json.loads(scenes_path.read_text())


# --------------------------------------------------------------------------------------------
# Determinism and layout
# --------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_files(dataset: Path, tmp_path: Path) -> None:
    again = generate_refshapes(tmp_path / "again", seed=0, num_images=NUM_IMAGES, workers=2)
    first, second = _digests(dataset), _digests(again)
    assert len(first) == sum(NUM_IMAGES.values()) + 3
    assert first == second


def test_different_seed_differs(dataset: Path, tmp_path: Path) -> None:
    other = _digests(generate_refshapes(tmp_path / "other", seed=1, num_images=NUM_IMAGES))
    first = _digests(dataset)
    assert first.keys() == other.keys()
    differing = [name for name in first if first[name] != other[name]]
    assert len(differing) == len(first)  # every image and every annotation file


def test_existing_output_is_not_overwritten_silently(dataset: Path) -> None:
    with pytest.raises(FileExistsError):
        generate_refshapes(dataset, seed=0, num_images=NUM_IMAGES)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="preset"):
        generate_refshapes(tmp_path, preset="huge")
    with pytest.raises(ValueError, match="split"):
        generate_refshapes(tmp_path, num_images={"test": 1})


def test_layout_ids_splits_and_segmentations(dataset: Path) -> None:
    refs, instances, scenes = _load(dataset)
    images = {image["id"]: image for image in instances["images"]}
    assert len(images) == sum(NUM_IMAGES.values())
    # Several sizes and aspect ratios, each side in the tiny preset's range.
    shapes = {(image["height"], image["width"]) for image in images.values()}
    assert len(shapes) >= 5
    assert len({round(w / h, 2) for h, w in shapes}) >= 4
    assert all(96 <= side <= 160 for shape in shapes for side in shape)
    for image in images.values():
        with Image.open(dataset / "images" / image["file_name"]) as png:
            assert png.size == (image["width"], image["height"]) and png.mode == "RGB"
    # Both kinds of COCO segmentation.
    kinds = Counter("polygon" if isinstance(a["segmentation"], list) else "rle" for a in instances["annotations"])
    assert kinds["polygon"] > 0 and kinds["rle"] > 0
    for ann in instances["annotations"]:
        if isinstance(ann["segmentation"], dict):
            assert isinstance(ann["segmentation"]["counts"], str)
    # Unique ids; every split has refs; no image is shared between splits.
    assert len({a["id"] for a in instances["annotations"]}) == len(instances["annotations"])
    assert len({r["ref_id"] for r in refs}) == len(refs)
    sent_ids = [s["sent_id"] for r in refs for s in r["sentences"]]
    assert len(set(sent_ids)) == len(sent_ids)
    split_of_image: dict[int, str] = {}
    for ref in refs:
        assert split_of_image.setdefault(ref["image_id"], ref["split"]) == ref["split"]
        assert ref["sent_ids"] == [s["sent_id"] for s in ref["sentences"]]
        assert images[ref["image_id"]]["file_name"] == ref["file_name"]
    assert set(split_of_image.values()) == set(SPLITS)
    assert Counter(split_of_image.values()) == Counter({s: n for s, n in NUM_IMAGES.items()})
    assert scenes["splits"]["train"]["refs"] == sum(r["split"] == "train" for r in refs)


def test_vocabulary_covers_every_sentence(dataset: Path) -> None:
    refs, _, _ = _load(dataset)
    vocabulary = set(REFSHAPES_WORDS)
    for ref in refs:
        for sentence in ref["sentences"]:
            assert sentence["tokens"] == sentence["sent"].split()
            assert set(sentence["tokens"]) <= vocabulary, sentence["sent"]
            assert len(sentence["tokens"]) <= 16
    assert "left" in vocabulary and "rightmost" in vocabulary


def test_expression_kinds_per_split(dataset: Path) -> None:
    refs, _, scenes = _load(dataset)
    kinds = scenes["sentence_kinds"]
    by_split: dict[str, Counter] = {}
    for ref in refs:
        for sentence in ref["sentences"]:
            by_split.setdefault(ref["split"], Counter())[kinds[str(sentence["sent_id"])]] += 1
    assert set(by_split["testA"]) == {"attribute"}
    assert "attribute" not in by_split["testB"]
    assert {"attribute", "position", "ordinal", "relation"} <= set(by_split["train"])


# --------------------------------------------------------------------------------------------
# Independent check: parse each sentence and evaluate it over the annotated boxes
# --------------------------------------------------------------------------------------------


def test_every_sentence_names_exactly_its_object(dataset: Path) -> None:
    refs, instances, scenes = _load(dataset)
    objects_by_image = scene_objects(instances, scenes)
    checked = Counter()
    for ref in refs:
        objects = objects_by_image[ref["image_id"]]
        target = [o["ann_id"] for o in objects].index(ref["ann_id"])
        for sentence in ref["sentences"]:
            program = parse(sentence["sent"])
            assert program["kind"] == scenes["sentence_kinds"][str(sentence["sent_id"])] or (
                program["kind"] == "ordinal" and program["rank"] == 0
            ), sentence["sent"]
            assert referents(program, objects) == {target}, (ref["image_id"], sentence["sent"])
            checked[program["kind"]] += 1
    assert {"attribute", "ordinal", "relation"} <= set(checked)


def test_spatial_sentences_need_their_spatial_words(dataset: Path) -> None:
    """Position / ordinal / relation expressions use a noun phrase that alone fits >= 2 objects."""
    refs, instances, scenes = _load(dataset)
    objects_by_image = scene_objects(instances, scenes)
    for ref in refs:
        objects = objects_by_image[ref["image_id"]]
        for sentence in ref["sentences"]:
            program = parse(sentence["sent"])
            if program["kind"] != "attribute":
                alone = referents({"kind": "attribute", "np": program["np"]}, objects)
                assert len(alone) >= 2, sentence["sent"]


def test_attributes_are_visible_in_the_pixels(dataset: Path) -> None:
    """Colour words match the painted pixels; sizes separate cleanly within each shape kind."""
    refs, instances, scenes = _load(dataset)
    images = {image["id"]: image for image in instances["images"]}
    dataset_masks = {}
    for split in SPLITS:
        for sample in ReferDataset(
            root=dataset, dataset="refshapes", split_by="unc", split=split, image_dir=dataset / "images", mode="train"
        ):
            dataset_masks[sample.ann_id] = sample.mask
    palette = np.array(list(COLOURS.values()), dtype=np.float64)
    areas: dict[str, dict[str, list[float]]] = {}
    for image_entry in scenes["images"]:
        image = images[image_entry["image_id"]]
        pixels = np.asarray(Image.open(dataset / "images" / image["file_name"]), dtype=np.float64)
        short = min(image["height"], image["width"])
        for obj in image_entry["objects"]:
            mask = dataset_masks.get(obj["ann_id"])
            if mask is None:
                continue
            mean = pixels[mask].mean(axis=0)
            nearest = list(COLOURS)[int(np.argmin(((palette - mean) ** 2).sum(axis=1)))]
            assert nearest == obj["colour"]
            areas.setdefault(obj["shape"], {}).setdefault(obj["size"], []).append(mask.sum() / short**2)
    for shape, by_size in areas.items():
        if len(by_size) == 2:
            assert max(by_size["small"]) < min(by_size["large"]), shape


# --------------------------------------------------------------------------------------------
# REFER round trip
# --------------------------------------------------------------------------------------------


def test_refer_round_trip(dataset: Path) -> None:
    refs, _, _ = _load(dataset)
    for split_index, split in enumerate(SPLITS):
        split_refs = [r for r in refs if r["split"] == split]
        kwargs = dict(root=dataset, dataset="refshapes", split_by="unc", split=split, image_dir=dataset / "images")
        train = ReferDataset(**kwargs, mode="train")
        evaluation = ReferDataset(**kwargs, mode="eval")
        assert len(train) == len(split_refs)
        assert len(evaluation) == sum(len(r["sentences"]) for r in split_refs)
        assert [len(evaluation[i].sentences) for i in range(len(evaluation))] == [1] * len(evaluation)
        # The masks the reader decodes are the generator's own masks, pixel for pixel.
        first_image = min(r["image_id"] for r in split_refs)
        samples = {s.ann_id: s for s in train if s.image_id == first_image}
        scene, pixels = build_scene(seed=0, preset="tiny", split=split, image_index=0)
        stored = np.asarray(Image.open(samples[next(iter(samples))].image_path))
        assert np.array_equal(stored, pixels)
        image_refs = [r for r in split_refs if r["image_id"] == first_image]
        for ref, ((index,), sentences) in zip(image_refs, scene.refs):
            sample = samples[ref["ann_id"]]
            assert np.array_equal(sample.mask, scene.objects[index].mask)
            assert sample.sentences == [s for s, _ in sentences]
            x0, y0, x1, y1 = scene.objects[index].bbox
            assert sample.bbox == (x0, y0, x1 - x0, y1 - y0)
