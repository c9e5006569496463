"""The web demo (``ditsam serve``): the request handler without a browser, the command line, and the
page end to end in headless Chromium (selenium + the Debian packages chromium / chromium-driver).

The browser tests skip, saying why, where gradio, selenium, chromium or chromedriver is missing;
CI installs them (.ci/run, the ``test`` extra).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
from PIL import Image

from ditsam.api import Segmenter
from ditsam.cli.main import COMMAND_MODULES, build_parser, main
from ditsam.web.access import is_loopback
from ditsam.web.clicks import CLICK_BACKGROUND, CLICK_BOX, CLICK_FOREGROUND, CLICK_OFF, Clicks
from ditsam.web.examples import example_pairs, make_refshapes_examples
from ditsam.web.handler import DISPLAY_MAX_SIDE, LOGGED_SENTENCE_CHARS, MAX_SENTENCE_CHARS, DemoOutput, predict_handler
from ditsam.web.limits import DEFAULT_MAX_QUEUE, DEFAULT_REQUEST_TIMEOUT_S, RequestTimeout, TimeLimit

SENTENCE = "the red circle"
MAX_PIXELS = 30_000  # RefShapes "tiny" images (at most 160 x 160) fit; the "huge" test image does not
WAIT_S = 20  # longest wait for anything in the page
POLL_S = 0.05


# ---------------------------------------------------------------------------------------------------
# Model and images
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def segmenter(checkpoint: Path) -> Segmenter:
    # A random tiny model's logits sit near 0: threshold 0.5 cuts them into a partial mask.
    return Segmenter.from_pretrained(checkpoint, device="cpu", threshold=0.5, max_pixels=MAX_PIXELS)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small scene, an image over MAX_PIXELS, a text file and a text file named .png."""
    folder = tmp_path_factory.mktemp("serve_files")
    yy, xx = np.mgrid[:48, :64]
    scene = np.zeros((48, 64, 3), np.uint8)
    scene[...] = (30 + yy * 2)[..., None].astype(np.uint8)
    scene[(yy - 20) ** 2 + (xx - 22) ** 2 < 90] = (220, 40, 40)
    scene[30:44, 40:58] = (40, 80, 220)
    out = {
        "scene": folder / "scene.png",
        "huge": folder / "huge.png",
        "text": folder / "notes.txt",
        "fake": folder / "fake.png",
    }
    Image.fromarray(scene).save(out["scene"])
    Image.new("RGB", (200, 200), (90, 90, 90)).save(out["huge"])  # 40,000 px > MAX_PIXELS
    out["text"].write_text("these are notes, not a picture\n", encoding="utf-8")
    out["fake"].write_text("not a PNG either\n", encoding="utf-8")
    return out


def _problem(out: DemoOutput, *needles: str) -> None:
    assert not out.ok and out.overlay is None and out.mask is None and out.result is None
    assert out.status.startswith("**Problem:**")
    for needle in needles:
        assert needle in out.status, out.status


# ---------------------------------------------------------------------------------------------------
# predict_handler: the whole request path, without Gradio
# ---------------------------------------------------------------------------------------------------
def test_handler_predicts_like_the_segmenter(segmenter: Segmenter, files: dict[str, Path]) -> None:
    expected = segmenter.predict(files["scene"], SENTENCE)
    assert 0 < expected.area < 64 * 48, "the test model should give a partial mask"
    payload = {"path": str(files["scene"]), "orig_name": "my photo.png", "meta": {"_type": "gradio.FileData"}}
    for image in (
        files["scene"],
        str(files["scene"]),
        payload,
        Image.open(files["scene"]),
        np.asarray(Image.open(files["scene"])),
    ):
        out = predict_handler(segmenter, image=image, sentence=f"  {SENTENCE} ")
        assert out.ok and out.result is not None
        np.testing.assert_array_equal(out.result.mask, expected.mask)
        assert out.result.score == pytest.approx(expected.score, abs=1e-6)
        assert out.mask.mode == "L" and out.mask.size == (64, 48)
        np.testing.assert_array_equal(np.asarray(out.mask), expected.mask.astype(np.uint8) * 255)
        assert out.overlay.size == (64, 48) and out.overlay.mode == "RGB"
        assert f"area {expected.area} px" in out.status and f"score {expected.score:.4f}" in out.status
        assert "of the 64x48 image" in out.status


@pytest.mark.parametrize("sentence", ["", "   ", None, 3])
def test_handler_empty_sentence(segmenter: Segmenter, files: dict[str, Path], sentence: Any) -> None:
    _problem(predict_handler(segmenter, image=files["scene"], sentence=sentence), "no sentence")


def test_handler_no_image(segmenter: Segmenter) -> None:
    _problem(predict_handler(segmenter, image=None, sentence=SENTENCE), "no image")
    _problem(predict_handler(segmenter, image={"path": None, "orig_name": None}, sentence=SENTENCE), "upload")


@pytest.mark.parametrize("name", ["text", "fake"])
def test_handler_non_image_file_names_the_upload_not_the_server_path(
    segmenter: Segmenter, files: dict[str, Path], name: str
) -> None:
    payload = {"path": str(files[name]), "orig_name": "holiday.png"}
    out = predict_handler(segmenter, image=payload, sentence=SENTENCE)
    _problem(out, "cannot read `holiday.png` as an image", "PNG, JPEG")
    assert str(files[name].parent) not in out.status
    odd = predict_handler(segmenter, image={"path": str(files[name]), "orig_name": "a`b\n.png"}, sentence=SENTENCE)
    _problem(odd, "cannot read `a'b .png` as an image")  # the name cannot break out of the inline code


def test_handler_refuses_huge_images_before_decoding(
    segmenter: Segmenter, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_decode(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the image was decoded")

    monkeypatch.setattr(segmenter, "read_image", no_decode)
    out = predict_handler(segmenter, image={"path": str(files["huge"]), "orig_name": "huge.png"}, sentence=SENTENCE)
    _problem(out, "`huge.png` is 200x200 pixels", "more than this demo accepts (0.03 megapixels", "--max-pixels")


def test_handler_reports_model_failures_without_a_trace(
    segmenter: Segmenter, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(segmenter, "predict", broken)
    out = predict_handler(segmenter, image=files["scene"], sentence=SENTENCE)
    _problem(out, "the model failed", "server log")
    assert "Traceback" not in out.status and "CUDA" not in out.status
    assert "CUDA out of memory (simulated)" in caplog.text  # logged with its trace for the operator


def test_handler_passes_clicks_as_points_and_box(segmenter: Segmenter, files: dict[str, Path]) -> None:
    clicks = Clicks()
    for mode, x, y in [(CLICK_FOREGROUND, 20, 18), (CLICK_BACKGROUND, 5, 40), (CLICK_BOX, 50, 44), (CLICK_BOX, 38, 28)]:
        clicks = clicks.add(mode=mode, x=x, y=y)
    out = predict_handler(segmenter, image=files["scene"], sentence=SENTENCE, clicks=clicks)
    expected = segmenter.predict(
        files["scene"],
        SENTENCE,
        points=(np.array([[20.0, 18.0], [5.0, 40.0]]), np.array([1, 0])),
        boxes=np.array([38.0, 28.0, 50.0, 44.0]),
    )
    assert out.ok
    np.testing.assert_array_equal(out.result.mask, expected.mask)
    assert out.result.score == pytest.approx(expected.score, abs=1e-6)
    assert "Clicks: foreground (20, 18); background (5, 40); box (38, 28) to (50, 44)." in out.status
    plain = predict_handler(segmenter, image=files["scene"], sentence=SENTENCE)
    assert not np.array_equal(np.asarray(out.overlay), np.asarray(plain.overlay)), "markers are drawn"
    # The same clicks as Gradio state (a plain dict) work too.
    as_dict = {"points": clicks.points, "box": clicks.box, "corner": None}
    again = predict_handler(segmenter, image=files["scene"], sentence=SENTENCE, clicks=as_dict)
    np.testing.assert_array_equal(again.result.mask, expected.mask)


def test_handler_clicks_outside_a_new_image_are_a_message(segmenter: Segmenter, files: dict[str, Path]) -> None:
    clicks = Clicks().add(mode=CLICK_FOREGROUND, x=500, y=10)
    out = predict_handler(segmenter, image=files["scene"], sentence=SENTENCE, clicks=clicks)
    _problem(out, "cannot segment this input", "outside the 64x48 image")


def test_handler_downscales_large_overlays_but_not_the_mask(checkpoint: Path) -> None:
    seg = Segmenter.from_pretrained(checkpoint, device="cpu", threshold=0.5, max_pixels=None)
    image = np.random.default_rng(0).integers(0, 256, size=(50, 2 * DISPLAY_MAX_SIDE, 3), dtype=np.uint8)
    out = predict_handler(seg, image=image, sentence=SENTENCE)
    assert out.ok
    assert out.overlay.size == (DISPLAY_MAX_SIDE, 25)
    assert out.mask.size == (2 * DISPLAY_MAX_SIDE, 50)


def test_clicks() -> None:
    clicks = Clicks()
    assert clicks.empty and clicks.describe() == "Clicks: none (text only)." and clicks.predict_kwargs() == {}
    assert clicks.add(mode=CLICK_OFF, x=1, y=2).empty
    half = clicks.add(mode=CLICK_BOX, x=30, y=5)
    assert half.corner == [30.0, 5.0] and half.box is None and half.predict_kwargs() == {}
    assert "click the opposite corner" in half.describe()
    box = half.add(mode=CLICK_BOX, x=10, y=25)
    assert box.box == [10.0, 5.0, 30.0, 25.0] and box.corner is None  # corners in any order
    assert clicks.empty, "add returns a copy"
    points = box.add(mode=CLICK_FOREGROUND, x=1, y=2).add(mode=CLICK_BACKGROUND, x=3, y=4)
    kwargs = points.predict_kwargs()
    np.testing.assert_array_equal(kwargs["points"][0], [[1, 2], [3, 4]])
    np.testing.assert_array_equal(kwargs["points"][1], [1, 0])
    np.testing.assert_array_equal(kwargs["boxes"], [10, 5, 30, 25])
    with pytest.raises(ValueError, match="unknown click mode"):
        clicks.add(mode="lasso", x=0, y=0)


def test_examples_from_refshapes_and_from_a_folder(tmp_path: Path) -> None:
    pairs = make_refshapes_examples(tmp_path / "rs", count=3)
    assert len(pairs) == 3
    for path, sentence in pairs:
        assert path.is_file() and sentence.strip()
    assert example_pairs(tmp_path / "rs", limit=2) == pairs[:2]
    folder = tmp_path / "pictures"
    folder.mkdir()
    for name in ("b.png", "a.jpg", "notes.txt"):
        (folder / name).write_bytes(b"")
    assert example_pairs(folder) == [(folder / "a.jpg", ""), (folder / "b.png", "")]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        example_pairs(tmp_path / "missing")


def test_crafted_refs_in_the_examples_folder_run_nothing(tmp_path: Path) -> None:
    """``serve --examples DIR`` reads DIR's refs pickle before the checkpoint is even checked: it goes
    through the restricted unpickler, so a crafted file is an error and its code never runs."""
    import pickle

    from ditsam.data import DataError
    from ditsam.data.refshapes import refshapes_files

    marker = tmp_path / "pwned"

    class RunsShell:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, (f"touch {marker}",))

    refs_path = refshapes_files(tmp_path / "crafted")[0]
    refs_path.parent.mkdir(parents=True)
    refs_path.write_bytes(pickle.dumps([RunsShell()], protocol=2))
    with pytest.raises(DataError, match="refusing to load global"):
        example_pairs(tmp_path / "crafted")
    assert not marker.exists()


def test_handler_refuses_overlong_sentences_and_logs_little(
    segmenter: Segmenter, files: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    too_long = "the red circle " * (MAX_SENTENCE_CHARS // 10)
    out = predict_handler(segmenter, image=files["scene"], sentence=too_long)
    _problem(out, f"{len(too_long.strip())} characters long", f"at most {MAX_SENTENCE_CHARS}")
    long_but_accepted = ("the red circle " * 60)[:MAX_SENTENCE_CHARS]
    with caplog.at_level("INFO", logger="ditsam"):
        assert predict_handler(segmenter, image=files["scene"], sentence=long_but_accepted).ok
    logged = [record.getMessage() for record in caplog.records if record.getMessage().startswith("segmented")]
    assert logged and all(len(message) < LOGGED_SENTENCE_CHARS + 100 for message in logged), logged
    assert f"({len(long_but_accepted.strip())} characters)" in logged[0]


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------
def test_serve_is_a_command() -> None:
    assert "serve" in COMMAND_MODULES
    args = build_parser().parse_args(["serve", "--checkpoint", "ck"])
    assert (args.host, args.port, args.examples, args.max_pixels) == ("127.0.0.1", 7860, None, 40_000_000)
    assert (args.auth, args.auth_file) == (None, None)
    assert (args.max_queue, args.request_timeout) == (DEFAULT_MAX_QUEUE, DEFAULT_REQUEST_TIMEOUT_S)


def test_serve_command_builds_the_segmenter_and_examples(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("gradio", reason="gradio is not installed (pip install -e '.[demo]')")
    import ditsam.serve

    calls: list[dict[str, Any]] = []

    def fake_serve(segmenter: Segmenter, *, host: str, port: int, examples: Any, **options: Any) -> None:
        calls.append(
            {
                "segmenter": segmenter,
                "host": host,
                "port": port,
                "examples": list(examples),
                "exist": all(Path(p).is_file() for p, _ in examples),
                **options,
            }
        )

    monkeypatch.setattr(ditsam.serve, "serve", fake_serve)
    assert (
        main(["serve", "--checkpoint", str(checkpoint), "--device", "cpu", "--max-pixels", "1234", "--port", "7999"])
        == 0
    )
    call = calls.pop()
    assert call["segmenter"].max_pixels == 1234 and (call["host"], call["port"]) == ("127.0.0.1", 7999)
    assert len(call["examples"]) == 4 and call["exist"], "generated RefShapes examples exist while serving"
    assert not Path(call["examples"][0][0]).exists(), "and are removed afterwards"

    root = tmp_path / "rs"
    make_refshapes_examples(root, count=2)
    assert main(["serve", "--checkpoint", str(checkpoint), "--device", "cpu", "--examples", str(root)]) == 0
    assert [p.parent for p, _ in calls.pop()["examples"]] == [root / "images"] * 2
    assert main(["serve", "--checkpoint", str(checkpoint), "--device", "cpu", "--no-examples"]) == 0
    call = calls.pop()
    assert call["examples"] == [] and call["auth"] is None
    assert (call["max_queue"], call["request_timeout_s"]) == (DEFAULT_MAX_QUEUE, DEFAULT_REQUEST_TIMEOUT_S)

    auth_file = tmp_path / "auth.txt"
    auth_file.write_text("# who may log in\nann:pa:ss:word\n\n  bob:secret  \n", encoding="utf-8")
    base = ["serve", "--checkpoint", str(checkpoint), "--device", "cpu", "--no-examples"]
    assert main([*base, "--auth-file", str(auth_file), "--max-queue", "3", "--request-timeout", "2.5"]) == 0
    call = calls.pop()
    assert call["auth"] == [("ann", "pa:ss:word"), ("bob", "secret")]
    assert (call["max_queue"], call["request_timeout_s"]) == (3, 2.5)
    assert main([*base, "--auth", "ann:right"]) == 0
    assert calls.pop()["auth"] == [("ann", "right")]


def test_serve_command_errors(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("gradio", reason="gradio is not installed (pip install -e '.[demo]')")
    assert main(["serve", "--checkpoint", str(checkpoint), "--examples", str(tmp_path / "missing")]) == 2
    assert "examples folder" in capsys.readouterr().err
    assert main(["serve", "--checkpoint", str(checkpoint), "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err
    base = ["serve", "--checkpoint", str(checkpoint), "--no-examples"]
    for option, message in [
        (["--auth", "ann-hunter2"], "--auth: expected user:password"),
        (["--auth", ":hunter2"], "an empty user name"),
        (["--auth", "ann:"], "an empty password"),
        (["--auth-file", str(tmp_path / "missing.txt")], "missing.txt does not exist"),
    ]:
        assert main([*base, *option]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert "hunter2" not in err, "a password is never echoed"
    bad_file = tmp_path / "auth.txt"
    for text, message in [
        ("ann:one\nann:two\n", "line 2: user 'ann' appears twice"),
        ("ann:ok\nbob hunter2\n", "line 2: expected user:password"),
        ("# nobody\n\n", "holds no user:password line"),
    ]:
        bad_file.write_text(text, encoding="utf-8")
        assert main([*base, "--auth-file", str(bad_file)]) == 2
        err = capsys.readouterr().err
        assert f"auth file {bad_file}" in err and message in err and "hunter2" not in err, err
    with pytest.raises(SystemExit):  # argparse: one or the other
        main([*base, "--auth", "ann:x", "--auth-file", str(bad_file)])
    assert "not allowed with argument" in capsys.readouterr().err
    for option, value in [
        ("--max-queue", "0"),
        ("--request-timeout", "0"),
        ("--request-timeout", "inf"),
        ("--request-timeout", "soon"),
    ]:
        with pytest.raises(SystemExit):
            main([*base, option, value])
        assert option in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if not installed
    assert main(["serve", "--checkpoint", str(checkpoint)]) == 2
    assert "pip install 'ditsam[demo]'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "host, loopback",
    [
        ("127.0.0.1", True),
        ("127.0.1.1", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.20", False),
        ("demo.example.org", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_serve_warns_when_exposed_without_a_login(
    checkpoint: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The command's settings reach Gradio's launch (stubbed: nothing listens on 0.0.0.0 here)."""
    gradio = pytest.importorskip("gradio", reason="gradio is not installed (pip install -e '.[demo]')")
    launches: list[dict[str, Any]] = []
    monkeypatch.setattr(gradio.Blocks, "launch", lambda app, **kwargs: launches.append(kwargs))
    base = ["serve", "--checkpoint", str(checkpoint), "--device", "cpu", "--no-examples"]
    warning = "without a login: anyone who can reach this machine"
    with caplog.at_level("WARNING", logger="ditsam"):
        assert main([*base, "--host", "0.0.0.0"]) == 0
    assert warning in caplog.text and "0.0.0.0" in caplog.text
    assert launches.pop() == {"server_name": "0.0.0.0", "server_port": 7860, "auth": None}
    caplog.clear()
    with caplog.at_level("WARNING", logger="ditsam"):
        assert main([*base, "--host", "0.0.0.0", "--auth", "ann:right"]) == 0
        assert main(base) == 0  # 127.0.0.1 without a login: only this machine can reach it
    assert warning not in caplog.text
    assert [launch["auth"] for launch in launches] == [[("ann", "right")], None]


def test_time_limit_answers_in_time_and_never_runs_two_calls_at_once() -> None:
    limit = TimeLimit(seconds=1.0)
    assert limit.call(lambda: 41 + 1) == 42
    release, finished, ran = threading.Event(), threading.Event(), []

    def stuck() -> None:
        ran.append("stuck")
        release.wait(WAIT_S)
        finished.set()

    with pytest.raises(RequestTimeout, match="no answer within 1 s"):
        limit.call(stuck)
    with pytest.raises(RequestTimeout):  # waits behind the stuck call, then is dropped unrun
        limit.call(lambda: ran.append("dropped"))
    release.set()
    assert finished.wait(WAIT_S)
    assert limit.call(lambda: ran.append("next") or "done") == "done"
    assert ran == ["stuck", "next"]
    for seconds in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="positive number of seconds"):
            TimeLimit(seconds=seconds)


# ---------------------------------------------------------------------------------------------------
# The page in headless Chromium
# ---------------------------------------------------------------------------------------------------
def _tool(name: str, fallback: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    return fallback if os.access(fallback, os.X_OK) else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _launched(
    segmenter: Segmenter, folder: Path, *, examples: Any = (), auth: Any = None, **options: Any
) -> Iterator[str]:
    """``build_app(segmenter, examples=..., **options)`` launched in this process on a free 127.0.0.1
    port (with ``auth``), its uploads under ``folder``; yields the URL and closes the app after."""
    pytest.importorskip("gradio", reason="gradio is not installed (pip install -e '.[test]' or '.[demo]')")
    from ditsam.serve import build_app

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_TEMP_DIR", str(folder / "gradio"))  # uploads land here, not in /tmp/gradio
        patch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        app = build_app(segmenter, examples=examples, **options)
        for attempt in range(3):  # another process may take the free port between probe and bind
            port = _free_port()
            try:
                app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, auth=auth)
                break
            except OSError:
                if attempt == 2:
                    raise
        try:
            yield f"http://127.0.0.1:{port}/"
        finally:
            app.close()


@pytest.fixture(scope="module")
def server(segmenter: Segmenter, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The app launched in this process on a free 127.0.0.1 port; closed after the module."""
    folder = tmp_path_factory.mktemp("serve_app")
    examples = make_refshapes_examples(folder / "examples", count=2)
    with _launched(segmenter, folder, examples=examples) as url:
        yield {"url": url, "examples": examples}


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    chromium = _tool("chromium", "/usr/bin/chromium")
    chromedriver = _tool("chromedriver", "/usr/bin/chromedriver")
    if chromium is None or chromedriver is None:
        pytest.skip("headless Chromium is not installed (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1600",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The demo page in the browser, by the element ids build_app sets."""

    def __init__(self, driver: Any, url: str) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.url, self.by = driver, url, By
        self.wait = WebDriverWait(driver, WAIT_S, poll_frequency=POLL_S)
        driver.get(url)
        self.wait.until(lambda d: "Upload an image and type a sentence." in self.text("#status"))
        self.wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image input[type=file]"))

    def find(self, css: str) -> Any:
        return self.driver.find_element(self.by.CSS_SELECTOR, css)

    def text(self, css: str) -> str:
        """The element's visible text, whitespace collapsed (inline code is laid out on its own line)."""
        elements = self.driver.find_elements(self.by.CSS_SELECTOR, css)
        return " ".join(elements[0].text.split()) if elements else ""

    def until(self, condition: Callable[[], Any], what: str) -> Any:
        from selenium.common.exceptions import TimeoutException

        try:
            return self.wait.until(lambda d: condition())
        except TimeoutException:
            raise AssertionError(
                f"timed out after {WAIT_S} s waiting for {what}; status: {self.text('#status')!r}; "
                f"clicks: {self.text('#clicks')!r}"
            ) from None

    def upload(self, path: Path, *, expect_image: bool = True) -> None:
        self.find("#image input[type=file]").send_keys(str(path))
        if expect_image:  # the upload is done once the picture shows; pressing Segment earlier sends no image
            self.until(
                lambda: self.driver.find_elements(self.by.CSS_SELECTOR, "#image img[src*='file=']"),
                f"{path.name} to show",
            )

    def remove_image(self) -> None:
        self.find("#image button[aria-label='Remove Image']").click()
        self.until(
            lambda: not self.driver.find_elements(self.by.CSS_SELECTOR, "#image img[src*='file=']"), "the image to go"
        )

    def type(self, sentence: str) -> None:
        box = self.find("#sentence textarea")
        box.clear()
        box.send_keys(sentence)

    def segment(self, *, expect: str) -> str:
        """Press Segment and return the status once it holds ``expect``."""
        self.find("#segment").click()
        self.until(lambda: expect in self.text("#status"), f"{expect!r} in the status")
        return self.text("#status")

    def click_mode(self, mode: str) -> None:
        self.find(f"#click-mode input[value='{mode}']").find_element(self.by.XPATH, "..").click()
        self.until(lambda: self.find(f"#click-mode input[value='{mode}']").is_selected(), f"click mode {mode!r}")

    def click_image(self, dx: int, dy: int) -> None:
        """Click the input picture ``dx, dy`` CSS pixels from its centre (a small image is shown at
        its natural size, centred: pixel = centre + offset)."""
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(self.driver).move_to_element_with_offset(self.find("#image img"), dx, dy).click().perform()

    def image_bytes(self, css: str) -> bytes:
        src = self.until(
            lambda: (
                self.find(css).get_attribute("src") if self.driver.find_elements(self.by.CSS_SELECTOR, css) else None
            ),
            f"an image in {css}",
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(src, timeout=10) as response:
            return response.read()


@pytest.fixture
def page(browser: Any, server: dict[str, Any]) -> Page:  # browser first: its skip is the cheap one
    return Page(browser, server["url"])


def _area_and_score(status: str) -> tuple[int, float]:
    match = re.search(r"area (\d+) px .*score (-?\d+\.\d+)", status)
    assert match, status
    return int(match.group(1)), float(match.group(2))


class TestPage:
    def test_upload_type_segment_shows_the_mask(self, page: Page, segmenter: Segmenter, files: dict[str, Path]) -> None:
        page.upload(files["scene"])
        page.type(SENTENCE)
        status = page.segment(expect="area")
        expected = segmenter.predict(files["scene"], SENTENCE)
        assert _area_and_score(status) == (expected.area, pytest.approx(expected.score, abs=6e-5))
        assert "of the 64x48 image" in status
        mask = np.asarray(Image.open(io.BytesIO(page.image_bytes("#mask img"))).convert("L"))
        np.testing.assert_array_equal(mask > 127, expected.mask)
        overlay = Image.open(io.BytesIO(page.image_bytes("#overlay img")))
        assert overlay.size == (64, 48)

    def test_enter_in_the_sentence_box_segments_too(
        self, page: Page, segmenter: Segmenter, files: dict[str, Path]
    ) -> None:
        from selenium.webdriver.common.keys import Keys

        page.upload(files["scene"])
        page.type("the blue square" + Keys.ENTER)
        page.until(lambda: "area" in page.text("#status"), "a result after Enter")
        expected = segmenter.predict(files["scene"], "the blue square")
        assert _area_and_score(page.text("#status"))[0] == expected.area

    def test_no_image(self, page: Page) -> None:
        page.type(SENTENCE)
        assert "Problem: no image" in page.segment(expect="no image")

    @pytest.mark.parametrize("sentence", ["", "   "], ids=["empty", "blank"])
    def test_empty_sentence(self, page: Page, files: dict[str, Path], sentence: str) -> None:
        page.upload(files["scene"])
        if sentence:
            page.type(sentence)
        assert "Problem: no sentence" in page.segment(expect="no sentence")

    def test_file_that_is_not_an_image(self, page: Page, files: dict[str, Path]) -> None:
        # A .txt file: Gradio's page refuses it with a message naming it ("Invalid file type: notes.txt ...",
        # Gradio 6), so Segment finds no image; were it let through, the server would name it instead.
        page.upload(files["text"], expect_image=False)
        page.type(SENTENCE)
        page.find("#segment").click()
        page.until(
            lambda: "notes.txt" in page.text("body") and re.search("no image|cannot read", page.text("#status")),
            "a message about notes.txt",
        )
        # A text file named .png passes that check and reaches the server, which says what is wrong.
        page.upload(files["fake"])
        status = page.segment(expect="cannot read")
        assert "cannot read fake.png as an image" in status and "Upload a picture file" in status

    def test_huge_image(self, page: Page, files: dict[str, Path]) -> None:
        page.upload(files["scene"])
        page.type(SENTENCE)
        page.segment(expect="area")
        assert page.driver.find_elements(page.by.CSS_SELECTOR, "#mask img")
        page.remove_image()
        page.upload(files["huge"])
        status = page.segment(expect="more than this demo accepts")
        assert "huge.png is 200x200 pixels" in status and "--max-pixels" in status
        assert not page.driver.find_elements(page.by.CSS_SELECTOR, "#mask img"), "no stale mask after a problem"

    def test_clicks_refine_with_points_and_a_box(
        self, page: Page, segmenter: Segmenter, files: dict[str, Path]
    ) -> None:
        page.upload(files["scene"])
        page.type(SENTENCE)
        page.click_image(0, 0)  # mode "off": nothing is added
        page.until(lambda: "Choose a click mode" in page.text("#clicks"), "the click-mode hint")
        page.click_mode(CLICK_FOREGROUND)
        page.click_image(-10, -6)
        status = page.until(
            lambda: "Clicks: foreground" in page.text("#status") and page.text("#status"), "a point result"
        )
        ((px, py),) = [tuple(map(int, xy)) for xy in re.findall(r"foreground \((\d+), (\d+)\)", status)]
        assert abs(px - 22) <= 2 and abs(py - 18) <= 2, status  # centre (32, 24) + offset
        page.click_mode(CLICK_BOX)
        page.click_image(20, 16)
        page.until(lambda: "click the opposite corner" in page.text("#clicks"), "the first box corner")
        page.click_image(6, 2)
        status = page.until(lambda: "box (" in page.text("#status") and page.text("#status"), "a box result")
        x1, y1, x2, y2 = map(int, re.search(r"box \((\d+), (\d+)\) to \((\d+), (\d+)\)", status).groups())
        assert abs(x1 - 38) <= 2 and abs(y1 - 26) <= 2 and abs(x2 - 52) <= 2 and abs(y2 - 40) <= 2, status
        expected = segmenter.predict(
            files["scene"],
            SENTENCE,
            points=(np.array([[px, py]], np.float64), np.array([1])),
            boxes=np.array([x1, y1, x2, y2], np.float64),
        )
        assert _area_and_score(status) == (expected.area, pytest.approx(expected.score, abs=6e-5))
        page.find("#clear-clicks").click()
        page.until(lambda: page.text("#clicks") == "Clicks: none (text only).", "the clicks to clear")

    def test_examples_fill_the_inputs(self, page: Page, server: dict[str, Any], segmenter: Segmenter) -> None:
        path, sentence = server["examples"][0]
        rows = page.driver.find_elements(page.by.CSS_SELECTOR, "#examples tbody tr")
        assert len(rows) == len(server["examples"])
        rows[0].click()
        page.until(lambda: page.find("#sentence textarea").get_attribute("value") == sentence, "the example sentence")
        page.until(
            lambda: page.driver.find_elements(page.by.CSS_SELECTOR, "#image img[src*='file=']"), "the example image"
        )
        status = page.segment(expect="area")
        expected = segmenter.predict(path, sentence)
        assert _area_and_score(status) == (expected.area, pytest.approx(expected.score, abs=6e-5))


# ---------------------------------------------------------------------------------------------------
# Beyond localhost: login, a bounded queue, a time limit per request (through Gradio's client)
# ---------------------------------------------------------------------------------------------------
class Gate:
    """Holds every prediction of a segmenter until :meth:`open`: the model is busy exactly as long as a
    test wants (no sleeps, no timing)."""

    def __init__(self, segmenter: Segmenter) -> None:
        self.entered, self.released = threading.Event(), threading.Event()
        predict = segmenter.predict

        def held(*args: Any, **kwargs: Any) -> Any:
            self.entered.set()
            assert self.released.wait(WAIT_S), "the test never opened the gate"
            return predict(*args, **kwargs)

        self.held = held

    def open(self) -> None:
        self.released.set()


@pytest.fixture
def gate(checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Segmenter, Gate]]:
    """A segmenter of its own whose predictions wait for the gate (opened after the test whatever happens)."""
    seg = Segmenter.from_pretrained(checkpoint, device="cpu", threshold=0.5, max_pixels=MAX_PIXELS)
    gate = Gate(seg)
    monkeypatch.setattr(seg, "predict", gate.held)
    try:
        yield seg, gate
    finally:
        gate.open()


def _client(url: str, **kwargs: Any) -> Any:
    gradio_client = pytest.importorskip("gradio_client", reason="gradio_client is not installed (it comes with gradio)")
    return gradio_client.Client(url, verbose=False, download_files=False, **kwargs)


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {WAIT_S} s waiting for {what}"
        time.sleep(POLL_S)


def _segment_via_api(client: Any, path: Path, sentence: str = SENTENCE) -> str:
    """The status line of one /segment call."""
    from gradio_client import handle_file

    return client.predict(handle_file(str(path)), sentence, api_name="/segment")[2]


def test_login_refuses_a_wrong_password_and_accepts_the_right_one(
    segmenter: Segmenter, files: dict[str, Path], tmp_path: Path
) -> None:
    with _launched(segmenter, tmp_path, auth=[("ann", "right"), ("bob", "other")]) as url:
        request = urllib.request.Request(
            f"{url}gradio_api/call/segment",
            data=b'{"data": []}',
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=WAIT_S)
        assert refused.value.code == 401, "the API refuses a caller who has not logged in"
        for auth in [("ann", "wrong"), ("ann", "other"), ("carl", "right")]:
            with pytest.raises(ValueError, match="Could not login"):
                _client(url, auth=auth)
        expected = segmenter.predict(files["scene"], SENTENCE)
        status = _segment_via_api(_client(url, auth=("ann", "right")), files["scene"])
        assert f"area {expected.area} px" in status, status


def test_a_full_queue_answers_busy(gate: tuple[Segmenter, Gate], files: dict[str, Path], tmp_path: Path) -> None:
    from gradio_client import handle_file
    from gradio_client.utils import QueueError, Status

    seg, gate = gate
    with _launched(seg, tmp_path, max_queue=2, request_timeout_s=10 * WAIT_S) as url:
        client = _client(url)

        def submit() -> Any:
            return client.submit(handle_file(str(files["scene"])), SENTENCE, api_name="/segment")

        running = submit()
        assert gate.entered.wait(WAIT_S), "the first request reaches the model"
        waiting = [submit(), submit()]
        for job in waiting:  # both join the queue behind the held request
            _until(lambda: job.status().code == Status.IN_QUEUE, "a request to join the queue")
        with pytest.raises(QueueError, match="Queue is full! Please try again"):
            _segment_via_api(client, files["scene"])
        gate.open()
        for job in [running, *waiting]:
            assert "area" in job.result(timeout=WAIT_S)[2], "the requests that were let in are answered"
        assert "area" in _segment_via_api(client, files["scene"]), "and once the queue drains, new ones are too"


def test_a_request_over_the_time_limit_is_answered_with_a_message(
    gate: tuple[Segmenter, Gate], files: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from gradio_client import handle_file

    seg, gate = gate
    with _launched(seg, tmp_path, request_timeout_s=1) as url, caplog.at_level("WARNING", logger="ditsam"):
        client = _client(url)
        overlay, mask, status = client.predict(handle_file(str(files["scene"])), SENTENCE, api_name="/segment")
        assert (overlay, mask) == (None, None)
        assert status.startswith("**Problem:** no answer within 1 s") and "--request-timeout" in status, status
        assert "Traceback" not in status
        assert "took more than 1 s (--request-timeout)" in caplog.text
        assert "the model finishes it in the background" in caplog.text
