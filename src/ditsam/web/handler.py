"""The web demo's request path, no Gradio here (unit-testable): :func:`predict_handler` answers one
*Segment* request with a :class:`DemoOutput` -- the overlay, the mask and a status line -- and turns
every problem with the input into a message, never an exception (see :mod:`ditsam.serve`)."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from ditsam.data.images import exceeds_max_pixels
from ditsam.data.sample import DataError
from ditsam.web.clicks import Clicks, as_clicks, draw_clicks

if TYPE_CHECKING:
    from PIL import Image

    from ditsam.api import SegmentationResult, Segmenter

logger = logging.getLogger("ditsam.serve")  # the demo's log, under the name it always had

#: Overlays wider or taller than this are downscaled for the page (the mask keeps the full size).
DISPLAY_MAX_SIDE = 1280
#: Longest sentence the demo accepts, in characters. The model reads at most its token limit (20 tokens
#: for the paper's models) anyway; the cap keeps a huge request from costing tokenizer time and log space.
MAX_SENTENCE_CHARS = 1000
#: Characters of a sentence written to the server log; longer ones are cut, with their length noted.
LOGGED_SENTENCE_CHARS = 120


@dataclasses.dataclass
class DemoOutput:
    """What one press of *Segment* shows: the overlay, the mask (None after a problem) and a
    Markdown status line; ``ok`` tells a result from a problem, ``result`` is the prediction."""

    overlay: "Image.Image | None"
    mask: "Image.Image | None"
    status: str
    ok: bool
    result: "SegmentationResult | None" = None


def _problem(message: str) -> DemoOutput:
    return DemoOutput(overlay=None, mask=None, status=f"**Problem:** {message}", ok=False)


def over_time_limit(seconds: float) -> DemoOutput:
    """The answer to a request that ran past the server's time limit (``--request-timeout``)."""
    return _problem(
        f"no answer within {seconds:g} s, this demo's limit per request (`ditsam serve --request-timeout`): the "
        f"server is busy or the image is large. Try again in a moment, or with a smaller image."
    )


def logged_sentence(sentence: str) -> str:
    """``sentence`` for the server log: quoted, cut to :data:`LOGGED_SENTENCE_CHARS` characters."""
    if len(sentence) <= LOGGED_SENTENCE_CHARS:
        return repr(sentence)
    return f"{sentence[:LOGGED_SENTENCE_CHARS]!r}... ({len(sentence)} characters)"


def _upload_path(image: Any) -> tuple[str | None, str]:
    """(server path, name to show) of an image input: a path, or Gradio's file payload (a dict or
    an object with ``path`` / ``orig_name``)."""
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        return path, _shown_name(os.path.basename(path))
    if isinstance(image, Mapping):
        path, name = image.get("path"), image.get("orig_name")
    else:
        path, name = getattr(image, "path", None), getattr(image, "orig_name", None)
    if not path:
        return None, _shown_name(name or "the upload")
    return os.fspath(path), _shown_name(name or os.path.basename(os.fspath(path)))


def _shown_name(name: Any) -> str:
    """A file name as the user gave it, safe inside Markdown inline code."""
    return " ".join(str(name).replace("`", "'").split())[:200] or "the upload"


def _load_checked(segmenter: "Segmenter", image: Any) -> "Image.Image | DemoOutput":
    """The input as an RGB PIL image, or a :class:`DemoOutput` saying what is wrong with it."""
    from PIL import Image

    from ditsam.data.sample import image_size

    if isinstance(image, (Image.Image, np.ndarray)):
        try:
            return segmenter.read_image(image)
        except (DataError, ValueError, TypeError) as error:
            return _problem(f"cannot use this image: {error}")
    path, name = _upload_path(image)
    if path is None:
        return _problem("the upload holds no file; upload the image again.")
    limit = segmenter.max_pixels
    try:
        width, height = image_size(path)
    except DataError as error:
        cause = str(error.__cause__ or error).replace(path, name)
        return _problem(
            f"cannot read `{name}` as an image ({cause}). Upload a picture file: PNG, JPEG, WebP, BMP, TIFF or GIF."
        )
    except Image.DecompressionBombError:  # over PIL's own limit, ~179 megapixels
        return _problem(f"`{name}` is far too large to open. Downscale it and upload it again.")
    if exceeds_max_pixels(width, height, limit):
        return _problem(
            f"`{name}` is {width}x{height} pixels = {width * height / 1e6:.2f} megapixels, more than this demo "
            f"accepts ({limit / 1e6:g} megapixels; `ditsam serve --max-pixels`). Downscale it and upload it again."
        )
    try:
        return segmenter.read_image(path, what=name)
    except DataError as error:
        return _problem(str(error).replace(path, name))


def _display_copy(image: "Image.Image") -> tuple["Image.Image", float]:
    """The image downscaled to :data:`DISPLAY_MAX_SIDE` for the page, and the scale applied."""
    from PIL import Image

    side = max(image.size)
    if side <= DISPLAY_MAX_SIDE:
        return image, 1.0
    scale = DISPLAY_MAX_SIDE / side
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR), scale


def predict_handler(
    segmenter: "Segmenter",
    *,
    image: Any,
    sentence: Any,
    clicks: Clicks | Mapping[str, Any] | None = None,
) -> DemoOutput:
    """Answer one *Segment* request; every problem becomes a message, never an exception.

    ``image``: None (nothing uploaded), a file path, Gradio's upload payload (a dict with
    ``path`` and ``orig_name``), a PIL image or a numpy array. ``sentence``: the text box.
    ``clicks``: prompts from clicks on the image (:class:`Clicks`). The image's size is checked
    against ``segmenter.max_pixels`` from the file header, before any pixel is decoded.
    """
    if image is None:
        return _problem("no image: upload an image (or pick an example below), then press Segment.")
    text = sentence.strip() if isinstance(sentence, str) else ""
    if not text:
        return _problem('no sentence: type what to segment, e.g. "the small red circle on the left".')
    if len(text) > MAX_SENTENCE_CHARS:
        return _problem(
            f"the sentence is {len(text)} characters long; this demo accepts at most {MAX_SENTENCE_CHARS}. "
            f"Describe one object in a short sentence."
        )
    loaded = _load_checked(segmenter, image)
    if isinstance(loaded, DemoOutput):
        return loaded
    rgb = loaded
    prompts = as_clicks(clicks)
    try:
        result = segmenter.predict(rgb, text, **prompts.predict_kwargs())
    except (DataError, ValueError, TypeError) as error:  # e.g. clicks outside a newly uploaded image
        return _problem(f"cannot segment this input: {error}")
    except Exception:  # noqa: BLE001 -- the page shows a message; the trace goes to the server log
        logger.exception("prediction failed for sentence %s", logged_sentence(text))
        return _problem("the model failed on this input (the server log has the details).")
    assert not isinstance(result, list)
    return _result_output(rgb, text, result, prompts)


def _result_output(rgb: "Image.Image", sentence: str, result: "SegmentationResult", clicks: Clicks) -> DemoOutput:
    from PIL import Image

    from ditsam.viz import overlay

    shown, scale = _display_copy(rgb)
    mask = result.mask
    shown_mask = mask
    if scale != 1.0:
        shown_mask = np.asarray(Image.fromarray(mask).resize(shown.size, Image.Resampling.NEAREST), dtype=bool)
    picture = overlay(shown, shown_mask)
    draw_clicks(picture, clicks, scale)
    width, height = rgb.size
    area = result.area
    status = (
        f"**Mask:** area {area} px ({100.0 * area / (width * height):.1f}% of the {width}x{height} image), "
        f"score {result.score:.4f} (the model's IoU prediction)"
    )
    if result.presence is not None and not result.present:  # the no-target head: nothing is named here
        status = (
            f"**Nothing matches this sentence** in this {width}x{height} image (the model is "
            f"{100.0 * (1.0 - result.presence):.0f}% sure nothing is referred)"
        )
    elif area:
        x, y, w, h = result.bbox
        status += f", bounding box x={x} y={y} w={w} h={h}"
    else:
        status += "; nothing found for this sentence"
    if not clicks.empty:
        status += ". " + clicks.describe()
    logger.info("segmented %s: area %d, score %.4f", logged_sentence(sentence), area, result.score)
    mask_image = Image.fromarray(mask.astype(np.uint8) * 255)  # (H, W) uint8: mode "L"
    return DemoOutput(overlay=picture, mask=mask_image, status=status, ok=True, result=result)
