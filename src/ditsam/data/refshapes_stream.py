"""An endless RefShapes training split: every sample is a freshly generated scene.

RefShapes is procedural, so a training run need not repeat its images: :class:`RefShapesStream`
is a reader (like :class:`~ditsam.data.refer.ReferDataset` in train mode) whose item ``i`` in
epoch ``e`` is one referred object, with its sentences, of a scene drawn from a generator seeded
with (seed, e, i). Scenes come from the same generator as the files (train-split statistics,
every expression kind, provably unique expressions), but from a seed space the files never use,
so the stream never shows an evaluation image. The pixels stay in memory (``RefSample.pixels``).
"""

from __future__ import annotations

import numpy as np

from ditsam.data.grefshapes import draw_generalized_scene
from ditsam.data.refshapes import PRESETS, SHAPES, SPLITS, Scene, draw_scene
from ditsam.data.sample import RefSample
from ditsam.data.segmentation import bbox_from_mask

# Seed-sequence key that separates stream scenes from the files' (split index, image index) seeds.
_STREAM_KEY = len(SPLITS) + 1
# Consecutive items drawn from one scene: a scene costs ~4 ms to lay out and render, as much as a
# tiny model's training step on four samples; its objects (~4.5 referred) serve several items.
DEFAULT_ITEMS_PER_SCENE = 4


class RefShapesStream:
    """``samples_per_epoch`` fresh training samples per epoch; call :meth:`set_epoch` to move on.

    Items come in groups of ``items_per_scene`` consecutive indices that share one new
    ``preset``-sized scene; within a group, item ``k`` is the scene's referred object ``k`` (in a
    random order, cycling when the scene has fewer), with all its phrasings as ``sentences`` and the
    image as ``pixels``. The order is already random, so read it in index order (``presorted``):
    a group's items then sit in one batch, the same picture with different targets, and the scene
    is drawn once. Deterministic in (seed, epoch, index), whatever process computes it.
    ``generalized`` draws gRefShapes scenes (:mod:`ditsam.data.grefshapes`): a ref may name several
    objects (the mask is their union) or none (an empty mask, ``no_target``).
    """

    # Items are in random order already; readers should not shuffle them (see the class docstring).
    presorted = True

    def __init__(
        self,
        *,
        seed: int = 0,
        preset: str = "tiny",
        samples_per_epoch: int,
        items_per_scene: int = DEFAULT_ITEMS_PER_SCENE,
        generalized: bool = False,
    ) -> None:
        if preset not in PRESETS:
            raise ValueError(f"unknown RefShapes preset {preset!r}; presets are {', '.join(PRESETS)}")
        if samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be >= 1, got {samples_per_epoch}")
        if items_per_scene < 1:
            raise ValueError(f"items_per_scene must be >= 1, got {items_per_scene}")
        self.seed = seed
        self.preset = preset
        self.samples_per_epoch = samples_per_epoch
        self.items_per_scene = items_per_scene
        self.generalized = generalized
        self.epoch = 0
        self._cached: tuple[tuple[int, int], Scene, np.ndarray, np.ndarray] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def _scene(self, group: int) -> tuple[Scene, np.ndarray, np.ndarray]:
        """Scene ``group`` of this epoch, its pixels and the order its referred objects are used in."""
        key = (self.epoch, group)
        if self._cached is None or self._cached[0] != key:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, _STREAM_KEY, self.epoch, group]))
            draw = draw_generalized_scene if self.generalized else draw_scene
            scene, pixels = draw(rng, preset=self.preset, split="train")
            self._cached = (key, scene, pixels, rng.permutation(len(scene.refs)))
        return self._cached[1:]

    def __getitem__(self, index: int) -> RefSample:
        if not 0 <= index < self.samples_per_epoch:
            raise IndexError(f"RefShapesStream index {index} outside 0..{self.samples_per_epoch - 1}")
        group, position = divmod(index, self.items_per_scene)
        scene, pixels, order = self._scene(group)
        targets, sentences = scene.refs[int(order[position % len(order)])]
        mask = np.zeros((scene.height, scene.width), dtype=bool)
        for object_index in targets:
            mask |= scene.objects[object_index].mask
        first = scene.objects[targets[0]] if targets else None
        return RefSample(
            image_path=f"<RefShapes stream seed {self.seed} epoch {self.epoch} scene {group}>",
            sentences=[sentence for sentence, _kind in sentences],
            mask=mask,
            bbox=bbox_from_mask(mask),
            ref_id=-1,
            ann_id=-1,
            image_id=-1,
            sent_ids=[-1] * len(sentences),
            category_id=SHAPES.index(first.shape) + 1 if first is not None else -1,
            pixels=pixels,
            no_target=not targets,
        )
