"""load_image: every input mode becomes 8-bit RGB; EXIF orientation; missing and broken files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ditsam.data import DataError, RefSample, load_image, load_sample_image
from ditsam.data.sample import image_size


def _rgb(path) -> np.ndarray:
    image = load_image(path)
    assert image.mode == "RGB"
    return np.asarray(image)


def test_rgb_passes_through(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    np.testing.assert_array_equal(_rgb(tmp_path / "a.png"), pixels)


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_grayscale(tmp_path, suffix):
    Image.new("L", (6, 4), 77).save(tmp_path / f"g.{suffix}")
    pixels = _rgb(tmp_path / f"g.{suffix}")
    assert pixels.shape == (4, 6, 3) and np.all(np.abs(pixels.astype(int) - 77) <= 1)


def test_one_bit(tmp_path):
    image = Image.new("1", (4, 2), 0)
    image.putpixel((1, 1), 1)
    image.save(tmp_path / "b.png")
    pixels = _rgb(tmp_path / "b.png")
    assert pixels[1, 1].tolist() == [255, 255, 255] and pixels[0, 0].tolist() == [0, 0, 0]


def test_rgba_drops_alpha(tmp_path):
    Image.new("RGBA", (3, 3), (10, 200, 30, 0)).save(tmp_path / "t.png")
    assert _rgb(tmp_path / "t.png")[0, 0].tolist() == [10, 200, 30]  # colour kept, alpha dropped


def test_gray_alpha(tmp_path):
    Image.new("LA", (3, 3), (90, 10)).save(tmp_path / "la.png")
    assert _rgb(tmp_path / "la.png")[2, 2].tolist() == [90, 90, 90]


def test_sixteen_bit_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    with Image.open(tmp_path / "d.png") as stored:
        assert stored.mode.startswith("I")
    assert _rgb(tmp_path / "d.png")[0, :, 0].tolist() == [0, 1, 128, 255]


def test_thirty_two_bit_int_and_float(tmp_path):
    Image.fromarray(np.array([[0, 100, 255]], dtype=np.int32), mode="I").save(tmp_path / "i.tif")
    assert _rgb(tmp_path / "i.tif")[0, :, 1].tolist() == [0, 100, 255]
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F").save(tmp_path / "f.tif")
    assert _rgb(tmp_path / "f.tif")[0, :, 2].tolist() == [0, 128, 255]


@pytest.mark.parametrize("suffix", ["jpg", "tif"])
def test_cmyk(tmp_path, suffix):
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / f"c.{suffix}")  # pure red
    red, green, blue = _rgb(tmp_path / f"c.{suffix}")[2, 2].astype(int)
    assert red > 230 and green < 25 and blue < 25


def test_palette(tmp_path):
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 0, 128, 255] + [0] * 762)
    image.save(tmp_path / "p.png")
    assert _rgb(tmp_path / "p.png")[0, 0].tolist() == [0, 128, 255]


def test_palette_with_transparency(tmp_path):
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 40, 50, 60] + [0] * 762)
    image.save(tmp_path / "pt.png", transparency=1)
    assert _rgb(tmp_path / "pt.png")[3, 3].tolist() == [40, 50, 60]


def _exif_rotated(path, orientation: int = 6) -> np.ndarray:
    """A 6x2 (WxH) stored picture with a white pixel at stored (x=0, y=0), tagged `orientation`."""
    pixels = np.zeros((2, 6, 3), dtype=np.uint8)
    pixels[0, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif.tobytes())
    return pixels


def test_exif_orientation_applied(tmp_path):
    path = tmp_path / "r.png"
    _exif_rotated(path)
    pixels = _rgb(path)
    # orientation 6 = stored picture rotated 90 degrees clockwise for display
    assert pixels.shape == (6, 2, 3)
    assert pixels[0, 1].tolist() == [255, 255, 255] and pixels.sum() == 3 * 255
    assert image_size(path) == (2, 6) and image_size(path, apply_exif=False) == (6, 2)
    assert load_image(path, apply_exif=False).size == (6, 2)


def _sample(path, height: int, width: int) -> RefSample:
    return RefSample(
        image_path=str(path),
        sentences=["x"],
        mask=np.zeros((height, width), bool),
        bbox=(0, 0, 0, 0),
        ref_id=1,
        ann_id=1,
        image_id=1,
        sent_ids=[1],
        category_id=0,
    )


def test_sample_image_follows_the_annotation_size(tmp_path):
    path = tmp_path / "r.png"
    _exif_rotated(path)
    assert load_sample_image(_sample(path, 6, 2)).size == (2, 6)  # annotated upright
    assert load_sample_image(_sample(path, 2, 6)).size == (6, 2)  # annotated on stored pixels
    with pytest.raises(DataError, match=r"r\.png is 2x6 \(WxH\) but the mask of ref 1 is 5x5"):
        load_sample_image(_sample(path, 5, 5))


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(DataError, match=r"image file not found: .*nothing\.jpg"):
        load_image(tmp_path / "nothing.jpg")
    with pytest.raises(DataError, match=r"image file not found: .*nothing\.jpg"):
        image_size(tmp_path / "nothing.jpg")


@pytest.mark.parametrize("suffix", ["jpg", "png"])
def test_truncated_file_names_path_and_cause(tmp_path, suffix):
    pixels = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    whole = tmp_path / f"whole.{suffix}"
    Image.fromarray(pixels).save(whole)
    cut = tmp_path / f"cut.{suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(DataError, match=rf"cannot read image .*cut\.{suffix}: .*trunc"):
        load_image(cut)


def test_not_an_image(tmp_path):
    (tmp_path / "notes.jpg").write_text("hello")
    with pytest.raises(DataError, match=r"cannot read image .*notes\.jpg: cannot identify image file"):
        load_image(tmp_path / "notes.jpg")


def test_importing_the_data_package_is_light():
    import os
    import subprocess
    import sys
    from pathlib import Path

    import ditsam

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(ditsam.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    code = "import sys, ditsam.data; print(sorted(m for m in ('torch', 'pycocotools', 'ditsam.data.refer') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert result.stdout.strip() == "[]"
