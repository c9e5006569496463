"""The web demo: upload an image, type a sentence, see the mask (``ditsam serve``).

Built with Gradio (the optional ``demo`` extra: ``pip install -e ".[demo]"``); Gradio is imported
only by :func:`build_app`, so this module, its handlers and its tests import without it.

    from ditsam import Segmenter
    from ditsam.serve import build_app
    from ditsam.web.examples import example_pairs

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

Under load: at most ``max_queue`` requests wait for the model (Gradio's queue); one more is refused
and the page says the demo is busy and to try again. A request that takes longer than
``request_timeout_s`` (waiting for the model thread included) is answered with a message in the
status line (:mod:`ditsam.web.limits`). :func:`serve` takes Gradio's login (``auth``) and warns
when the demo listens beyond this machine without one.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, Sequence

from ditsam.web.access import Credentials, is_loopback
from ditsam.web.clicks import (
    CLICK_MODES,
    CLICK_OFF,
    Clicks,
    as_clicks,
)
from ditsam.web.handler import (
    MAX_SENTENCE_CHARS,
    over_time_limit,
    predict_handler,
)
from ditsam.web.limits import DEFAULT_MAX_QUEUE, DEFAULT_REQUEST_TIMEOUT_S, RequestTimeout, TimeLimit

if TYPE_CHECKING:  # heavy imports stay out of `import ditsam.serve`
    import gradio as gr

    from ditsam.api import Segmenter

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "INTRO", "build_app", "serve"]

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
    limit = (
        "no size limit" if segmenter.max_pixels is None else f"images up to {segmenter.max_pixels / 1e6:g} megapixels"
    )
    return (
        f"Model: injection `{config.injection}`, input {config.image_size} px, device `{segmenter.device}`; {limit}; "
        f"sentences up to {MAX_SENTENCE_CHARS} characters."
    )


def build_app(
    segmenter: "Segmenter",
    *,
    examples: Sequence[tuple[str | os.PathLike, str]] = (),
    title: str = "ditsam: segment what a sentence describes",
    max_queue: int = DEFAULT_MAX_QUEUE,
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
) -> "gr.Blocks":
    """The demo page as a ``gr.Blocks`` (not launched): ``app.launch(server_name=..., server_port=...)``.

    ``examples``: (image path, sentence) pairs shown below the inputs (:func:`example_pairs`,
    :func:`make_refshapes_examples`). Element ids for scripts and tests: ``image``, ``sentence``,
    ``segment``, ``overlay``, ``mask``, ``status``, ``click-mode``, ``clicks``, ``clear-clicks``,
    ``examples``. The model runs one request at a time (one Gradio concurrency group, one model
    thread); ``max_queue`` more may wait (a further one gets HTTP 503, which the page shows as
    "busy, try again"), and each is answered within ``request_timeout_s`` seconds.
    """
    if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
        raise ValueError(f"max_queue must be a positive integer, got {max_queue!r}")
    try:
        import gradio as gr
    except ImportError as error:
        raise ImportError("the web demo needs gradio: pip install 'ditsam[demo]'") from error
    limit = TimeLimit(seconds=request_timeout_s)

    def run(image: Any, sentence: Any, clicks: Any) -> tuple[Any, Any, str]:
        # preprocess=False: `image` is Gradio's upload payload (a checked path in its cache), so a
        # file PIL cannot open reaches predict_handler and gets a clear message.
        try:
            out = limit.call(lambda: predict_handler(segmenter, image=image, sentence=sentence, clicks=clicks))
        except RequestTimeout:
            out = over_time_limit(limit.seconds)
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
                    label="Image",
                    type="filepath",
                    image_mode=None,
                    sources=["upload", "clipboard"],
                    height=IMAGE_HEIGHT,
                    elem_id="image",
                )
                sentence_in = gr.Textbox(
                    label="Sentence",
                    placeholder="the small red circle on the left",
                    lines=1,
                    elem_id="sentence",
                    max_length=MAX_SENTENCE_CHARS,
                )
                with gr.Row():
                    segment = gr.Button("Segment", variant="primary", elem_id="segment")
                click_mode = gr.Radio(
                    list(CLICK_MODES),
                    value=CLICK_OFF,
                    label="Clicks on the image add (Mix-trained models only)",
                    elem_id="click-mode",
                )
                clicks_md = gr.Markdown(Clicks().describe(), elem_id="clicks")
                clear_clicks = gr.Button("Clear clicks", size="sm", elem_id="clear-clicks")
            with gr.Column():
                overlay_out = gr.Image(
                    label="Prediction (red)",
                    type="pil",
                    format="png",
                    interactive=False,
                    height=IMAGE_HEIGHT,
                    elem_id="overlay",
                )
                mask_out = gr.Image(
                    label="Mask",
                    type="pil",
                    format="png",
                    image_mode="L",
                    interactive=False,
                    height=IMAGE_HEIGHT // 2,
                    elem_id="mask",
                )
                status = gr.Markdown("Upload an image and type a sentence.", elem_id="status")
        clicks_state = gr.State(Clicks())
        if examples:
            gr.Examples(
                examples=[[os.fspath(path), sentence] for path, sentence in examples],
                inputs=[image_in, sentence_in],
                label="Examples",
                elem_id="examples",
            )

        model_event = dict(preprocess=False, concurrency_limit=1, concurrency_id="model")
        predict_io = dict(inputs=[image_in, sentence_in, clicks_state], outputs=[overlay_out, mask_out, status])
        segment.click(run, api_name="segment", **predict_io, **model_event)
        sentence_in.submit(run, api_visibility="private", **predict_io, **model_event)
        image_in.select(
            on_click,
            inputs=[image_in, sentence_in, clicks_state, click_mode],
            outputs=[clicks_state, clicks_md, overlay_out, mask_out, status],
            api_visibility="private",
            **model_event,
        )
        # Resetting the clicks costs nothing: it skips the queue, so a busy model never refuses it.
        reset_event = dict(outputs=[clicks_state, clicks_md], api_visibility="private", queue=False)
        image_in.change(reset_clicks, **reset_event)
        clear_clicks.click(reset_clicks, **reset_event)
    app.queue(max_size=max_queue)
    return app


def serve(
    segmenter: "Segmenter",
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    examples: Sequence[tuple[str | os.PathLike, str]] = (),
    auth: Sequence[Credentials] | None = None,
    max_queue: int = DEFAULT_MAX_QUEUE,
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
) -> None:
    """Build the app and serve it until interrupted (Ctrl-C).

    ``auth``: (user, password) pairs for Gradio's login page (:func:`parse_credentials`,
    :func:`read_credentials`); None serves everyone who reaches ``host``, with a logged warning
    when that is more than this machine. ``max_queue``, ``request_timeout_s``: see :func:`build_app`.
    """
    if not auth and not is_loopback(host):
        logger.warning(
            "serving on %s without a login: anyone who can reach this machine can use the demo and its model; "
            "add --auth-file FILE (user:password lines) or --auth user:password",
            host,
        )
    app = build_app(  # example files are copied into Gradio's cache here
        segmenter,
        examples=examples,
        max_queue=max_queue,
        request_timeout_s=request_timeout_s,
    )
    logger.info(
        "serving the demo on http://%s:%d (%s; at most %d waiting requests, %g s per request; Ctrl-C stops it)",
        host,
        port,
        "login required" if auth else "no login",
        max_queue,
        request_timeout_s,
    )
    app.launch(server_name=host, server_port=port, auth=list(auth) if auth else None)
