"""Segmenter: inputs of every kind at their original size, batching, prompt mapping, clear errors."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ditsam.api import SegmentationResult, Segmenter, read_image
from ditsam.data.sample import DataError
from ditsam.data.transforms import RISTransform, TransformConfig, TransformMeta
from ditsam.model.checkpoints import CheckpointError
from ditsam.model.checkpoints.reference import to_reference_state_dict
from ditsam.model.dit import DITSam
from helpers import tiny_config


@pytest.fixture(scope="module")
def seg(checkpoint: Path) -> Segmenter:
    return Segmenter.from_pretrained(checkpoint, device="cpu")


def _rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _check(result: SegmentationResult, shape: tuple[int, int], threshold: float = 0.35) -> None:
    assert isinstance(result, SegmentationResult)
    assert result.mask.shape == shape and result.mask.dtype == np.bool_
    assert result.logits.shape == shape and result.logits.dtype == np.float32
    assert isinstance(result.score, float)
    np.testing.assert_array_equal(result.mask, 1 / (1 + np.exp(-result.logits.astype(np.float64))) > threshold)


# ---------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------
def test_path_pil_and_numpy_give_the_same_prediction_at_original_size(seg: Segmenter, tmp_path: Path) -> None:
    pixels = _rgb(37, 53)
    path = tmp_path / "odd.png"
    Image.fromarray(pixels).save(path)
    results = [
        seg.predict(path, "the red circle"),
        seg.predict(str(path), "the red circle"),
        seg.predict(Image.open(path), "the red circle"),
        seg.predict(pixels, "the red circle"),
        seg.predict(pixels.astype(np.float32) / 255.0, "the red circle"),
    ]
    for result in results:
        _check(result, (37, 53))
        np.testing.assert_allclose(result.logits, results[0].logits, atol=1e-5)


@pytest.mark.parametrize(
    "array",
    [
        np.random.default_rng(1).integers(0, 256, size=(41, 29), dtype=np.uint8),  # gray
        np.random.default_rng(2).integers(0, 256, size=(23, 61, 1), dtype=np.uint8),  # gray, channel axis
        np.random.default_rng(3).integers(0, 256, size=(33, 47, 4), dtype=np.uint8),  # RGBA
        np.random.default_rng(4).random((19, 71)),  # float gray 0..1
        np.random.default_rng(5).random((30, 20, 3)).astype(np.float32),  # float RGB 0..1
        np.random.default_rng(6).random((17, 13)) > 0.5,  # bool
    ],
    ids=["gray", "gray1", "rgba", "float-gray", "float-rgb", "bool"],
)
def test_numpy_images_of_odd_sizes(seg: Segmenter, array: np.ndarray) -> None:
    _check(seg.predict(array, "a small square"), array.shape[:2])


def test_rgba_drops_alpha_and_gray_equals_replicated_rgb(seg: Segmenter) -> None:
    rgb = _rgb(25, 35, seed=7)
    rgba = np.concatenate([rgb, np.zeros((25, 35, 1), np.uint8)], axis=-1)
    np.testing.assert_allclose(seg.predict(rgba, "the star").logits, seg.predict(rgb, "the star").logits, atol=1e-6)
    gray = rgb[..., 0]
    np.testing.assert_allclose(
        seg.predict(gray, "the star").logits,
        seg.predict(np.repeat(gray[..., None], 3, -1), "the star").logits,
        atol=1e-6,
    )


def test_image_modes_from_pil_are_converted(seg: Segmenter) -> None:
    for mode in ("L", "P", "RGBA", "CMYK", "I;16"):
        image = Image.fromarray(_rgb(21, 34)).convert(mode) if mode != "I;16" else Image.new("I;16", (34, 21), 30000)
        _check(seg.predict(image, "the blue circle"), (21, 34))


# ---------------------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------------------
def test_batch_of_sentences_equals_one_by_one(checkpoint: Path) -> None:
    seg = Segmenter.from_pretrained(checkpoint, device="cpu", batch_size=2)  # 3 sentences -> 2 forwards
    image = _rgb(45, 31, seed=3)
    sentences = ["the red circle", "the small blue square on the left", "a star"]
    batched = seg.predict(image, sentences)
    assert isinstance(batched, list) and len(batched) == 3
    singles = [seg.predict(image, s) for s in sentences]
    for b, s in zip(batched, singles):
        np.testing.assert_allclose(b.logits, s.logits, atol=1e-5)
        assert b.score == pytest.approx(s.score, abs=1e-5)
    # The sentences really differ (so the comparison above checks the order).
    assert np.abs(batched[0].logits - batched[2].logits).max() > 1e-4


def test_one_image_is_preprocessed_once_for_many_sentences(seg: Segmenter, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = seg.transform.__class__.__call__

    def counting(self, image, **kwargs):
        calls.append(image.size)
        return original(self, image, **kwargs)

    monkeypatch.setattr(seg.transform.__class__, "__call__", counting)
    seg.predict(_rgb(20, 30), ["a", "the red circle", "a star", "left", "right", "the square", "below", "above", "on"])
    assert len(calls) == 1


def test_lists_of_images_and_pairs(seg: Segmenter) -> None:
    images = [_rgb(31, 17, seed=1), _rgb(12, 50, seed=2), _rgb(31, 17, seed=1)]
    one_sentence = seg.predict(images, "the green triangle")
    assert [r.mask.shape for r in one_sentence] == [(31, 17), (12, 50), (31, 17)]
    for image, result in zip(images, one_sentence):
        np.testing.assert_allclose(result.logits, seg.predict(image, "the green triangle").logits, atol=1e-5)
    pairs = seg.predict(images[:2], ["the green triangle", "a star"])
    np.testing.assert_allclose(pairs[1].logits, seg.predict(images[1], "a star").logits, atol=1e-5)
    with pytest.raises(ValueError, match="2 images but 3 sentences"):
        seg.predict(images[:2], ["a", "b", "c"])
    with pytest.raises(ValueError, match="empty list"):
        seg.predict([], "a")


# ---------------------------------------------------------------------------------------------------
# Points and boxes
# ---------------------------------------------------------------------------------------------------
def test_box_in_original_coordinates_lands_on_the_transformed_pixels() -> None:
    """A white rectangle in a black image: after the eval transform, its canvas extent is the mapped box."""
    width, height = 100, 50
    box = (50, 25, 75, 50)  # x1, y1, x2, y2: pixel columns 50..74, rows 25..49
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[box[1] : box[3], box[0] : box[2]] = 255
    out = RISTransform.for_eval(TransformConfig(input_size=64))(Image.fromarray(pixels), sentence="x")
    mapped = out.meta.box_to_canvas(np.asarray(box, float))
    # 100x50 -> 64x32 (scale 0.64), padded 16 rows on top: x 50..75 -> 32..48, y 25..50 -> 32..48.
    np.testing.assert_allclose(mapped, [32, 32, 48, 48])
    bright = out.image[0].numpy() > out.image[0].numpy().max() / 2
    ys, xs = np.nonzero(bright)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (32, 32, 48, 48)
    # Points: the image corners go to the corners of the unpadded region.
    corners = out.meta.to_canvas(np.array([[0, 0], [width, height]]))
    np.testing.assert_allclose(corners, [[0, 16], [64, 48]])


def test_mapping_handles_a_flip() -> None:
    meta = TransformMeta(
        orig_h=10, orig_w=20, resized_h=32, resized_w=64, pad_top=16, pad_left=0, flipped=True, input_size=64
    )
    np.testing.assert_allclose(meta.to_canvas(np.array([[5.0, 5.0]])), [[64 - 16, 16 + 16]])
    np.testing.assert_allclose(meta.box_to_canvas(np.array([0.0, 0.0, 5.0, 10.0])), [48, 16, 64, 48])


def test_prompts_reach_the_model_on_the_canvas(seg: Segmenter, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}
    forward = seg.model.forward

    def spy(images, text=None, points=None, boxes=None):
        seen.update(points=points, boxes=boxes, batch=images.shape[0])
        return forward(images, text=text, points=points, boxes=boxes)

    monkeypatch.setattr(seg.model, "forward", spy)
    image = _rgb(50, 100)  # -> 64x32 on the 64 canvas, 16 rows of padding on top
    result = seg.predict(image, ["a", "b"], points=([[50, 25], [0, 50]], [1, 0]), boxes=(50, 25, 75, 50))
    assert len(result) == 2 and seen["batch"] == 2
    coords, labels = seen["points"]
    np.testing.assert_allclose(coords.numpy(), [[[32, 32], [0, 48]]] * 2)
    np.testing.assert_array_equal(labels.numpy(), [[1, 0]] * 2)
    np.testing.assert_allclose(seen["boxes"].numpy(), [[32, 32, 48, 48]] * 2)
    # Per-image prompts for a list of images; different layouts are batched separately.
    out = seg.predict([image, image], "a", boxes=[None, (0, 0, 10, 10)])
    assert len(out) == 2


def test_bad_prompts(seg: Segmenter) -> None:
    image = _rgb(50, 100)
    with pytest.raises(ValueError, match="outside the 100x50 image"):
        seg.predict(image, "a", points=([[120, 10]], [1]))
    with pytest.raises(ValueError, match="x2 < x1"):
        seg.predict(image, "a", boxes=(30, 0, 10, 10))
    with pytest.raises(ValueError, match="4 numbers"):
        seg.predict(image, "a", boxes=(1, 2, 3))
    with pytest.raises(ValueError, match="labels must be 1"):
        seg.predict(image, "a", points=([[1, 1]], [2]))
    with pytest.raises(ValueError, match="list of 2 entries"):
        seg.predict([image, image], "a", boxes=(0, 0, 5, 5, 6))


# ---------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------
def test_unreadable_and_non_image_files_name_the_path(seg: Segmenter, tmp_path: Path) -> None:
    text_file = tmp_path / "notes.jpg"
    text_file.write_text("not an image")
    with pytest.raises(DataError, match="notes.jpg"):
        seg.predict(text_file, "a")
    truncated = tmp_path / "cut.png"
    Image.fromarray(_rgb(40, 40)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(DataError, match="cut.png"):
        seg.predict(truncated, "a")
    with pytest.raises(DataError, match="missing.png"):
        seg.predict(tmp_path / "missing.png", "a")
    with pytest.raises(DataError, match="folder"):
        seg.predict(tmp_path, "a")
    with pytest.raises(TypeError, match="file path, a PIL image or a numpy array"):
        seg.predict(12, "a")


def test_bad_arrays(seg: Segmenter) -> None:
    with pytest.raises(ValueError, match="values in 0..1"):
        seg.predict(np.full((10, 10, 3), 2.0), "a")
    with pytest.raises(ValueError, match=r"\(H, W\), \(H, W, 1\)"):
        seg.predict(np.zeros((2, 10, 10, 3), np.uint8), "a")
    with pytest.raises(ValueError, match="dtype int32"):
        seg.predict(np.zeros((10, 10), np.int32), "a")


def test_images_over_max_pixels_fail_before_decoding(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seg = Segmenter.from_pretrained(checkpoint, device="cpu", max_pixels=1000)
    path = tmp_path / "big.png"
    Image.fromarray(_rgb(40, 30)).save(path)  # 1200 pixels

    def no_decoding(*args, **kwargs):
        raise AssertionError("the image was decoded before its size was checked")

    monkeypatch.setattr("ditsam.data.sample.load_image", no_decoding)
    with pytest.raises(DataError, match=r"big.png is 30x40 .*max_pixels=1000"):
        seg.predict(path, "a")
    with pytest.raises(DataError, match="max_pixels=1000"):
        seg.predict(np.zeros((40, 30), np.uint8), "a")
    with pytest.raises(DataError, match="max_pixels=1000"):
        seg.predict(Image.new("RGB", (30, 40)), "a")
    _check(seg.predict(np.zeros((20, 50), np.uint8), "a"), (20, 50))  # 1000 pixels: allowed


class _Decoded(BaseException):
    """Raised by the patched decoders; a BaseException, so no ``except Exception`` on the way hides it."""


def _forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every PIL decoder (ImageFile.load and each plugin's own load) raise :class:`_Decoded`."""
    from PIL import ImageFile

    def decoded(self, *args, **kwargs):
        raise _Decoded(f"{self.format} pixels were decoded before the size check")

    Image.init()
    classes = {ImageFile.ImageFile, *(factory for factory, _ in Image.OPEN.values() if isinstance(factory, type))}
    for cls in classes:
        if "load" in vars(cls):
            monkeypatch.setattr(cls, "load", decoded)


@pytest.mark.parametrize("fmt", ["PNG", "PNG+EXIF", "JPEG", "WEBP", "TIFF", "GIF", "BMP"])
def test_size_guard_reads_only_the_header_for_every_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    """PIL's PngImageFile.getexif() decodes every pixel: a small file of a huge canvas cost gigabytes before
    the max_pixels check. The guard must refuse from the header alone, whatever the format."""
    from ditsam.data.sample import image_size
    from ditsam.web.handler import predict_handler

    path = tmp_path / f"big.{fmt.split('+')[0].lower()}"
    picture = Image.fromarray(_rgb(200, 300))
    if fmt == "PNG+EXIF":
        exif = Image.Exif()
        exif[0x0112] = 6  # rotated: shown as 200 x 300
        picture.save(path, exif=exif.tobytes())
    else:
        picture.save(path, format=fmt.split("+")[0])
    _forbid_decoding(monkeypatch)
    assert sorted(image_size(path)) == [200, 300]
    with pytest.raises(DataError, match=r"big\.\w+ is \d+x\d+ = 0\.1 megapixels, over the limit .*max_pixels=1000"):
        read_image(path, max_pixels=1000)

    class Tiny:  # the handler only needs these of a Segmenter before it decodes
        max_pixels = 1000

    out = predict_handler(Tiny(), image={"path": str(path), "orig_name": path.name}, sentence="the red one")
    assert not out.ok and "more than this demo accepts" in out.status


def test_resolve_device() -> None:
    from ditsam.api import resolve_device

    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(None).type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device 'cuda:1' asked for, but .*(no CUDA|CUDA support)"):
            resolve_device("cuda:1")


def test_empty_sentences(seg: Segmenter) -> None:
    image = _rgb(10, 10)
    with pytest.raises(ValueError, match="sentence 0 is empty"):
        seg.predict(image, "")
    with pytest.raises(ValueError, match="sentence 1 is empty"):
        seg.predict(image, ["a", "   "])
    with pytest.raises(ValueError, match="empty list"):
        seg.predict(image, [])


def test_long_sentence_is_truncated_with_one_warning(checkpoint: Path, caplog: pytest.LogCaptureFixture) -> None:
    seg = Segmenter.from_pretrained(checkpoint, device="cpu")
    long = " ".join(["the red circle left of the blue star"] * 4)
    with caplog.at_level(logging.DEBUG, logger="ditsam"):
        seg.predict(_rgb(10, 10), long)
        seg.predict(_rgb(10, 10), [long, long])
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "truncated" in r.getMessage()]
    assert len(warnings) == 1


def test_checkpoint_errors(tmp_path: Path, tiny_bert_dir: Path, checkpoint: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="without config"):
        Segmenter.from_pretrained(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no ditsam checkpoint folder"):
        Segmenter.from_pretrained(tmp_path / "nowhere")
    # A single state-dict file needs config=; with it, it loads (every weight present).
    model = DITSam.from_pretrained(checkpoint)
    torch.save(model.state_dict(), tmp_path / "flat.pth")
    with pytest.raises(CheckpointError, match="config="):
        Segmenter.from_pretrained(tmp_path / "flat.pth")
    seg = Segmenter.from_pretrained(
        tmp_path / "flat.pth", config=tiny_config(tiny_bert_dir, injection_options=dict(zero_init=False)), device="cpu"
    )
    image = _rgb(15, 25)
    np.testing.assert_allclose(
        seg.predict(image, "a star").logits,
        Segmenter.from_pretrained(checkpoint, device="cpu").predict(image, "a star").logits,
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="threshold"):
        Segmenter(model, threshold=1.5)
    with pytest.raises(ValueError, match="unknown dtype"):
        Segmenter(model, dtype="int4")  # int8 is the ONNX Runtime path (tests/test_int8.py)


def test_reference_and_sam_checkpoint_files(tmp_path: Path, tiny_bert_dir: Path) -> None:
    """An authors'-code checkpoint file loads with config=; a SAM-only one (no text weights) is refused."""
    config = tiny_config(tiny_bert_dir, injection_options=dict(zero_init=False))
    model = DITSam(config).eval()
    torch.save({"epoch": 3, "state_dict": to_reference_state_dict(model.state_dict(), config)}, tmp_path / "dit.pth")
    image = _rgb(22, 18)
    np.testing.assert_allclose(
        Segmenter.from_pretrained(tmp_path / "dit.pth", config=config, device="cpu").predict(image, "a star").logits,
        Segmenter(model, device="cpu").predict(image, "a star").logits,
        atol=1e-6,
    )
    sam = {
        k: v
        for k, v in model.state_dict().items()
        if k.startswith(("image_encoder.", "prompt_encoder.", "mask_decoder.")) and ".injection." not in k
    }
    torch.save(sam, tmp_path / "sam.pth")
    with pytest.raises(CheckpointError, match="does not hold every weight"):
        Segmenter.from_pretrained(tmp_path / "sam.pth", config=config)


def test_bf16_and_threshold(checkpoint: Path) -> None:
    image = _rgb(27, 39, seed=9)
    fp32 = Segmenter.from_pretrained(checkpoint, device="cpu").predict(image, "the red circle")
    bf16 = Segmenter.from_pretrained(checkpoint, device="cpu", dtype=torch.bfloat16).predict(image, "the red circle")
    _check(bf16, (27, 39))
    assert np.isfinite(bf16.logits).all()
    assert np.abs(bf16.logits - fp32.logits).max() < 0.25  # bf16 has ~3 significant digits
    strict = Segmenter.from_pretrained(checkpoint, device="cpu", threshold=0.9)
    _check(strict.predict(image, "the red circle"), (27, 39), threshold=0.9)
    _check(strict.predict(image, "the red circle", threshold=0.1), (27, 39), threshold=0.1)


def test_read_image_and_lazy_export() -> None:
    assert read_image(np.zeros((5, 7), np.uint8)).size == (7, 5)
    code = (
        "import sys, ditsam, ditsam.api; assert 'torch' not in sys.modules, 'torch imported'; "
        "from ditsam import Segmenter; assert Segmenter is ditsam.api.Segmenter"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
