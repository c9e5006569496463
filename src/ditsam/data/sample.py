"""The item every dataset reader yields, the data error type, and image loading.

Readers return :class:`RefSample` objects at the *original* image resolution and never decode
the image itself: the training / evaluation transforms call :func:`load_sample_image` (or
:func:`load_image`) so that workers only pay for pixels they actually use.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

# EXIF tag 0x0112; values 5-8 rotate by 90 degrees, so width and height swap.
_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# Characters of a value or line quoted in a message.
QUOTED_CHARACTERS = 60
#: What PIL raises for a file that is no readable image (a header over its pixel limit included).
IMAGE_READ_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class DataError(ValueError):
    """Bad or missing input data. The message names the file (and record or line) at fault.

    A ``ValueError`` subclass, so the command line reports it as a one-line error.
    """


@dataclasses.dataclass
class RefSample:
    """One referring expression for one object, at the original image resolution.

    ``sentences`` holds exactly one sentence in eval mode, and every sentence of the object in
    train mode (the training transform picks one at random). ``mask`` is the union of all parts
    of the object's annotation, shape (H, W), dtype bool. ``bbox`` is (x, y, w, h) in pixels.
    Formats without a given id (SimREC has no annotation or sentence ids) use -1 or the
    sentence's position in the split; each reader documents which.
    """

    image_path: str
    sentences: list[str]
    mask: np.ndarray
    bbox: tuple[float, float, float, float]
    ref_id: int
    ann_id: int
    image_id: int
    sent_ids: list[int]
    category_id: int
    # uint8 (H, W, 3) RGB pixels held in memory (generated scenes); None: read ``image_path``.
    pixels: np.ndarray | None = None
    # Generalized RIS (gRefCOCO): the sentence names no object; ``mask`` is then all False. A sentence
    # naming several objects has the union of their masks and ``no_target`` False.
    no_target: bool = False


def load_image(path: PathLike, *, apply_exif: bool = True) -> Image.Image:
    """Read an image file as an 8-bit RGB ``PIL.Image``.

    - EXIF orientation is applied (``apply_exif=True``) so the picture is upright as viewers
      show it. A malformed EXIF block is logged and ignored rather than failing the sample.
    - Grayscale (``1``, ``L``), palette (``P``), ``CMYK``, ``YCbCr`` ... are converted to RGB.
    - Alpha channels (``RGBA``, ``LA``, ``PA``, palette transparency) are *dropped*: the stored
      colour of every pixel is kept, as OpenCV-based pipelines (including the reference code)
      read such files. Transparent pixels therefore show whatever colour the file stores.
    - 16-bit grayscale (``I;16*``) is scaled to 8 bit over the full range (value / 257), because
      PIL's own conversion clips everything above 255 to white. 32-bit integer images (``I``)
      whose values fit in 0..255 are kept as is, others are treated as 16-bit. Float images
      (``F``) in 0..1 are scaled by 255, otherwise clipped to 0..255.

    Raises :class:`DataError` naming the path when the file is missing, and naming the path and
    the cause when it is not a readable image (corrupt, truncated, unknown format).
    """
    try:
        with Image.open(path) as opened:
            # load() here, inside the try, so truncated files fail with their path attached.
            opened.load()
            image = _oriented(opened, path) if apply_exif else opened
            image = _to_rgb(image)
            if image is opened:
                image = opened.copy()  # detach from the file handle closed by `with`
    except FileNotFoundError:
        raise DataError(f"image file not found: {os.fspath(path)}") from None
    except DataError:
        raise
    except IMAGE_READ_ERRORS as error:
        raise DataError(f"cannot read image {os.fspath(path)}: {error}") from error
    return image


def image_size(path: PathLike, *, apply_exif: bool = True) -> tuple[int, int]:
    """(width, height) of an image as :func:`load_image` returns it, reading only the header.

    No pixel is decoded, whatever the format: this is what size limits are checked with. The
    EXIF orientation of a PNG is read only from an ``eXIf`` chunk before the pixel data (where
    writers put it); a later one would need the whole image decoded, so it is not looked for here.
    """
    try:
        with Image.open(path) as opened:
            width, height = opened.size
            if apply_exif and _header_orientation(opened, path) in _TRANSPOSING_ORIENTATIONS:
                width, height = height, width
    except FileNotFoundError:
        raise DataError(f"image file not found: {os.fspath(path)}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataError(f"cannot read image {os.fspath(path)}: {error}") from error
    return width, height


def accepted_sizes(path: PathLike) -> list[tuple[int, int]]:
    """The (width, height) an annotation of the image may have, from the header: as viewers show
    the image (EXIF orientation applied), then as stored when that differs (see
    :func:`load_sample_image`). Raises :class:`DataError` naming the path for a missing or
    unreadable file."""
    try:
        shown, stored = image_size(path), image_size(path, apply_exif=False)
    except Image.DecompressionBombError as error:  # image_size leaves it to read_image, which words it for max_pixels
        raise DataError(f"cannot read image {os.fspath(path)}: {error}") from error
    return [shown] if shown == stored else [shown, stored]


def load_sample_image(sample: RefSample) -> Image.Image:
    """The image of ``sample`` as RGB, checked to have the size of its mask.

    The annotation decides the orientation: COCO-style annotations were drawn on the stored
    pixels, so when the EXIF-oriented picture does not match the mask but the stored one does,
    the stored one is returned. Any other size mismatch raises :class:`DataError`.
    """
    height, width = sample.mask.shape
    if sample.pixels is not None:
        if sample.pixels.shape != (height, width, 3):
            raise DataError(
                f"{sample.image_path}: pixels {sample.pixels.shape} do not match the mask of ref {sample.ref_id} "
                f"({height}, {width}, 3 expected)"
            )
        return Image.fromarray(sample.pixels, mode="RGB")
    image = load_image(sample.image_path)
    if image.size == (width, height):
        return image
    raw = load_image(sample.image_path, apply_exif=False)
    if raw.size == (width, height):
        log.debug("%s: EXIF orientation ignored to match the annotation", sample.image_path)
        return raw
    raise DataError(
        f"image {sample.image_path} is {image.size[0]}x{image.size[1]} (WxH) but the mask of ref "
        f"{sample.ref_id} is {width}x{height}; the annotation does not belong to this image"
    )


def _orientation(image: Image.Image, path: PathLike) -> int:
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception as error:  # PIL's EXIF parser raises many types on malformed tags
        log.warning("ignoring unreadable EXIF data in %s: %s", os.fspath(path), error)
        return 1


def _header_orientation(image: Image.Image, path: PathLike) -> int:
    """:func:`_orientation` of an image not yet decoded, without decoding it."""
    if image.format == "PNG" and "exif" not in image.info:
        # PIL's PngImageFile.getexif() decodes every pixel to look for an eXIf chunk after them:
        # a small file of a huge canvas would cost gigabytes before any size check.
        return 1
    return _orientation(image, path)


def _oriented(image: Image.Image, path: PathLike) -> Image.Image:
    if _orientation(image, path) == 1:
        return image
    try:
        return ImageOps.exif_transpose(image)
    except Exception as error:  # see _orientation
        log.warning("ignoring unreadable EXIF data in %s: %s", os.fspath(path), error)
        return image


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        return _high_depth_to_8bit(image).convert("RGB")
    if mode == "P" and "transparency" in image.info:
        # Going through RGBA avoids PIL's warning about byte transparency; alpha is dropped below.
        image = image.convert("RGBA")
    if "A" in image.getbands() or mode in ("RGBa", "La"):
        image = image.convert("RGBA")
        return Image.merge("RGB", image.split()[:3])
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise DataError(f"cannot convert image mode {mode} to RGB: {error}") from error


def _high_depth_to_8bit(image: Image.Image) -> Image.Image:
    values = np.asarray(image).astype(np.float64)
    if image.mode == "F":
        values = np.nan_to_num(values)
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
    elif image.mode == "I" and (not values.size or values.max() <= 255):
        scale = 1.0
    else:
        scale = 1.0 / 257.0  # 65535 -> 255 exactly
    return Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8))


def clip(text: str, limit: int = QUOTED_CHARACTERS) -> str:
    """``text`` cut to ``limit`` characters, an ellipsis marking the cut (values quoted in messages)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short_repr(value: object) -> str:
    """``repr(value)`` clipped, for naming a bad value in a message."""
    return clip(repr(value))
