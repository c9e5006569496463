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

import logging
import os
from typing import TYPE_CHECKING, Any, Sequence

from ditsam.web.clicks import (
    CLICK_BACKGROUND,
    CLICK_BOX,
    CLICK_FOREGROUND,
    CLICK_MODES,
    CLICK_OFF,
    Clicks,
    as_clicks,
)
from ditsam.web.examples import IMAGE_SUFFIXES, example_pairs, make_refshapes_examples
from ditsam.web.handler import (
    DISPLAY_MAX_SIDE,
    LOGGED_SENTENCE_CHARS,
    MAX_SENTENCE_CHARS,
    DemoOutput,
    logged_sentence,
    predict_handler,
)

if TYPE_CHECKING:  # heavy imports stay out of `import ditsam.serve`
    import gradio as gr

    from ditsam.api import Segmenter

__all__ = [
    "CLICK_BACKGROUND", "CLICK_BOX", "CLICK_FOREGROUND", "CLICK_MODES", "CLICK_OFF", "DEFAULT_HOST", "DEFAULT_PORT",
    "DISPLAY_MAX_SIDE", "IMAGE_HEIGHT", "IMAGE_SUFFIXES", "INTRO", "LOGGED_SENTENCE_CHARS", "MAX_SENTENCE_CHARS",
    "Clicks", "DemoOutput", "build_app", "example_pairs", "logged_sentence", "make_refshapes_examples",
    "predict_handler", "serve",
]

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
#: Height of the image boxes on the page, in CSS pixels.
IMAGE_HEIGHT = 360

INTRO = """\
# ditsam: segment what a sentence describes

Upload an image (or pick an example below), describe one object in a sentence and press
**Segment**: the prediction is shown in red, with the mask and the model's score.

*Optional refinement:* choose a click mode and click the input image to add foreground /
background points or a box (two clicks: opposite corners). **Clicks only help a model trained
with point and box prompts ("Mix", `refcoco/mix`); a text-only model ignores or misreads them.**
"""


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
        current = as_clicks(clicks)
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
