"""Reading the images users give (paths, PIL images, numpy arrays) as 8-bit RGB, with the pixel guard:
the size is checked before any pixel is decoded, so an oversized upload costs nothing. Shared by
:class:`~ditsam.api.Segmenter` (``predict``), the web demo and the command line.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Union

import numpy as np

from ditsam.data.sample import DataError

# File name suffixes taken as images when a folder is listed (predict --images, serve --examples).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

if TYPE_CHECKING:
    from PIL import Image

#: Default refusal limit: 40 megapixels (PIL itself refuses ~179).
DEFAULT_MAX_PIXELS = 40_000_000
#: A file path, a ``PIL.Image`` or a numpy array: (H, W), (H, W, 1), (H, W, 3) or (H, W, 4).
ImageInput = Union[str, os.PathLike, "Image.Image", np.ndarray]


def exceeds_max_pixels(width: int, height: int, max_pixels: int | None) -> bool:
    """Whether a ``width`` x ``height`` image is over ``max_pixels`` (None: no limit)."""
    return max_pixels is not None and width * height > max_pixels


def check_pixels(width: int, height: int, max_pixels: int | None, what: str) -> None:
    """Raise :class:`~ditsam.data.sample.DataError` naming ``what`` for an empty image or one over
    ``max_pixels``; the web demo words the same refusal for its page (:mod:`ditsam.serve`)."""
    if width < 1 or height < 1:
        raise DataError(f"{what} is empty ({width}x{height} pixels)")
    if exceeds_max_pixels(width, height, max_pixels):
        raise DataError(
            f"{what} is {width}x{height} = {width * height / 1e6:.1f} megapixels, over the limit of "
            f"{max_pixels / 1e6:g} (max_pixels={max_pixels}; raise it with Segmenter(max_pixels=...) or "
            f"downscale the image)"
        )


def array_to_pil(array: np.ndarray, what: str) -> "Image.Image":
    from PIL import Image

    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ValueError(
            f"{what}: a numpy image must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got shape {array.shape} "
            f"(a batch of images is a list of arrays)"
        )
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        if not finite.all():
            raise ValueError(f"{what}: the float image holds {int((~finite).sum())} NaN / infinite values")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"{what}: a float image must hold values in 0..1, got {low:g}..{high:g} (pass uint8 for 0..255 values)"
            )
        array = np.rint(array * 255.0).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ValueError(f"{what}: numpy images must be uint8 (0..255), bool or float (0..1), got dtype {array.dtype}")
    if array.ndim == 3:
        array = array[..., :3]  # RGBA: alpha dropped, as load_image does for files
    return Image.fromarray(np.ascontiguousarray(array))  # uint8: (H, W) -> "L", (H, W, 3) -> "RGB"


#: Channel orders of numpy images (``Segmenter.predict(image_format=...)``), as SamPredictor.set_image takes them.
IMAGE_FORMATS = ("RGB", "BGR")
#: Channel counts of colour arrays whose first three channels are reordered for BGR (BGR, BGRA).
_COLOUR_CHANNELS = (3, 4)


def check_image_format(image_format: str) -> bool:
    """Whether ``image_format`` is "BGR" (False for "RGB"); ValueError naming the accepted values otherwise."""
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {', '.join(map(repr, IMAGE_FORMATS))}, got {image_format!r}")
    return image_format == "BGR"


def bgr_to_rgb(array: np.ndarray) -> np.ndarray:
    """An (H, W, 3) BGR or (H, W, 4) BGRA array (OpenCV's order) as RGB(A); grayscale arrays are returned as
    they are (they have no channel order)."""
    if array.ndim == 3 and array.shape[2] in _COLOUR_CHANNELS:
        order = [2, 1, 0, *range(3, array.shape[2])]
        return np.ascontiguousarray(array[..., order])
    return array


def read_image(image: ImageInput, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, what: str = "image") -> "Image.Image":
    """Any accepted image input -> 8-bit RGB ``PIL.Image``, refusing more than ``max_pixels`` pixels.

    The size is checked before any pixel is decoded or copied: from the file header for paths, from
    ``.size`` / ``.shape`` otherwise. Raises :class:`~ditsam.data.sample.DataError` (a ValueError)
    naming the path for missing, unreadable, non-image or too large files; ValueError / TypeError for
    arrays and objects of the wrong kind.
    """
    from PIL import Image

    from ditsam.data.sample import _to_rgb, image_size, load_image

    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if os.path.isdir(path):
            raise DataError(f"cannot read image {path}: it is a folder")
        try:
            width, height = image_size(path)
        except Image.DecompressionBombError as error:  # above PIL's own limit (~179 megapixels)
            raise DataError(f"image {path} is too large for PIL ({error}); over max_pixels={max_pixels}") from error
        check_pixels(width, height, max_pixels, f"image {path}")
        try:
            return load_image(path)
        except Image.DecompressionBombError as error:
            raise DataError(f"image {path} is too large for PIL: {error}") from error
    if isinstance(image, Image.Image):
        check_pixels(image.width, image.height, max_pixels, what)
        try:
            image.load()  # a lazily opened file fails here, not halfway through the transform
            return _to_rgb(image)
        except (OSError, ValueError) as error:
            raise DataError(f"{what}: cannot read the PIL image (mode {image.mode}): {error}") from error
    if isinstance(image, np.ndarray):
        if image.ndim >= 2:
            check_pixels(int(image.shape[1]), int(image.shape[0]), max_pixels, what)
        return array_to_pil(image, what).convert("RGB")
    raise TypeError(f"{what}: expected a file path, a PIL image or a numpy array, got {type(image).__name__}")
