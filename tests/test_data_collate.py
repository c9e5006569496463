"""RISDataset / RISCollator over a small generated RefShapes, tokenised by a tiny BERT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ditsam.data.collate import RISBatch, RISCollator, RISDataset
from ditsam.data.refer import ReferDataset
from ditsam.data.refshapes import REFSHAPES_WORDS, generate_refshapes
from ditsam.data.transforms import RISTransform, TransformConfig, restore_to_original
from ditsam.model.text import TextTokenizer, build_tiny_bert

SIZE = 96


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_refshapes(
        tmp_path_factory.mktemp("refshapes"), seed=0, num_images={"train": 4, "val": 2, "testA": 0, "testB": 0}
    )


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> TextTokenizer:
    directory = build_tiny_bert(tmp_path_factory.mktemp("bert"), words=REFSHAPES_WORDS, hidden_size=16, num_layers=1)
    return TextTokenizer(name_or_path=str(directory), max_tokens=20)


def _reader(root: Path, split: str, mode: str) -> ReferDataset:
    return ReferDataset(
        root=root, dataset="refshapes", split_by="unc", split=split, image_dir=root / "images", mode=mode
    )


def _train_dataset(root: Path, seed: int = 0, size: int = SIZE) -> RISDataset:
    transform = RISTransform.for_training(TransformConfig(input_size=size))
    return RISDataset(_reader(root, "train", "train"), transform=transform, train=True, seed=seed)


def test_batch_shapes_and_types(root: Path, tokenizer: TextTokenizer) -> None:
    dataset = _train_dataset(root)
    batch = RISCollator(tokenizer)([dataset[i] for i in range(5)])
    assert isinstance(batch, RISBatch) and len(batch) == 5
    assert batch.images.shape == (5, 3, SIZE, SIZE) and batch.images.dtype == torch.float32
    assert batch.masks.shape == (5, 1, SIZE, SIZE) and batch.masks.dtype == torch.float32
    assert set(batch.masks.unique().tolist()) <= {0.0, 1.0} and batch.masks.sum() > 0
    assert batch.text.input_ids.shape == (5, 20) and batch.text.input_ids.dtype == torch.int64
    assert batch.text.attention_mask.shape == (5, 20) and batch.text.attention_mask.dtype == torch.bool
    assert (
        len(batch.sentences)
        == len(batch.metas)
        == len(batch.ref_ids)
        == len(batch.sent_ids)
        == len(batch.gt_masks)
        == 5
    )
    for index, gt in enumerate(batch.gt_masks):
        sample = dataset.base[index]
        assert gt.dtype == bool and np.array_equal(gt, sample.mask)
        assert batch.ref_ids[index] == sample.ref_id and batch.sent_ids[index] in sample.sent_ids
        # The sentence is the chosen one, mirrored when the sample was flipped.
        words = batch.sentences[index]
        chosen = sample.sentences[sample.sent_ids.index(batch.sent_ids[index])]
        if batch.metas[index].flipped:
            chosen = chosen.replace("left", "@").replace("right", "left").replace("@", "right")
        assert words == chosen


def test_tokens_use_the_refshapes_vocabulary(root: Path, tokenizer: TextTokenizer) -> None:
    sentences = [s for sample in _reader(root, "train", "train") for s in sample.sentences]
    text = tokenizer(sentences)
    unknown = tokenizer.tokenizer.unk_token_id
    assert not (text.input_ids == unknown).any()
    # One token per word, plus [CLS] and [SEP].
    assert text.attention_mask.sum(dim=1).tolist() == [len(s.split()) + 2 for s in sentences]


def test_sentence_choice_is_deterministic_per_seed_and_epoch(root: Path) -> None:
    def choices(dataset: RISDataset) -> list[tuple[int, bool, int]]:
        items = [dataset[i] for i in range(len(dataset))]
        return [(item.sent_id, item.meta.flipped, item.meta.resized_w) for item in items]

    dataset = _train_dataset(root, seed=7, size=32)
    epoch0 = choices(dataset)
    assert choices(_train_dataset(root, seed=7, size=32)) == epoch0
    dataset.set_epoch(1)
    epoch1 = choices(dataset)
    assert epoch1 != epoch0
    dataset.set_epoch(0)
    assert choices(dataset) == epoch0
    assert choices(_train_dataset(root, seed=8, size=32)) != epoch0
    # Every sentence gets picked over a few epochs.
    picked = set()
    for epoch in range(30):
        dataset.set_epoch(epoch)
        picked.update(dataset[i].sent_id for i in range(len(dataset)))
    assert picked == {sid for sample in dataset.base for sid in sample.sent_ids}


def test_worker_count_does_not_change_the_data(root: Path, tokenizer: TextTokenizer) -> None:
    dataset = _train_dataset(root, seed=3)
    dataset.set_epoch(2)
    batches = {}
    for workers in (0, 2):
        loader = DataLoader(dataset, batch_size=4, num_workers=workers, collate_fn=RISCollator(tokenizer))
        batches[workers] = list(loader)
    for a, b in zip(batches[0], batches[2]):
        assert a.sentences == b.sentences and a.sent_ids == b.sent_ids
        assert torch.equal(a.images, b.images) and torch.equal(a.text.input_ids, b.text.input_ids)


def test_eval_items_map_back_to_the_ground_truth(root: Path, tokenizer: TextTokenizer) -> None:
    reader = _reader(root, "val", "eval")
    dataset = RISDataset(reader, transform=RISTransform.for_eval(TransformConfig(input_size=SIZE)), train=False)
    loader = DataLoader(dataset, batch_size=3, collate_fn=RISCollator(tokenizer))
    batch = next(iter(loader)).to("cpu")
    for index in range(len(batch)):
        sample = reader[index]
        assert batch.sentences[index] == sample.sentences[0] and batch.sent_ids[index] == sample.sent_ids[0]
        assert not batch.metas[index].flipped
        restored = restore_to_original(batch.masks[index].bool(), batch.metas[index])[0].numpy()
        gt = batch.gt_masks[index]
        assert (restored & gt).sum() / (restored | gt).sum() >= 0.85  # 96-px canvas from <= 160-px images


def test_collator_rejects_mixed_canvas_sizes(root: Path, tokenizer: TextTokenizer) -> None:
    small = RISDataset(
        _reader(root, "val", "eval"), transform=RISTransform.for_eval(TransformConfig(input_size=32)), train=False
    )
    large = RISDataset(
        _reader(root, "val", "eval"), transform=RISTransform.for_eval(TransformConfig(input_size=64)), train=False
    )
    with pytest.raises(ValueError, match="canvas"):
        RISCollator(tokenizer)([small[0], large[0]])
