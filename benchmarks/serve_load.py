"""Bounded load test of the web demo: ``ditsam serve`` on 127.0.0.1 under concurrent hostile clients.

Starts ``ditsam serve`` as a subprocess on a free port of 127.0.0.1, then ``--clients`` threads send
requests through Gradio's HTTP API (upload, call ``/segment``, read the answer) for ``--duration``
seconds (at most two minutes), each request drawn at random from this mix:

- ``good``: a small RefShapes-like picture and a short sentence (the model runs);
- ``huge``: a 13000 x 13000 PNG of about 20 kB, over the server's ``--max-pixels`` (refused from the
  file header; before issue 11 the PNG was decoded first: ~0.7 GB and ~2 s per request);
- ``not_image``: a text file named ``.png``;
- ``long_sentence``: a good picture with a 5,000-character sentence (over the demo's limit).

Recorded: completed requests per second, p50 / p95 latency of the answered requests (overall and per
kind), the server's resident memory after warm-up and its peak during the run (``VmHWM`` / sampled
``VmRSS`` from ``/proc``, Linux), HTTP or Gradio errors, requests refused as busy (the queue held
``--max-queue`` waiting requests: HTTP 503; that client waits half a second before its next one),
requests answered with the time-limit message (``--request-timeout``), and every answer that shows a
traceback or a server path to the client. After the load the server must still be up and answer a
good request.

``--auth USER:PASSWORD`` serves behind Gradio's login (passed to the server in an auth file) and has
every client log in first; ``--max-queue`` and ``--request-timeout`` are passed to ``ditsam serve``.

Without ``--checkpoint`` a random tiny model of the RefShapes experiments' architecture (96 px, width
64, 4 blocks, generated BERT) is written to a temporary folder: the load test measures the server,
not the model's quality. Nothing is downloaded.

    .venv/bin/python benchmarks/serve_load.py --duration 60 --clients 4
    .venv/bin/python benchmarks/serve_load.py --duration 60 --clients 16 --auth bench:secret --max-queue 8

Writes ``benchmarks/results/serve_load.json`` (with the machine) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ditsam.web.access import parse_credentials
from ditsam.web.limits import DEFAULT_MAX_QUEUE, DEFAULT_REQUEST_TIMEOUT_S
from machine import machine_info

RESULTS = Path(__file__).parent / "results" / "serve_load.json"
MAX_DURATION_S = 120  # the test is bounded: at most two minutes of load
START_TIMEOUT_S = 180  # longest wait for the server to answer its first page
REQUEST_TIMEOUT_S = 120  # one request, queue included
MEMORY_SAMPLE_S = 0.25
HUGE_SIDE = 13_000  # 169 megapixels: over the default --max-pixels (40 MP), under PIL's own bomb limit x2
LONG_SENTENCE_CHARS = 5_000
#: (kind, weight) of the request mix.
MIX = (("good", 5), ("huge", 2), ("not_image", 2), ("long_sentence", 1))
SENTENCES = ("the small red circle", "the leftmost blue square", "the star right of the green triangle")
#: How the status line of a request answered at the server's time limit starts (ditsam.web.handler.over_time_limit).
TIMEOUT_STATUS = "**Problem:** no answer within"
#: HTTP status of a request refused because the queue is full (Gradio).
BUSY_HTTP_STATUS = 503
#: Seconds a client refused as busy waits before its next request, as the page asks a person to.
BUSY_BACKOFF_S = 0.5
# What must never reach a client: a Python traceback, or a path of the server's file system.
LEAK_PATTERNS = (re.compile(r"Traceback|File \"/"), re.compile(r"(/tmp/|/home/|/root/|/work/|gradio_api/file=)"))


@dataclasses.dataclass
class Outcome:
    kind: str
    seconds: float
    ok: bool  # the model answered with a mask
    problem: bool  # the page showed a "Problem:" message (the expected answer to bad input)
    error: str | None  # HTTP / Gradio failure
    leak: str | None  # a traceback or server path shown to the client
    busy: bool = False  # refused: the queue was full (the page says "busy, try again")
    timed_out: bool = False  # answered with the time-limit message


# ---------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------
def make_inputs(folder: Path) -> dict[str, Path]:
    """The files the clients upload."""
    rng = np.random.default_rng(0)
    scene = np.full((96, 128, 3), 40, np.uint8)
    scene[20:50, 10:40] = (220, 40, 40)
    scene[40:80, 70:110] = (40, 80, 220)
    scene += rng.integers(0, 20, scene.shape, dtype=np.uint8)
    files = {"good": folder / "scene.png", "huge": folder / "huge.png", "not_image": folder / "notes.png"}
    Image.fromarray(scene).save(files["good"])
    Image.new("1", (HUGE_SIDE, HUGE_SIDE)).save(files["huge"], optimize=True)
    files["not_image"].write_text("these are notes, not a picture\n" * 20, encoding="utf-8")
    return files


def make_checkpoint(folder: Path) -> Path:
    """A random model of the RefShapes experiments' architecture, saved as a checkpoint folder."""
    from ditsam.data.refshapes import REFSHAPES_WORDS
    from ditsam.engine.config import load_experiment
    from ditsam.engine.text_encoder import GENERATED_BERT_SIZES
    from ditsam.model.dit import DITSam
    from ditsam.model.text import build_tiny_bert

    bert = build_tiny_bert(folder / "bert", words=REFSHAPES_WORDS, **GENERATED_BERT_SIZES)
    config = load_experiment("refshapes/ldit").model
    config.text.name_or_path = str(bert)
    return DITSam(config).save_pretrained(folder / "checkpoint")


# ---------------------------------------------------------------------------------------------------
# One request through Gradio's HTTP API
# ---------------------------------------------------------------------------------------------------
def connect(base: str, auth: tuple[str, str] | None) -> urllib.request.OpenerDirector:
    """An HTTP client of its own (cookies kept), logged in to the demo when ``auth`` is given."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
    if auth is not None:
        form = urllib.parse.urlencode({"username": auth[0], "password": auth[1]}).encode()
        with opener.open(f"{base}login", data=form, timeout=REQUEST_TIMEOUT_S) as response:
            if not json.loads(response.read()).get("success"):
                raise RuntimeError(f"cannot log in to {base} as {auth[0]!r}")
    return opener


def _upload(opener: urllib.request.OpenerDirector, base: str, path: Path) -> str:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{path.name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        f"{base}gradio_api/upload",
        data=body,
        method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with opener.open(request, timeout=REQUEST_TIMEOUT_S) as response:
        return json.loads(response.read())[0]


def _segment(
    opener: urllib.request.OpenerDirector, base: str, server_path: str, name: str, sentence: str
) -> tuple[str, str]:
    """(event, data) of the answer to one /segment call: "complete" with the outputs, or "error"."""
    payload = {"data": [{"path": server_path, "orig_name": name, "meta": {"_type": "gradio.FileData"}}, sentence]}
    request = urllib.request.Request(
        f"{base}gradio_api/call/segment",
        data=json.dumps(payload).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with opener.open(request, timeout=REQUEST_TIMEOUT_S) as response:
        event_id = json.loads(response.read())["event_id"]
    with opener.open(f"{base}gradio_api/call/segment/{event_id}", timeout=REQUEST_TIMEOUT_S) as response:
        text = response.read().decode("utf-8", "replace")
    events = re.findall(r"^event: (\w+)\ndata: (.*)$", text, flags=re.MULTILINE)
    return events[-1] if events else ("none", text)


def one_request(
    opener: urllib.request.OpenerDirector, base: str, kind: str, files: dict[str, Path], rng: random.Random
) -> Outcome:
    sentence = rng.choice(SENTENCES)
    path = files["good"]
    if kind in ("huge", "not_image"):
        path = files[kind]
    elif kind == "long_sentence":
        sentence = ("the small red circle left of the blue square " * 200)[:LONG_SENTENCE_CHARS]
    started = time.perf_counter()
    try:
        event, data = _segment(opener, base, _upload(opener, base, path), path.name, sentence)
    except urllib.error.HTTPError as error:
        seconds = time.perf_counter() - started
        if error.code == BUSY_HTTP_STATUS:
            return Outcome(kind, seconds, False, False, None, None, busy=True)
        return Outcome(kind, seconds, False, False, f"HTTP {error.code}: {error.reason}", None)
    except (OSError, urllib.error.URLError, ValueError, KeyError, IndexError) as error:
        return Outcome(kind, time.perf_counter() - started, False, False, f"{type(error).__name__}: {error}", None)
    seconds = time.perf_counter() - started
    leak = next(
        (m.group(0) for pattern in LEAK_PATTERNS for m in [pattern.search(_shown_text(event, data))] if m), None
    )
    if event != "complete":
        return Outcome(kind, seconds, False, False, f"event {event}: {data[:200]}", leak)
    status = json.loads(data)[2]
    problem = status.startswith("**Problem:**")
    return Outcome(kind, seconds, not problem, problem, None, leak, timed_out=status.startswith(TIMEOUT_STATUS))


def _shown_text(event: str, data: str) -> str:
    """What the page would show of an answer: the status line (or the error), not the image URLs that
    Gradio's own file serving puts in the outputs."""
    if event != "complete":
        return data
    with contextlib.suppress(ValueError, IndexError, TypeError):
        return str(json.loads(data)[2])
    return data


# ---------------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _memory_kb(pid: int, field: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` of a process in kB (Linux), None elsewhere."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def start_server(checkpoint: Path, port: int, log: Path, options: list[str]) -> subprocess.Popen:
    """``ditsam serve`` on 127.0.0.1:``port`` with ``options``, once its page answers."""
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ditsam.cli.main",
                "serve",
                "--checkpoint",
                str(checkpoint),
                "--port",
                str(port),
                "--no-examples",
                "--device",
                "cpu",
                *options,
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5):
                return process
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"the server did not answer within {START_TIMEOUT_S} s")


# ---------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------
def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarise(outcomes: list[Outcome], wall: float) -> dict[str, Any]:
    def stats(selected: list[Outcome]) -> dict[str, Any]:
        seconds = [o.seconds for o in selected if not o.busy]  # latency of answers; a refusal is instant
        return {
            "requests": len(selected),
            "model_answers": sum(o.ok for o in selected),
            "problem_messages": sum(o.problem for o in selected),
            "errors": sum(o.error is not None for o in selected),
            "busy": sum(o.busy for o in selected),
            "timeouts": sum(o.timed_out for o in selected),
            "leaks": sum(o.leak is not None for o in selected),
            "p50_s": _percentile(seconds, 0.5),
            "p95_s": _percentile(seconds, 0.95),
            "mean_s": statistics.fmean(seconds) if seconds else None,
        }

    kinds = {kind: stats([o for o in outcomes if o.kind == kind]) for kind, _ in MIX}
    return {
        "wall_s": wall,
        "requests_per_s": len(outcomes) / wall if wall else 0.0,
        "all": stats(outcomes),
        "by_kind": kinds,
    }


def markdown(record: dict[str, Any]) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{1000 * value:.0f}"

    rows = [
        "| requests | n | model answers | problem messages | of them timeouts | busy | errors | leaks | p50 ms | p95 ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    summary = record["summary"]
    for label, stats in [("all", summary["all"]), *summary["by_kind"].items()]:
        rows.append(
            f"| {label} | {stats['requests']} | {stats['model_answers']} | {stats['problem_messages']} | "
            f"{stats['timeouts']} | {stats['busy']} | {stats['errors']} | {stats['leaks']} | "
            f"{ms(stats['p50_s'])} | {ms(stats['p95_s'])} |"
        )
    memory = record["server_memory_mb"]
    return "\n".join(rows) + (
        f"\n\n{summary['requests_per_s']:.2f} requests/s over {summary['wall_s']:.0f} s with {record['clients']} clients "
        f"({'login' if record['auth'] else 'no login'}, --max-queue {record['max_queue']}, "
        f"--request-timeout {record['request_timeout_s']:g}); "
        f"server memory {memory['after_warmup']:.0f} MB after warm-up, peak {memory['peak_during_load']:.0f} MB "
        f"during the load (VmHWM {memory['vm_hwm']:.0f} MB); server up afterwards: {record['server_up_after']}; "
        f"tracebacks in the server log: {record['server_log_tracebacks']}."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="model to serve (default: a random tiny RefShapes-size model)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    parser.add_argument("--duration", type=float, default=60.0, help=f"seconds of load (at most {MAX_DURATION_S})")
    parser.add_argument("--auth", metavar="USER:PASSWORD", help="serve behind this login; every client logs in first")
    parser.add_argument(
        "--max-queue",
        type=int,
        default=DEFAULT_MAX_QUEUE,
        help=f"the server's --max-queue (default {DEFAULT_MAX_QUEUE})",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=DEFAULT_REQUEST_TIMEOUT_S,
        help=f"the server's --request-timeout in seconds (default {DEFAULT_REQUEST_TIMEOUT_S:g})",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not 0 < args.duration <= MAX_DURATION_S:
        parser.error(f"--duration must lie in (0, {MAX_DURATION_S}] seconds")
    if args.clients < 1:
        parser.error("--clients must be >= 1")
    try:
        auth = parse_credentials(args.auth, source="--auth") if args.auth else None
    except ValueError as error:
        parser.error(str(error))

    with tempfile.TemporaryDirectory(prefix="ditsam-serve-load-") as tmp:
        folder = Path(tmp)
        files = make_inputs(folder)
        checkpoint = args.checkpoint or make_checkpoint(folder)
        port = _free_port()
        options = ["--max-queue", str(args.max_queue), "--request-timeout", str(args.request_timeout)]
        if auth is not None:  # a file, as an operator would: a password on a command line is visible in ps
            auth_file = folder / "auth.txt"
            auth_file.write_text(f"{auth[0]}:{auth[1]}\n", encoding="utf-8")
            options += ["--auth-file", str(auth_file)]
        server = start_server(checkpoint, port, folder / "server.log", options)
        base = f"http://127.0.0.1:{port}/"
        try:
            opener = connect(base, auth)
            warm = one_request(
                opener, base, "good", files, random.Random(args.seed)
            )  # the first call pays for lazy set-up
            if warm.error:
                raise RuntimeError(f"the warm-up request failed: {warm.error}")
            after_warmup = _memory_kb(server.pid, "VmRSS")
            outcomes: list[Outcome] = []
            lock, peak = threading.Lock(), [after_warmup or 0]
            deadline = time.monotonic() + args.duration
            kinds, weights = zip(*MIX)

            def client(index: int) -> None:
                rng = random.Random(args.seed * 1000 + index)
                session = connect(base, auth)
                while time.monotonic() < deadline:
                    outcome = one_request(session, base, rng.choices(kinds, weights)[0], files, rng)
                    with lock:
                        outcomes.append(outcome)
                    if outcome.busy:
                        time.sleep(BUSY_BACKOFF_S)

            threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.clients)]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            while any(thread.is_alive() for thread in threads):
                rss = _memory_kb(server.pid, "VmRSS")
                if rss:
                    peak[0] = max(peak[0], rss)
                time.sleep(MEMORY_SAMPLE_S)
            wall = time.perf_counter() - started
            after = one_request(opener, base, "good", files, random.Random(args.seed + 1))
            up = server.poll() is None and after.ok
            hwm = _memory_kb(server.pid, "VmHWM")
        finally:
            server.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(timeout=30)
            server.kill()
        log = (folder / "server.log").read_text(errors="replace")
    record = {
        "machine": machine_info(),
        "clients": args.clients,
        "duration_s": args.duration,
        "mix": dict(MIX),
        "auth": auth is not None,
        "max_queue": args.max_queue,
        "request_timeout_s": args.request_timeout,
        "checkpoint": "random tiny RefShapes-size model" if args.checkpoint is None else str(args.checkpoint),
        "summary": summarise(outcomes, wall),
        "server_memory_mb": {
            "after_warmup": (after_warmup or 0) / 1024,
            "peak_during_load": peak[0] / 1024,
            "vm_hwm": (hwm or 0) / 1024,
        },
        "server_up_after": up,
        "server_log_tracebacks": log.count("Traceback"),
        "first_errors": [o.error for o in outcomes if o.error][:5],
        "first_leaks": [f"{o.kind}: {o.leak}" for o in outcomes if o.leak][:5],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    print(markdown(record))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
