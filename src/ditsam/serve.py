"""The web demo: upload an image, type a sentence, see the mask (``ditsam serve``).

Built with Gradio (the optional ``demo`` extra: ``pip install -e ".[demo]"``); Gradio is imported
only by :func:`build_app`, so this module, its handlers and its tests import without it.

    from ditsam import Segmenter
    from ditsam.serve import build_app, example_pairs

    seg = Segmenter.from_pretrained("runs/NAME/checkpoints/best", max_pixels=20_000_000)
    app = build_app(seg, examples=example_pairs("data/refshapes"))
    app.launch(server_name="127.0.0.1", server_port=7860)

The page: an image (upload, paste or pick an example), a sentence, a *Segment* button; the
answer is the image with the prediction in red, the mask itself (white on black, at the image's
size) and a status line with the mask's area and the model's score (its IoU prediction). Clicks on
the input image can add foreground / background points or a box (two corners), passed to
:meth:`Segmenter.predict` as ``points=`` / ``boxes=`` -- only a model trained with point and box
prompts ("Mix", Table 4) uses them; a text-only model ignores or misreads them.

Bad input -- no image, an empty sentence or one over :data:`MAX_SENTENCE_CHARS` characters, a file
that is not an image, an image over the segmenter's ``max_pixels`` (checked from the file header,
before any pixel is decoded) -- is answered by a message in the status line, never by an exception:
:func:`predict_handler` is the whole request path and returns a :class:`DemoOutput` either way. The
server log gets at most :data:`LOGGED_SENTENCE_CHARS` characters of a sentence.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ditsam.data.images import exceeds_max_pixels
from ditsam.data.sample import DataError

if TYPE_CHECKING:  # heavy imports stay out of `import ditsam.serve`
    import gradio as gr
    from PIL import Image

    from ditsam.api import SegmentationResult, Segmenter

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
#: Overlays wider or taller than this are downscaled for the page (the mask keeps the full size).
DISPLAY_MAX_SIDE = 1280
#: Height of the image boxes on the page, in CSS pixels.
IMAGE_HEIGHT = 360
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
#: Longest sentence the demo accepts, in characters. The model reads at most its token limit (20 tokens
#: for the paper's models) anyway; the cap keeps a huge request from costing tokenizer time and log space.
MAX_SENTENCE_CHARS = 1000
#: Characters of a sentence written to the server log; longer ones are cut, with their length noted.
LOGGED_SENTENCE_CHARS = 120

CLICK_OFF = "off"
CLICK_FOREGROUND = "foreground point"
CLICK_BACKGROUND = "background point"
CLICK_BOX = "box (two corners)"
CLICK_MODES = (CLICK_OFF, CLICK_FOREGROUND, CLICK_BACKGROUND, CLICK_BOX)

#: Markers drawn on the overlay: foreground / background points, the box and a pending corner.
_FOREGROUND_COLOUR = (40, 220, 60)
_BACKGROUND_COLOUR = (40, 120, 255)
_BOX_COLOUR = (255, 210, 0)

INTRO = """\
# ditsam: segment what a sentence describes

Upload an image (or pick an example below), describe one object in a sentence and press
**Segment**: the prediction is shown in red, with the mask and the model's score.

*Optional refinement:* choose a click mode and click the input image to add foreground /
background points or a box (two clicks: opposite corners). **Clicks only help a model trained
with point and box prompts ("Mix", `refcoco/mix`); a text-only model ignores or misreads them.**
"""


# ---------------------------------------------------------------------------------------------------
# Clicks
# ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Clicks:
    """Point and box prompts collected from clicks on the input image, in original image pixels.

    ``points``: ``[x, y, label]`` rows, label 1 = foreground, 0 = background; ``box``: ``[x1, y1,
    x2, y2]`` once both corners are clicked; ``corner``: the first corner of a box in progress.
    """

    points: list[list[float]] = dataclasses.field(default_factory=list)
    box: list[float] | None = None
    corner: list[float] | None = None

    def add(self, *, mode: str, x: float, y: float) -> "Clicks":
        """A copy with the click at ``(x, y)`` applied in ``mode`` (one of :data:`CLICK_MODES`)."""
        if mode not in CLICK_MODES:
            raise ValueError(f"unknown click mode {mode!r}; modes are {', '.join(CLICK_MODES)}")
        out = Clicks(points=[list(p) for p in self.points], box=self.box, corner=self.corner)
        if mode == CLICK_FOREGROUND:
            out.points.append([float(x), float(y), 1.0])
        elif mode == CLICK_BACKGROUND:
            out.points.append([float(x), float(y), 0.0])
        elif mode == CLICK_BOX:
            if out.corner is None:
                out.corner = [float(x), float(y)]
            else:
                (x0, y0), out.corner = out.corner, None
                out.box = [min(x0, x), min(y0, y), max(x0, x), max(y0, y)]
        return out

    @property
    def empty(self) -> bool:
        """No point, box or pending corner."""
        return not self.points and self.box is None and self.corner is None

    def predict_kwargs(self) -> dict[str, Any]:
        """``points=`` / ``boxes=`` for :meth:`Segmenter.predict` (a pending corner is not used)."""
        kwargs: dict[str, Any] = {}
        if self.points:
            rows = np.asarray(self.points, dtype=np.float64)
            kwargs["points"] = (rows[:, :2], rows[:, 2].astype(np.int64))
        if self.box is not None:
            kwargs["boxes"] = np.asarray(self.box, dtype=np.float64)
        return kwargs

    def describe(self) -> str:
        """One line for the page: the prompts the next prediction uses (x, y in image pixels)."""
        if self.empty:
            return "Clicks: none (text only)."

        def where(rows: list[list[float]]) -> str:
            return ", ".join(f"({round(p[0])}, {round(p[1])})" for p in rows)

        parts = []
        foreground = [p for p in self.points if p[2] == 1]
        background = [p for p in self.points if p[2] != 1]
        if foreground:
            parts.append(f"foreground {where(foreground)}")
        if background:
            parts.append(f"background {where(background)}")
        if self.box is not None:
            x1, y1, x2, y2 = (round(v) for v in self.box)
            parts.append(f"box ({x1}, {y1}) to ({x2}, {y2})")
        if self.corner is not None:
            parts.append(f"box corner ({round(self.corner[0])}, {round(self.corner[1])}), click the opposite corner")
        return "Clicks: " + "; ".join(parts) + "."


def _as_clicks(value: Any) -> Clicks:
    if isinstance(value, Clicks):
        return value
    if isinstance(value, Mapping):
        return Clicks(points=[list(p) for p in value.get("points", [])], box=value.get("box"), corner=value.get("corner"))
    return Clicks()


# ---------------------------------------------------------------------------------------------------
# The request path (no Gradio here: unit-testable)
# ---------------------------------------------------------------------------------------------------
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


def _draw_clicks(image: "Image.Image", clicks: Clicks, scale: float) -> None:
    """Point markers and the box (scaled like the displayed image), drawn in place."""
    from PIL import ImageDraw

    if clicks.empty:
        return
    draw = ImageDraw.Draw(image)
    radius = max(3, round(min(image.size) / 60))
    if clicks.box is not None:
        x1, y1, x2, y2 = (v * scale for v in clicks.box)
        draw.rectangle((x1, y1, x2, y2), outline=_BOX_COLOUR, width=max(1, radius // 2))
    markers = [(p[0], p[1], _FOREGROUND_COLOUR if p[2] == 1 else _BACKGROUND_COLOUR) for p in clicks.points]
    if clicks.corner is not None:
        markers.append((clicks.corner[0], clicks.corner[1], _BOX_COLOUR))
    for x, y, colour in markers:
        cx, cy = x * scale, y * scale
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour, outline=(255, 255, 255))


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
    prompts = _as_clicks(clicks)
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
    _draw_clicks(picture, clicks, scale)
    width, height = rgb.size
    area = result.area
    status = (
        f"**Mask:** area {area} px ({100.0 * area / (width * height):.1f}% of the {width}x{height} image), "
        f"score {result.score:.4f} (the model's IoU prediction)"
    )
    if not result.present:  # a no-target head (generalized RIS) says the sentence names nothing here
        status = (f"**Nothing matches this sentence** in this {width}x{height} image (the model is "
                  f"{100.0 * (1.0 - (result.presence or 0.0)):.0f}% sure nothing is referred)")
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


# ---------------------------------------------------------------------------------------------------
# Examples
# ---------------------------------------------------------------------------------------------------
def example_pairs(folder: str | os.PathLike, *, limit: int = 8) -> list[tuple[Path, str]]:
    """(image, sentence) examples from ``folder``: a RefShapes root (its refs give one sentence per
    image, evaluation splits first) or any folder of images (sentence left empty)."""
    from ditsam.data.refer import load_refs
    from ditsam.data.refshapes import refshapes_files

    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"examples folder {root} does not exist")
    refs_path, _, _, image_dir = refshapes_files(root)
    pairs: list[tuple[Path, str]] = []
    if refs_path.is_file():
        refs = load_refs(refs_path)  # the restricted unpickler: a crafted refs file runs nothing
        order = {"val": 0, "testA": 1, "testB": 2, "train": 3}
        seen: set[str] = set()
        for ref in sorted(refs, key=lambda r: (order.get(r.get("split"), 4), r.get("ref_id", 0))):
            name = ref.get("file_name")
            if name in seen or not ref.get("sentences") or not (image_dir / name).is_file():
                continue
            seen.add(name)
            pairs.append((image_dir / name, str(ref["sentences"][0]["sent"])))
            if len(pairs) >= limit:
                break
        return pairs
    images = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return [(path, "") for path in images[:limit]]


def make_refshapes_examples(out_dir: str | os.PathLike, *, count: int = 4, seed: int = 0) -> list[tuple[Path, str]]:
    """Generate ``count`` RefShapes evaluation images into ``out_dir`` and return their examples."""
    from ditsam.data.refshapes import generate_refshapes

    counts = {"train": 0, "val": 0, "testA": 0, "testB": 0}
    splits = ("val", "testA", "testB")
    for index in range(count):
        counts[splits[index % len(splits)]] += 1
    generate_refshapes(out_dir, seed=seed, preset="tiny", num_images=counts, overwrite=True)
    return example_pairs(out_dir, limit=count)


# ---------------------------------------------------------------------------------------------------
# The Gradio app
# ---------------------------------------------------------------------------------------------------
def _model_line(segmenter: "Segmenter") -> str:
    config = segmenter.model.config
    limit = "no size limit" if segmenter.max_pixels is None else f"images up to {segmenter.max_pixels / 1e6:g} megapixels"
    return (f"Model: injection `{config.injection}`, input {config.image_size} px, device `{segmenter.device}`; {limit}; "
            f"sentences up to {MAX_SENTENCE_CHARS} characters.")


def build_app(
    segmenter: "Segmenter",
    *,
    examples: Sequence[tuple[str | os.PathLike, str]] = (),
    title: str = "ditsam: segment what a sentence describes",
) -> "gr.Blocks":
    """The demo page as a ``gr.Blocks`` (not launched): ``app.launch(server_name=..., server_port=...)``.

    ``examples``: (image path, sentence) pairs shown below the inputs (:func:`example_pairs`,
    :func:`make_refshapes_examples`). Element ids for scripts and tests: ``image``, ``sentence``,
    ``segment``, ``overlay``, ``mask``, ``status``, ``click-mode``, ``clicks``, ``clear-clicks``,
    ``examples``. The model runs in one request at a time (one Gradio concurrency group).
    """
    try:
        import gradio as gr
    except ImportError as error:
        raise ImportError("the web demo needs gradio: pip install 'ditsam[demo]'") from error

    def run(image: Any, sentence: Any, clicks: Any) -> tuple[Any, Any, str]:
        # preprocess=False: `image` is Gradio's upload payload (a checked path in its cache), so a
        # file PIL cannot open reaches predict_handler and gets a clear message.
        out = predict_handler(segmenter, image=image, sentence=sentence, clicks=clicks)
        return out.overlay, out.mask, out.status

    def on_click(image: Any, sentence: Any, clicks: Any, mode: Any, event: Any) -> tuple[Any, ...]:
        """A click on the input image: add the prompt, and predict again once it is complete."""
        current = _as_clicks(clicks)
        index = event.index
        logger.debug("click at %s in mode %r", index, mode)
        unchanged = (gr.skip(), gr.skip(), gr.skip())
        if mode not in CLICK_MODES or mode == CLICK_OFF or not isinstance(index, (list, tuple)) or len(index) != 2:
            return (current, current.describe() + " Choose a click mode to add points or a box.", *unchanged)
        updated = current.add(mode=mode, x=float(index[0]), y=float(index[1]))
        if updated.corner is not None:  # half a box: wait for the opposite corner
            return (updated, updated.describe(), *unchanged)
        return (updated, updated.describe(), *run(image, sentence, updated))

    # Gradio finds the event argument by its annotation, which must be the class itself here
    # (gradio is imported in this function, so a postponed string annotation cannot be resolved).
    on_click.__annotations__["event"] = gr.SelectData

    def reset_clicks() -> tuple[Clicks, str]:
        return Clicks(), Clicks().describe()

    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(INTRO)
        gr.Markdown(_model_line(segmenter))
        with gr.Row():
            with gr.Column():
                image_in = gr.Image(
                    label="Image", type="filepath", image_mode=None, sources=["upload", "clipboard"], height=IMAGE_HEIGHT,
                    elem_id="image",
                )
                sentence_in = gr.Textbox(
                    label="Sentence", placeholder="the small red circle on the left", lines=1, elem_id="sentence",
                    max_length=MAX_SENTENCE_CHARS,
                )
                with gr.Row():
                    segment = gr.Button("Segment", variant="primary", elem_id="segment")
                click_mode = gr.Radio(
                    list(CLICK_MODES), value=CLICK_OFF, label="Clicks on the image add (Mix-trained models only)",
                    elem_id="click-mode",
                )
                clicks_md = gr.Markdown(Clicks().describe(), elem_id="clicks")
                clear_clicks = gr.Button("Clear clicks", size="sm", elem_id="clear-clicks")
            with gr.Column():
                overlay_out = gr.Image(
                    label="Prediction (red)", type="pil", format="png", interactive=False, height=IMAGE_HEIGHT, elem_id="overlay"
                )
                mask_out = gr.Image(
                    label="Mask", type="pil", format="png", image_mode="L", interactive=False, height=IMAGE_HEIGHT // 2,
                    elem_id="mask",
                )
                status = gr.Markdown("Upload an image and type a sentence.", elem_id="status")
        clicks_state = gr.State(Clicks())
        if examples:
            gr.Examples(
                examples=[[os.fspath(path), sentence] for path, sentence in examples],
                inputs=[image_in, sentence_in], label="Examples", elem_id="examples",
            )

        model_event = dict(preprocess=False, concurrency_limit=1, concurrency_id="model")
        predict_io = dict(inputs=[image_in, sentence_in, clicks_state], outputs=[overlay_out, mask_out, status])
        segment.click(run, api_name="segment", **predict_io, **model_event)
        sentence_in.submit(run, api_visibility="private", **predict_io, **model_event)
        image_in.select(
            on_click, inputs=[image_in, sentence_in, clicks_state, click_mode],
            outputs=[clicks_state, clicks_md, overlay_out, mask_out, status], api_visibility="private", **model_event,
        )
        image_in.change(reset_clicks, outputs=[clicks_state, clicks_md], api_visibility="private")
        clear_clicks.click(reset_clicks, outputs=[clicks_state, clicks_md], api_visibility="private")
    return app


def serve(
    segmenter: "Segmenter",
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    examples: Sequence[tuple[str | os.PathLike, str]] = (),
) -> None:
    """Build the app and serve it until interrupted (Ctrl-C)."""
    app = build_app(segmenter, examples=examples)  # example files are copied into Gradio's cache here
    logger.info("serving the demo on http://%s:%d (Ctrl-C stops it)", host, port)
    app.launch(server_name=host, server_port=port)
