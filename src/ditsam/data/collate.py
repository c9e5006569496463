"""From reader samples to model batches: :class:`RISDataset` (per-sample work) and
:class:`RISCollator` (batching and tokenisation).

``RISDataset`` wraps any reader yielding :class:`~ditsam.data.sample.RefSample` (REFER, SimREC,
RefShapes, custom): it loads the image, picks the sentence, applies the transform. Every random
choice of item ``i`` in epoch ``e`` comes from a generator seeded with (seed, e, i), so a run is
reproducible whatever the number of data-loader workers and the order they finish in.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ditsam.data.sample import RefSample, load_sample_image
from ditsam.data.transforms import RISTransform, TransformMeta
from ditsam.model.text import TextTokenizer, TokenizedText


class SampleReader(Protocol):
    """What :class:`RISDataset` needs from a reader."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> RefSample: ...


@dataclasses.dataclass
class RISItem:
    """One transformed sample. image: (3, S, S) float32; mask: (1, S, S) float32 in {0, 1} on the
    padded canvas; gt_mask: bool (H, W) at the original resolution; sentence: as fed to the model
    (left/right swapped when flipped)."""

    image: torch.Tensor
    mask: torch.Tensor
    sentence: str
    meta: TransformMeta
    ref_id: int
    sent_id: int
    gt_mask: np.ndarray
    # Generalized RIS: the sentence names no object (mask all zeros).
    no_target: bool = False


class RISDataset(Dataset):
    """Map-style dataset of :class:`RISItem` over a reader.

    ``train=True`` picks one of the object's sentences at random (deterministic given seed,
    epoch and index); otherwise the sample's first sentence, which in a reader's eval mode is
    its only one. ``fixed_sentence`` replaces every sentence (a text-blind control). Call :meth:`set_epoch` before each epoch's data-loader iterator is created:
    workers receive a copy of the dataset when the iterator starts (so keep
    ``persistent_workers=False``, or the epoch never reaches them).
    """

    def __init__(
        self,
        base_dataset: SampleReader,
        *,
        transform: RISTransform,
        train: bool,
        seed: int = 0,
        fixed_sentence: str = "",
    ) -> None:
        self.base = base_dataset
        self.transform = transform
        self.train = train
        self.seed = seed
        # A control experiment's sentence given for every sample instead of its own ("" = off).
        self.fixed_sentence = fixed_sentence
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.base, "set_epoch"):  # readers that draw new samples every epoch (RefShapesStream)
            self.base.set_epoch(self.epoch)

    def __len__(self) -> int:
        return len(self.base)

    def rng_for(self, index: int) -> np.random.Generator:
        """The generator behind every random choice of item ``index`` in the current epoch."""
        return np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, index]))

    def __getitem__(self, index: int) -> RISItem:
        sample = self.base[index]
        if not sample.sentences:
            raise ValueError(f"ref {sample.ref_id} ({sample.image_path}) has no sentence")
        rng = self.rng_for(index)
        choice = int(rng.integers(len(sample.sentences))) if self.train else 0
        image = load_sample_image(sample)
        sentence = self.fixed_sentence or sample.sentences[choice]
        out = self.transform(image, sentence=sentence, mask=sample.mask, rng=rng)
        assert out.mask is not None
        return RISItem(
            image=out.image,
            mask=out.mask,
            sentence=out.sentence,
            meta=out.meta,
            ref_id=sample.ref_id,
            sent_id=sample.sent_ids[choice] if choice < len(sample.sent_ids) else -1,
            gt_mask=np.asarray(sample.mask, dtype=bool),
            no_target=sample.no_target,
        )


@dataclasses.dataclass
class RISBatch:
    """A batch of B samples on an S x S canvas.

    images: (B, 3, S, S) float32. masks: (B, 1, S, S) float32 targets in {0, 1}. text: token ids
    and attention mask, (B, T). sentences, metas, ref_ids, sent_ids: per sample. gt_masks: bool
    (H_i, W_i) arrays at original resolution (evaluation compares predictions there). no_target:
    (B,) bool, True where the sentence names nothing (generalized RIS).
    """

    images: torch.Tensor
    masks: torch.Tensor
    text: TokenizedText
    sentences: list[str]
    metas: list[TransformMeta]
    ref_ids: list[int]
    sent_ids: list[int]
    gt_masks: list[np.ndarray]
    no_target: torch.Tensor

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> "RISBatch":
        """A copy with the tensors on ``device`` (the per-sample lists are shared)."""
        text = TokenizedText(
            self.text.input_ids.to(device, non_blocking=non_blocking),
            self.text.attention_mask.to(device, non_blocking=non_blocking),
        )
        return dataclasses.replace(
            self,
            images=self.images.to(device, non_blocking=non_blocking),
            masks=self.masks.to(device, non_blocking=non_blocking),
            no_target=self.no_target.to(device, non_blocking=non_blocking),
            text=text,
        )

    def pin_memory(self) -> "RISBatch":
        """Called by ``DataLoader(pin_memory=True)``."""
        text = TokenizedText(self.text.input_ids.pin_memory(), self.text.attention_mask.pin_memory())
        return dataclasses.replace(self, images=self.images.pin_memory(), masks=self.masks.pin_memory(), text=text)


class RISCollator:
    """``collate_fn`` turning :class:`RISItem` lists into a :class:`RISBatch`, tokenising all
    sentences of the batch in one tokenizer call. ``drop_padding_columns`` (for models that mask
    the text padding) trims the columns that are [PAD] in every sentence here, on the CPU, so that
    the model need not read the mask on an accelerator."""

    def __init__(self, tokenizer: TextTokenizer, *, drop_padding_columns: bool = False) -> None:
        self.tokenizer = tokenizer
        self.drop_padding_columns = drop_padding_columns

    def __call__(self, items: Sequence[RISItem]) -> RISBatch:
        if not items:
            raise ValueError("cannot collate an empty list of items")
        sizes = {tuple(item.image.shape) for item in items}
        if len(sizes) != 1:
            raise ValueError(f"items have different canvas shapes {sorted(sizes)}; use one input_size per loader")
        sentences = [item.sentence for item in items]
        text = self.tokenizer(sentences)
        return RISBatch(
            images=torch.stack([item.image for item in items]),
            masks=torch.stack([item.mask for item in items]),
            text=text.without_padding_columns() if self.drop_padding_columns else text,
            sentences=sentences,
            metas=[item.meta for item in items],
            ref_ids=[item.ref_id for item in items],
            sent_ids=[item.sent_id for item in items],
            gt_masks=[item.gt_mask for item in items],
            no_target=torch.tensor([item.no_target for item in items], dtype=torch.bool),
        )
