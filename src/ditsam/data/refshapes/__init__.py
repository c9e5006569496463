"""RefShapes: the built-in synthetic referring-segmentation benchmark, written in the REFER layout.

Each image holds several coloured shapes on a textured background; objects share attributes
on purpose, so that the sentence, not the picture alone, decides which one is meant. Every
referring expression is a small program (attribute filter, extreme / ordinal position,
relation to an anchor object) evaluated over the scene in *three-valued* logic: a comparison
closer than a margin counts as "unsure". An expression is kept only when it is true for
exactly one object and clearly false for all others, so every sentence provably names one
object, and none hinges on a pixel-level difference a person could not see.

Output (``generate_refshapes(out)``), readable by ``ReferDataset(root=out, dataset="refshapes",
split_by="unc", image_dir=out / "images")``::

    <out>/refshapes/refs(unc).p      pickled list of REFER ref dicts
    <out>/refshapes/instances.json   COCO images / annotations / categories (shape kinds);
                                     polygons for polygonal shapes, compressed RLE for the others
    <out>/refshapes/scenes.json      per-object attributes and per-sentence expression kind
    <out>/images/refshapes_<id>.png

Splits: ``train`` and ``val`` mix every expression kind; ``testA`` holds attribute expressions
only, ``testB`` spatial ones only (position, ordinal, middle, relation). Each split has its own
images. Generation is deterministic: one :class:`numpy.random.Generator` per image, seeded from
(seed, split, image index), so the same seed writes byte-identical files.

Modules: :mod:`~ditsam.data.refshapes.vocabulary` (shapes, colours, phrase templates, presets),
:mod:`~ditsam.data.refshapes.scene` (sampling and painting scenes), :mod:`~ditsam.data.refshapes.language`
(expressions and their three-valued evaluator) and :mod:`~ditsam.data.refshapes.writer` (generation and
the REFER / COCO files). Nothing happens at import time.
"""

from ditsam.data.refshapes.language import (
    FALSE,
    TRUE,
    UNSURE,
    Expression,
    NounPhrase,
    evaluate,
    find_expressions,
    referent,
    render_expression,
    render_phrase,
)
from ditsam.data.refshapes.scene import (
    SceneObject,
)
from ditsam.data.refshapes.vocabulary import (
    ATTRIBUTE,
    COLOURS,
    DATASET_NAME,
    EXPRESSION_KINDS,
    GENERATOR_VERSION,
    MIDDLE,
    ORDINAL,
    POLYGON_SHAPES,
    POSITION,
    PRESETS,
    RASTER_SHAPES,
    REFSHAPES_WORDS,
    RELATION,
    SHAPES,
    SIZES,
    SPLIT_BY,
    SPLITS,
    RefShapesPreset,
)
from ditsam.data.refshapes.writer import (
    DatasetFiles,
    Scene,
    build_scene,
    dataset_files,
    draw_scene,
    generate_refshapes,
    image_record,
    read_split_counts,
    refshapes_files,
    render_scene,
    sample_scene_objects,
    scene_rng,
    sentence_limit,
    single_target_refs,
    split_counts,
    write_generated,
)

__all__ = [
    "ATTRIBUTE",
    "COLOURS",
    "DATASET_NAME",
    "DatasetFiles",
    "EXPRESSION_KINDS",
    "Expression",
    "FALSE",
    "GENERATOR_VERSION",
    "MIDDLE",
    "NounPhrase",
    "ORDINAL",
    "POLYGON_SHAPES",
    "POSITION",
    "PRESETS",
    "RASTER_SHAPES",
    "REFSHAPES_WORDS",
    "RELATION",
    "RefShapesPreset",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "SPLIT_BY",
    "Scene",
    "SceneObject",
    "TRUE",
    "UNSURE",
    "build_scene",
    "dataset_files",
    "draw_scene",
    "evaluate",
    "find_expressions",
    "generate_refshapes",
    "image_record",
    "read_split_counts",
    "referent",
    "refshapes_files",
    "render_expression",
    "render_phrase",
    "render_scene",
    "sample_scene_objects",
    "scene_rng",
    "sentence_limit",
    "single_target_refs",
    "split_counts",
    "write_generated",
]
