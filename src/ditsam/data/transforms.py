"""Image / mask / sentence transforms onto the model's square input canvas, and their inverse.

The layout follows the reference code: the long side is resized (a random length from a list
in training, a fixed one at evaluation), the image is normalised with ImageNet mean / std and
centre-padded with zeros to S x S (zero = the mean colour after normalisation). Training adds
colour jitter, Gaussian blur and a horizontal flip that swaps "left" and "right" as whole words.

Randomness comes from a :class:`numpy.random.Generator` passed by the caller (one per sample),
so results do not depend on global RNG state or on which data-loader worker runs the sample.

Masks are resized bilinearly (half-pixel centres, antialiased when shrinking) and thresholded,
in both directions, so that a forward transform followed by :func:`restore_to_original`
reproduces a mask: forward with PIL's float resampling, inverse with :func:`resize_mask` in
torch (on whatever device the predictions are), which compute the same values.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageFilter

from ditsam.config import ConfigBase

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclasses.dataclass
class TransformConfig(ConfigBase):
    """How samples are mapped onto the model input."""

    # Side S of the square model input in pixels (the reference code uses 512).
    input_size: int = 512
    # Long-side lengths drawn uniformly per training sample, each <= input_size. Empty: seven
    # lengths from 0.625 S to S in steps of S / 16 (320, 352, ..., 512 at S = 512, the reference list).
    train_long_sides: tuple[int, ...] = ()
    # Long side at evaluation; None: input_size.
    eval_long_side: int | None = None
    # Probability that a training sample gets colour jitter (the reference code: 0.8).
    jitter_p: float = 0.8
    # Jitter strengths: factors are drawn from [1 - x, 1 + x] and applied in random order.
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    # Largest hue shift as a fraction of the colour wheel (0..0.5). The reference code has no hue
    # jitter; RefShapes' colour names lie >= 0.15 apart, so values above ~0.05 corrupt the labels.
    hue: float = 0.0
    # Probability of a Gaussian blur in training (the reference: 0.5 when its AUG_BLUR is on).
    blur_p: float = 0.5
    # Range of the blur's standard deviation in pixels of the resized image.
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    # Probability of a horizontal flip in training; flipping swaps left/right words in the sentence.
    flip_p: float = 0.5
    # Per-channel normalisation of 0..1 RGB values.
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # A bilinearly resized mask is foreground where it reaches this value.
    mask_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.input_size < 1:
            raise ValueError(f"input_size must be positive, got {self.input_size}")
        for side in (*self.resolved_train_long_sides(), self.resolved_eval_long_side()):
            if not 1 <= side <= self.input_size:
                raise ValueError(f"long side {side} must lie in 1..input_size ({self.input_size})")
        for name in ("jitter_p", "blur_p", "flip_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability, got {getattr(self, name)}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"hue must lie in 0..0.5, got {self.hue}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need three values each, std positive; got {self.mean}, {self.std}")

    def resolved_train_long_sides(self) -> tuple[int, ...]:
        if self.train_long_sides:
            return tuple(self.train_long_sides)
        step = self.input_size / 16
        return tuple(max(1, round(self.input_size - step * i)) for i in range(6, -1, -1))

    def resolved_eval_long_side(self) -> int:
        return self.eval_long_side if self.eval_long_side is not None else self.input_size


@dataclasses.dataclass(frozen=True)
class TransformMeta:
    """Where a sample's pixels went: original (H, W), resized (h, w), the pad offsets on the
    S x S canvas, and whether it was flipped horizontally."""

    orig_h: int
    orig_w: int
    resized_h: int
    resized_w: int
    pad_top: int
    pad_left: int
    flipped: bool
    input_size: int

    def to_canvas(self, xy: np.ndarray) -> np.ndarray:
        """Map (..., 2) (x, y) points from original image pixels to the model's S x S canvas.

        Coordinates are continuous: pixel column ``i`` spans ``[i, i + 1)``, so a box's right edge is
        ``x + w`` (COCO) and the image spans ``[0, W] x [0, H]``. The transform scales by
        ``resized / original`` per axis and shifts by the padding; a horizontal flip (never done at
        inference) mirrors x. Returns float64 (..., 2).
        """
        xy = np.asarray(xy, dtype=np.float64)
        if xy.shape[-1:] != (2,):
            raise ValueError(f"expected (..., 2) x, y coordinates, got shape {xy.shape}")
        x = xy[..., 0] * (self.resized_w / self.orig_w)
        y = xy[..., 1] * (self.resized_h / self.orig_h)
        if self.flipped:
            x = self.resized_w - x
        return np.stack([x + self.pad_left, y + self.pad_top], axis=-1)

    def box_to_canvas(self, box: np.ndarray) -> np.ndarray:
        """Map (..., 4) boxes (x1, y1, x2, y2) from original pixels to the canvas (see :meth:`to_canvas`);
        x1 <= x2 still holds after a flip. Returns float64 (..., 4)."""
        box = np.asarray(box, dtype=np.float64)
        if box.shape[-1:] != (4,):
            raise ValueError(f"expected (..., 4) boxes as x1, y1, x2, y2, got shape {box.shape}")
        corners = self.to_canvas(box.reshape(*box.shape[:-1], 2, 2))
        low, high = corners.min(axis=-2), corners.max(axis=-2)
        return np.concatenate([low, high], axis=-1)


@dataclasses.dataclass
class TransformOutput:
    """image: (3, S, S) float32, normalised, zero padding. mask: (1, S, S) float32 in {0, 1}, or
    None when no mask was given. sentence: after the flip's word swap."""

    image: torch.Tensor
    mask: torch.Tensor | None
    sentence: str
    meta: TransformMeta


# Horizontal words and their mirror images; matched as whole words only ("bright" stays).
_MIRROR_WORDS = {
    "left": "right",
    "right": "left",
    "leftmost": "rightmost",
    "rightmost": "leftmost",
    "lefthand": "righthand",
    "righthand": "lefthand",
    "leftward": "rightward",
    "rightward": "leftward",
    "leftwards": "rightwards",
    "rightwards": "leftwards",
}
_MIRROR_PATTERN = re.compile(r"\b(" + "|".join(sorted(_MIRROR_WORDS, key=len, reverse=True)) + r")\b", re.IGNORECASE)


def _match_case(template: str, word: str) -> str:
    if template.isupper() and len(template) > 1:
        return word.upper()
    if template[0].isupper():
        return word[0].upper() + word[1:]
    return word


def swap_left_right(sentence: str) -> str:
    """Mirror a sentence: "left" <-> "right", "leftmost" <-> "rightmost", ... as whole words,
    keeping the case ("Left" -> "Right", "LEFT" -> "RIGHT"); "bright" is left alone."""
    return _MIRROR_PATTERN.sub(lambda m: _match_case(m.group(0), _MIRROR_WORDS[m.group(0).lower()]), sentence)


def resize_mask(values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (..., h, w) float values to (..., *size); antialiased when shrinking.

    Used to map masks and logits back to the original resolution.
    """
    if tuple(values.shape[-2:]) == tuple(size):
        return values
    lead = values.shape[:-2]
    flat = values.reshape(-1, 1, *values.shape[-2:])
    shrinking = size[0] < values.shape[-2] or size[1] < values.shape[-1]
    out = F.interpolate(flat, size=size, mode="bilinear", align_corners=False, antialias=shrinking)
    return out.reshape(*lead, *size)


def _resize_mask_numpy(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a (H, W) mask as 0/1 float32 values to ``size`` = (h, w).

    PIL's float resampling gives the values of :func:`resize_mask` (to ~1e-6) without going
    through torch's thread pool.
    """
    values = np.ascontiguousarray(mask, dtype=np.float32)
    if values.shape == tuple(size):
        return values
    resized = Image.fromarray(values).resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def restore_to_original(values: torch.Tensor, meta: TransformMeta) -> torch.Tensor:
    """Map (..., S, S) canvas values back to the original image: (..., H, W).

    Crops the unpadded region, undoes the flip and resizes bilinearly. Float input (logits,
    probabilities) comes back as float; bool input (a mask) is resized as 0/1 values and
    thresholded at 0.5, returning bool.
    """
    size = meta.input_size
    if tuple(values.shape[-2:]) != (size, size):
        raise ValueError(f"expected (..., {size}, {size}) values, got shape {tuple(values.shape)}")
    crop = values[..., meta.pad_top : meta.pad_top + meta.resized_h, meta.pad_left : meta.pad_left + meta.resized_w]
    if meta.flipped:
        crop = crop.flip(-1)
    if values.dtype == torch.bool:
        return resize_mask(crop.float(), (meta.orig_h, meta.orig_w)) >= 0.5
    return resize_mask(crop if crop.is_floating_point() else crop.float(), (meta.orig_h, meta.orig_w))


def denormalize(image: torch.Tensor, *, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """(3, H, W) normalised -> (3, H, W) RGB in 0..1 (for display)."""
    m = torch.tensor(mean, dtype=image.dtype, device=image.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return (image * s + m).clamp(0, 1)


class RISTransform:
    """PIL RGB image (+ bool (H, W) mask, + sentence) -> :class:`TransformOutput`.

    Build with :meth:`for_training` or :meth:`for_eval`. Training draws every random choice
    from the ``rng`` given per call.
    """

    def __init__(self, *, config: TransformConfig, train: bool) -> None:
        self.config = config
        self.train = train
        self._train_sides = config.resolved_train_long_sides()
        # Normalisation applied to 0..255 values: (x / 255 - mean) / std = (x - 255 mean) / (255 std).
        self._mean_255 = np.asarray(config.mean, dtype=np.float32).reshape(3, 1, 1) * 255
        self._std_255 = np.asarray(config.std, dtype=np.float32).reshape(3, 1, 1) * 255

    @classmethod
    def for_training(cls, config: TransformConfig) -> "RISTransform":
        return cls(config=config, train=True)

    @classmethod
    def for_eval(cls, config: TransformConfig) -> "RISTransform":
        return cls(config=config, train=False)

    def __call__(
        self,
        image: Image.Image,
        *,
        sentence: str,
        mask: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
    ) -> TransformOutput:
        if self.train and rng is None:
            raise ValueError("a training transform needs rng= (a numpy Generator, one per sample)")
        if image.mode != "RGB":
            raise ValueError(f"expected an RGB image, got mode {image.mode}")
        width, height = image.size
        if mask is not None and mask.shape != (height, width):
            raise ValueError(f"mask shape {mask.shape} does not match the image's (H, W) = ({height}, {width})")
        cfg = self.config
        long_side = int(rng.choice(self._train_sides)) if self.train else cfg.resolved_eval_long_side()
        scale = long_side / max(height, width)
        new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
        if (new_w, new_h) != (width, height):
            image = image.resize((new_w, new_h), Image.BILINEAR)
        flipped = False
        if self.train:
            image = self._photometric(image, rng)
            flipped = bool(rng.random() < cfg.flip_p)
            if flipped:
                image = image.transpose(Image.FLIP_LEFT_RIGHT)
                sentence = swap_left_right(sentence)

        size = cfg.input_size
        top, left = (size - new_h) // 2, (size - new_w) // 2
        # numpy, single-threaded and in place: torch's intra-op threads only contend on these
        # small per-sample operations (tens of times slower on a busy 2-core machine).
        canvas = np.zeros((3, size, size), dtype=np.float32)
        region = canvas[:, top : top + new_h, left : left + new_w]
        np.subtract(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1), self._mean_255, out=region)
        np.divide(region, self._std_255, out=region)

        mask_canvas = None
        if mask is not None:
            resized = _resize_mask_numpy(mask, (new_h, new_w)) >= cfg.mask_threshold
            mask_canvas = np.zeros((1, size, size), dtype=np.float32)
            mask_canvas[0, top : top + new_h, left : left + new_w] = resized[:, ::-1] if flipped else resized

        meta = TransformMeta(height, width, new_h, new_w, top, left, flipped, size)
        masks = torch.from_numpy(mask_canvas) if mask_canvas is not None else None
        return TransformOutput(image=torch.from_numpy(canvas), mask=masks, sentence=sentence, meta=meta)

    def _photometric(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        cfg = self.config
        if rng.random() < cfg.jitter_p:
            operations = ["brightness", "contrast", "saturation"] + (["hue"] if cfg.hue > 0 else [])
            for index in rng.permutation(len(operations)):
                image = self._jitter(image, operations[int(index)], rng)
        if rng.random() < cfg.blur_p:
            image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(*cfg.blur_sigma))))
        return image

    def _jitter(self, image: Image.Image, operation: str, rng: np.random.Generator) -> Image.Image:
        cfg = self.config
        if operation == "hue":
            shift = int(round(rng.uniform(-cfg.hue, cfg.hue) * 255))
            h, s, v = image.convert("HSV").split()
            h = Image.fromarray(((np.asarray(h, dtype=np.int16) + shift) % 256).astype(np.uint8))  # hue wraps around
            return Image.merge("HSV", (h, s, v)).convert("RGB")
        strength = getattr(cfg, operation)
        factor = float(rng.uniform(max(0.0, 1 - strength), 1 + strength))
        # PIL's enhancers blend with black / the mean grey / the grey image, as the reference does.
        enhancer = {
            "brightness": ImageEnhance.Brightness,
            "contrast": ImageEnhance.Contrast,
            "saturation": ImageEnhance.Color,
        }
        return enhancer[operation](image).enhance(factor)
