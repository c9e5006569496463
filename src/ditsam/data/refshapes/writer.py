"""RefShapes generation and output: scenes with their sentences, drawn deterministically per image,
written in the REFER layout (``refs(unc).p``, COCO ``instances.json``, ``scenes.json``, PNGs).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pickle
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from ditsam.data.refshapes.language import _pick_sentences, find_expressions
from ditsam.data.refshapes.scene import SceneObject, _render, _sample_objects
from ditsam.data.refshapes.vocabulary import (
    _SPLIT_KINDS,
    DATASET_NAME,
    GENERATOR_VERSION,
    PRESETS,
    SHAPES,
    SPLIT_BY,
    SPLITS,
    RefShapesPreset,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Scene:
    """A generated scene: its objects and its referring expressions with their targets."""

    width: int
    height: int
    objects: list[SceneObject]
    # Per ref: (indices of the referred objects, [(sentence, kind), ...]). RefShapes refers to exactly
    # one object; its generalized variant (ditsam.data.grefshapes) also to several or none (empty).
    refs: list[tuple[tuple[int, ...], list[tuple[str, str]]]]


def sentence_limit(preset: RefShapesPreset, split: str) -> int:
    """At most this many phrasings per ref in ``split``."""
    return preset.train_sentences_per_ref if split == "train" else preset.eval_sentences_per_ref


def sample_scene_objects(
    rng: np.random.Generator, *, preset: RefShapesPreset, split: str
) -> tuple[int, int, list[SceneObject]]:
    """(width, height, objects) of a new layout with at least two objects."""
    sides = np.arange(preset.side_range[0], preset.side_range[1] + 1, preset.side_step)
    while True:
        width, height = (int(v) for v in rng.choice(sides, size=2))
        count = int(rng.integers(preset.objects_range[0], preset.objects_range[1] + 1))
        objects = _sample_objects(rng, height=height, width=width, count=count, split=split)
        if len(objects) >= 2:
            return width, height, objects


def single_target_refs(
    objects: Sequence[SceneObject], *, height: int, width: int, split: str, limit: int, rng: np.random.Generator
) -> list[tuple[tuple[int, ...], list[tuple[str, str]]]]:
    """One ref per object that some expression of ``split``'s kinds provably names alone."""
    expressions = find_expressions(objects, height=height, width=width)
    refs = []
    for index in sorted(expressions):
        sentences = _pick_sentences(expressions[index], kinds=_SPLIT_KINDS[split], limit=limit, rng=rng)
        if sentences:
            refs.append(((index,), sentences))
    return refs


def _generate_scene(rng: np.random.Generator, *, preset: RefShapesPreset, split: str) -> Scene:
    while True:  # redraw the (rare) scenes where nothing can be referred to
        width, height, objects = sample_scene_objects(rng, preset=preset, split=split)
        refs = single_target_refs(
            objects, height=height, width=width, split=split, limit=sentence_limit(preset, split), rng=rng
        )
        if refs:
            return Scene(width, height, objects, refs)


def _segmentation(obj: SceneObject) -> list[list[float]] | dict:
    if obj.polygon is not None:
        return [obj.polygon]
    rle = mask_utils.encode(np.asfortranarray(obj.mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


@dataclasses.dataclass(frozen=True)
class _ImageJob:
    seed: int
    split: str
    image_index: int
    image_id: int
    preset_name: str
    image_dir: str
    # File name prefix of the written PNGs (the dataset's name).
    prefix: str = DATASET_NAME


@dataclasses.dataclass
class _ImageRecord:
    """What one image contributes to the annotation files (masks already encoded)."""

    job: _ImageJob
    file_name: str
    width: int
    height: int
    objects: list[dict]  # shape, colour, size, bbox (x, y, w, h), area, segmentation
    refs: list[tuple[tuple[int, ...], list[tuple[str, str]]]]


def draw_scene(rng: np.random.Generator, *, preset: str, split: str) -> tuple[Scene, np.ndarray]:
    """A new scene of ``split``'s kind drawn from ``rng``, and its pixels, uint8 (H, W, 3)."""
    scene = _generate_scene(rng, preset=PRESETS[preset], split=split)
    return scene, render_scene(rng, scene)


def scene_sentences(rng: np.random.Generator, *, preset: str, split: str = "train") -> list[str]:
    """Every sentence of a new scene of ``split``'s kind drawn from ``rng``, without drawing its pixels (for
    text-only uses such as pretraining the text encoder)."""
    scene = _generate_scene(rng, preset=PRESETS[preset], split=split)
    return [sentence for _, sentences in scene.refs for sentence, _ in sentences]


def render_scene(rng: np.random.Generator, scene: Scene) -> np.ndarray:
    """The pixels of ``scene``, uint8 (H, W, 3), drawn with ``rng``."""
    return _render(rng, scene.height, scene.width, scene.objects)


def scene_rng(*, seed: int, split: str, image_index: int) -> np.random.Generator:
    """The generator of image ``image_index`` of ``split``: one per image, so files do not depend on workers."""
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), image_index]))


def build_scene(*, seed: int, preset: str, split: str, image_index: int) -> tuple[Scene, np.ndarray]:
    """Re-create image ``image_index`` of ``split`` exactly as :func:`generate_refshapes` draws
    it: the scene (objects with their masks, refs with their sentences) and its pixels, uint8
    (H, W, 3). For tests and debugging."""
    return draw_scene(scene_rng(seed=seed, split=split, image_index=image_index), preset=preset, split=split)


def image_record(job: _ImageJob, scene: Scene, pixels: np.ndarray) -> _ImageRecord:
    """Save the scene's image under ``job.image_dir`` and encode its objects for the annotation files."""
    file_name = f"{job.prefix}_{job.image_id:06d}.png"
    # PIL writes no timestamp into PNGs: equal pixels give equal bytes.
    Image.fromarray(pixels).save(Path(job.image_dir) / file_name, format="PNG", compress_level=6)
    objects = []
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.bbox
        objects.append(
            {
                "shape": obj.shape,
                "colour": obj.colour,
                "size": obj.size,
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                "area": float(obj.mask.sum()),
                "segmentation": _segmentation(obj),
            }
        )
    return _ImageRecord(job, file_name, scene.width, scene.height, objects, scene.refs)


def _build_image(job: _ImageJob) -> _ImageRecord:
    """Generate, render and save one RefShapes image. A process-pool task: depends on ``job`` alone."""
    scene, pixels = build_scene(seed=job.seed, preset=job.preset_name, split=job.split, image_index=job.image_index)
    return image_record(job, scene, pixels)


def _resolve_counts(preset: RefShapesPreset, num_images: Mapping[str, int] | None) -> dict[str, int]:
    counts = dict(preset.images)
    for split, n in (num_images or {}).items():
        if split not in SPLITS:
            raise ValueError(f"unknown RefShapes split {split!r}; splits are {', '.join(SPLITS)}")
        if n < 0:
            raise ValueError(f"num_images[{split!r}] must be >= 0, got {n}")
        counts[split] = int(n)
    return counts


@dataclasses.dataclass(frozen=True)
class DatasetFiles:
    """Where a generated dataset's files go under its root."""

    refs: Path
    instances: Path
    scenes: Path
    images: Path


def dataset_files(
    out_dir: str | Path, *, dataset: str = DATASET_NAME, refs_name: str = f"refs({SPLIT_BY}).p"
) -> DatasetFiles:
    """The files of generated ``dataset`` under ``out_dir``: ``<dataset>/<refs_name>``,
    ``<dataset>/instances.json``, ``<dataset>/scenes.json`` and the ``images`` folder."""
    out = Path(out_dir)
    return DatasetFiles(
        out / dataset / refs_name, out / dataset / "instances.json", out / dataset / "scenes.json", out / "images"
    )


def refshapes_files(out_dir: str | Path) -> tuple[Path, Path, Path, Path]:
    """(refs pickle, instances.json, scenes.json, images directory) under ``out_dir``."""
    files = dataset_files(out_dir)
    return files.refs, files.instances, files.scenes, files.images


def _prepare_output(out_dir: str | Path, files: DatasetFiles, *, prefix: str, overwrite: bool) -> None:
    old = [p for p in (files.refs, files.instances, files.scenes) if p.exists()]
    old += sorted(files.images.glob(f"{prefix}_*.png")) if files.images.is_dir() else []
    if old and not overwrite:
        raise FileExistsError(
            f"{out_dir} already holds generated files ({old[0]}); pass overwrite=True to replace them"
        )
    for path in old:
        path.unlink()
    files.refs.parent.mkdir(parents=True, exist_ok=True)
    files.images.mkdir(parents=True, exist_ok=True)


def _run_jobs(
    jobs: Sequence[_ImageJob], *, build: Callable[[_ImageJob], _ImageRecord], workers: int, progress: bool
) -> Iterator[_ImageRecord]:
    """Records in job order, whatever the number of worker processes (``build`` must be a module-level function)."""
    bar = _progress(len(jobs), enabled=progress)
    try:
        if workers <= 1:
            for job in jobs:
                yield build(job)
                bar.update(1)
        else:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(max_workers=workers) as pool:
                for record in pool.map(build, jobs, chunksize=8):
                    yield record
                    bar.update(1)
    finally:
        bar.close()


def write_generated(
    out_dir: str | Path,
    *,
    files: DatasetFiles,
    build: Callable[[_ImageJob], _ImageRecord],
    ref_fields: Callable[[list[int], list[int]], dict],
    seed: int,
    preset: str,
    num_images: Mapping[str, int] | None,
    workers: int,
    overwrite: bool,
    progress: bool,
    prefix: str = DATASET_NAME,
    description: str = "RefShapes synthetic referring segmentation",
    version: int = GENERATOR_VERSION,
) -> list[dict]:
    """Generate every image with ``build``, write instances.json and scenes.json, and return the ref
    records (without their target fields, which ``ref_fields(ann_ids, category_ids)`` gives); the
    caller writes the refs file in its format."""
    if preset not in PRESETS:
        raise ValueError(f"unknown RefShapes preset {preset!r}; presets are {', '.join(PRESETS)}")
    counts = _resolve_counts(PRESETS[preset], num_images)
    _prepare_output(out_dir, files, prefix=prefix, overwrite=overwrite)
    jobs, image_id = [], 0
    for split in SPLITS:
        for index in range(counts[split]):
            image_id += 1
            jobs.append(_ImageJob(seed, split, index, image_id, preset, str(files.images), prefix))

    images, annotations, refs, scene_images = [], [], [], []
    sentence_kinds: dict[str, str] = {}
    ann_id = ref_id = sent_id = 0
    for record in _run_jobs(jobs, build=build, workers=workers, progress=progress):
        image_id, split = record.job.image_id, record.job.split
        images.append({"id": image_id, "file_name": record.file_name, "height": record.height, "width": record.width})
        ann_ids, scene_objects = [], []
        for obj in record.objects:
            ann_id += 1
            ann_ids.append(ann_id)
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "segmentation": obj["segmentation"],
                    "bbox": obj["bbox"],
                    "area": obj["area"],
                    "iscrowd": 0,
                    "category_id": SHAPES.index(obj["shape"]) + 1,
                }
            )
            scene_objects.append(
                {"ann_id": ann_id, "shape": obj["shape"], "colour": obj["colour"], "size": obj["size"]}
            )
        scene_images.append({"image_id": image_id, "split": split, "objects": scene_objects})
        for targets, sentences in record.refs:
            ref_id += 1
            sent_dicts = []
            for sentence, kind in sentences:
                sent_id += 1
                sent_dicts.append({"raw": sentence, "sent": sentence, "sent_id": sent_id, "tokens": sentence.split()})
                sentence_kinds[str(sent_id)] = kind
            categories = [SHAPES.index(record.objects[i]["shape"]) + 1 for i in targets]
            refs.append(
                {
                    "ref_id": ref_id,
                    **ref_fields([ann_ids[i] for i in targets], categories),
                    "image_id": image_id,
                    "split": split,
                    "file_name": record.file_name,
                    "sent_ids": [s["sent_id"] for s in sent_dicts],
                    "sentences": sent_dicts,
                }
            )

    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPES)]
    instances = {
        "info": {"description": description, "seed": seed, "preset": preset},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    files.instances.write_text(json.dumps(instances), encoding="utf-8")
    scenes = {
        "seed": seed,
        "preset": preset,
        "version": version,
        "splits": split_counts(refs),
        "images": scene_images,
        "sentence_kinds": sentence_kinds,
    }
    files.scenes.write_text(json.dumps(scenes), encoding="utf-8")
    return refs


def _single_target_fields(ann_ids: list[int], category_ids: list[int]) -> dict:
    return {"ann_id": ann_ids[0], "category_id": category_ids[0]}


def generate_refshapes(
    out_dir: str | Path,
    *,
    seed: int = 0,
    preset: str = "tiny",
    num_images: Mapping[str, int] | None = None,
    workers: int = 0,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write RefShapes under ``out_dir`` and return ``out_dir`` (the ``root`` for ReferDataset).

    ``num_images`` overrides the preset's images per split (e.g. ``{"train": 4}`` in tests).
    ``workers`` > 1 renders images in that many processes; the files are the same either way.
    Existing RefShapes files raise ``FileExistsError`` unless ``overwrite``; then the old
    annotation files and ``refshapes_*.png`` images are removed first, nothing else.
    """
    files = dataset_files(out_dir)
    refs = write_generated(
        out_dir,
        files=files,
        build=_build_image,
        ref_fields=_single_target_fields,
        seed=seed,
        preset=preset,
        num_images=num_images,
        workers=workers,
        overwrite=overwrite,
        progress=progress,
    )
    with files.refs.open("wb") as handle:
        # Pickle memoises by object identity, which differs between in-process and pooled runs;
        # a JSON round trip gives every run the same object graph, hence the same bytes.
        pickle.dump(json.loads(json.dumps(refs)), handle, protocol=4)
    log.info("wrote RefShapes (%s, seed %d) to %s", preset, seed, out_dir)
    return Path(out_dir)


def split_counts(refs: Sequence[Mapping]) -> dict[str, dict[str, int]]:
    """Per split: images, refs (objects) and sentences, from a list of REFER ref dicts."""
    counts: dict[str, dict[str, int]] = {}
    images: dict[str, set[int]] = {}
    for ref in refs:
        entry = counts.setdefault(ref["split"], {"images": 0, "refs": 0, "sentences": 0})
        entry["refs"] += 1
        entry["sentences"] += len(ref["sentences"])
        images.setdefault(ref["split"], set()).add(ref["image_id"])
    for split, ids in images.items():
        counts[split]["images"] = len(ids)
    return {split: counts[split] for split in SPLITS if split in counts}


def read_split_counts(out_dir: str | Path, *, dataset: str = DATASET_NAME) -> dict[str, dict[str, int]]:
    """Per-split counts of generated ``dataset`` (refshapes, grefshapes), read back from its scenes.json."""
    return json.loads(dataset_files(out_dir, dataset=dataset).scenes.read_text(encoding="utf-8"))["splits"]


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, *, enabled: bool):
    if not enabled:
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(total=total, desc="generating", unit="img")
