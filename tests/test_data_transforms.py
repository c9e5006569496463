"""Transforms: geometry and its inverse, the flip's word swap, photometric augmentation, config."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ditsam.config import ConfigError
from ditsam.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RISTransform,
    TransformConfig,
    _resize_mask_numpy,
    denormalize,
    resize_mask,
    restore_to_original,
    swap_left_right,
)

QUIET = dict(jitter_p=0.0, blur_p=0.0, flip_p=0.0)


def _ellipse(height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return ((yy + 0.5 - height * 0.45) / (height * 0.3)) ** 2 + ((xx + 0.5 - width * 0.4) / (width * 0.3)) ** 2 <= 1


def _noise_image(height: int, width: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("shape", [(97, 131), (300, 17), (17, 300), (131, 97)])
@pytest.mark.parametrize("train", [False, True])
def test_forward_then_inverse_recovers_the_mask(shape: tuple[int, int], train: bool) -> None:
    height, width = shape
    mask = _ellipse(height, width)
    transform = RISTransform(config=TransformConfig(input_size=512, flip_p=0.5), train=train)
    for seed in range(3):
        out = transform(_noise_image(height, width), sentence="x", mask=mask, rng=np.random.default_rng(seed))
        assert out.meta.orig_h == height and out.meta.orig_w == width
        assert max(out.meta.resized_h, out.meta.resized_w) in transform.config.resolved_train_long_sides() + (512,)
        restored = restore_to_original(out.mask.bool(), out.meta)
        assert restored.shape == (1, height, width) and restored.dtype == torch.bool
        assert _iou(restored[0].numpy(), mask) >= 0.99


@pytest.mark.parametrize(("source", "target"), [((17, 30), (51, 90)), ((97, 131), (40, 54)), ((30, 40), (45, 31))])
def test_forward_and_inverse_resampling_agree(source: tuple[int, int], target: tuple[int, int]) -> None:
    values = (np.random.default_rng(0).random(source) > 0.5).astype(np.float32)
    forward = _resize_mask_numpy(values, target)  # PIL, used by the transform
    inverse = resize_mask(torch.from_numpy(values), target).numpy()  # torch, used by restore_to_original
    assert np.abs(forward - inverse).max() < 1e-4


def test_inverse_after_downscaling_and_for_logits() -> None:
    mask = _ellipse(97, 131)
    out = RISTransform.for_eval(TransformConfig(input_size=128))(_noise_image(97, 131), sentence="x", mask=mask)
    assert (out.meta.resized_h, out.meta.resized_w) == (95, 128)
    assert (out.meta.pad_top, out.meta.pad_left) == (16, 0)
    assert _iou(restore_to_original(out.mask.bool(), out.meta)[0].numpy(), mask) >= 0.99
    logits = (out.mask * 20 - 10).expand(2, 1, 128, 128)  # leading dims are kept
    restored = restore_to_original(logits, out.meta)
    assert restored.shape == (2, 1, 97, 131) and restored.dtype == torch.float32
    assert _iou((restored[1, 0] > 0).numpy(), mask) >= 0.99
    with pytest.raises(ValueError, match="128"):
        restore_to_original(torch.zeros(1, 64, 64), out.meta)


def test_centre_padding_is_zero_and_geometry_matches_reference() -> None:
    out = RISTransform.for_eval(TransformConfig(input_size=64))(
        _noise_image(30, 61), sentence="x", mask=np.ones((30, 61), bool)
    )
    meta = out.meta
    assert (meta.resized_h, meta.resized_w) == (31, 64)  # round(30 * 64 / 61) = 31
    assert meta.pad_top == (64 - 31) // 2 and meta.pad_left == 0
    inside = torch.zeros(64, 64, dtype=torch.bool)
    inside[meta.pad_top : meta.pad_top + 31, :] = True
    assert torch.all(out.image[:, ~inside] == 0)
    assert torch.all(out.mask[0, inside] == 1) and torch.all(out.mask[0, ~inside] == 0)


@pytest.mark.parametrize(
    ("sentence", "expected"),
    [
        ("the left one", "the right one"),
        ("Left man", "Right man"),
        ("RIGHT side", "LEFT side"),
        ("the leftmost circle", "the rightmost circle"),
        ("Rightmost", "Leftmost"),
        ("bright lefthand light", "bright righthand light"),
        ("the left-hand cup", "the right-hand cup"),
        ("bright copyright leftover", "bright copyright leftover"),
        ("second from the right, left of the car.", "second from the left, right of the car."),
        ("left right left", "right left right"),
    ],
)
def test_flip_swaps_whole_words(sentence: str, expected: str) -> None:
    assert swap_left_right(sentence) == expected
    assert swap_left_right(expected) == sentence


def test_flip_moves_image_and_mask_with_the_words() -> None:
    # A red square on the left of a grey 40x80 image; its mask is the square.
    pixels = np.full((40, 80, 3), 128, dtype=np.uint8)
    pixels[10:30, 5:25] = (255, 0, 0)
    mask = np.zeros((40, 80), dtype=bool)
    mask[10:30, 5:25] = True
    config = TransformConfig(input_size=80, train_long_sides=(80,), jitter_p=0.0, blur_p=0.0, flip_p=1.0)
    out = RISTransform.for_training(config)(
        Image.fromarray(pixels), sentence="the left red square", mask=mask, rng=np.random.default_rng(0)
    )
    assert out.meta.flipped and out.sentence == "the right red square"
    columns = out.mask[0].nonzero()[:, 1]
    assert columns.min() >= 40  # now in the right half
    red = denormalize(out.image)[0] > 0.9
    assert torch.equal(red, out.mask[0].bool())  # the pixels moved with the mask
    assert np.array_equal(restore_to_original(out.mask.bool(), out.meta)[0].numpy(), mask)


def test_eval_transform_is_deterministic_and_never_flips() -> None:
    transform = RISTransform.for_eval(TransformConfig(input_size=64))
    image, mask = _noise_image(50, 70), _ellipse(50, 70)
    first = transform(image, sentence="the left one", mask=mask)
    second = transform(image, sentence="the left one", mask=mask, rng=np.random.default_rng(5))
    assert torch.equal(first.image, second.image) and first.sentence == "the left one" and not first.meta.flipped
    assert max(first.meta.resized_h, first.meta.resized_w) == 64


def test_training_choices_follow_the_rng() -> None:
    transform = RISTransform.for_training(TransformConfig(input_size=64))
    image, mask = _noise_image(50, 70), _ellipse(50, 70)
    a = transform(image, sentence="left", mask=mask, rng=np.random.default_rng(1))
    b = transform(image, sentence="left", mask=mask, rng=np.random.default_rng(1))
    assert torch.equal(a.image, b.image) and a.meta == b.meta and a.sentence == b.sentence
    metas = {transform(image, sentence="left", rng=np.random.default_rng(s)).meta for s in range(20)}
    assert len({m.resized_w for m in metas}) > 1 and {m.flipped for m in metas} == {True, False}
    with pytest.raises(ValueError, match="rng"):
        transform(image, sentence="left")


def test_jitter_and_blur_keep_shape_and_dtype() -> None:
    config = TransformConfig(input_size=64, train_long_sides=(64,), jitter_p=1.0, blur_p=1.0, hue=0.05, flip_p=0.0)
    plain = TransformConfig(input_size=64, train_long_sides=(64,), **QUIET)
    image = _noise_image(48, 64)
    jittered = RISTransform.for_training(config)(image, sentence="x", rng=np.random.default_rng(0))
    reference = RISTransform.for_training(plain)(image, sentence="x", rng=np.random.default_rng(0))
    assert jittered.image.shape == reference.image.shape == (3, 64, 64)
    assert jittered.image.dtype == torch.float32 and jittered.mask is None
    assert not torch.allclose(jittered.image, reference.image)
    top = jittered.meta.pad_top
    assert torch.all(jittered.image[:, :top] == 0) and torch.all(jittered.image[:, top + 48 :] == 0)
    # Blur smooths: neighbouring pixels of the noise image get closer.
    roughness = lambda t: (t[:, top : top + 48, 1:] - t[:, top : top + 48, :-1]).abs().mean()  # noqa: E731
    assert roughness(jittered.image) < roughness(reference.image)


def test_normalisation_values() -> None:
    mean_colour = tuple(round(m * 255) for m in IMAGENET_MEAN)
    image = Image.new("RGB", (16, 16), mean_colour)
    out = RISTransform.for_eval(TransformConfig(input_size=16))(image, sentence="x")
    assert out.image.abs().max() < 0.01  # the mean colour maps to ~0, like the padding
    white = RISTransform.for_eval(TransformConfig(input_size=16))(
        Image.new("RGB", (16, 16), (255, 255, 255)), sentence="x"
    )
    expected = torch.tensor([(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    assert torch.allclose(white.image[:, 0, 0], expected, atol=1e-5)
    assert torch.allclose(denormalize(white.image), torch.ones(3, 16, 16), atol=1e-6)


def test_config_validation_and_defaults() -> None:
    assert TransformConfig().resolved_train_long_sides() == (320, 352, 384, 416, 448, 480, 512)
    assert TransformConfig(input_size=128).resolved_train_long_sides() == (80, 88, 96, 104, 112, 120, 128)
    config = TransformConfig.from_dict({"input_size": 256, "train_long_sides": [192, 256], "mean": [0.5, 0.5, 0.5]})
    assert config.train_long_sides == (192, 256) and config.resolved_eval_long_side() == 256
    with pytest.raises(ConfigError):
        TransformConfig.from_dict({"input_sise": 256})
    with pytest.raises(ValueError, match="long side"):
        TransformConfig(input_size=256, train_long_sides=(320,))
    with pytest.raises(ValueError, match="flip_p"):
        TransformConfig(flip_p=1.5)
    with pytest.raises(ValueError, match="mask shape"):
        RISTransform.for_eval(TransformConfig(input_size=32))(
            _noise_image(10, 12), sentence="x", mask=np.zeros((12, 10), bool)
        )
