"""Helpers the tests share, importable as ``from helpers import ...`` (pytest puts ``tests/`` on the path):
tiny model and experiment configs, COCO RLE counts, multi-process launch commands, a local Hugging Face cache, a
local HTTP file server, and a parser of RefShapes sentences
written independently of the generator, to check what it writes. Fixtures stay in ``conftest.py``;
checkpoint files in others' layouts are built by ``checkpoint_files.py``.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import math
import re
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ditsam.data.refshapes import COLOURS
from ditsam.engine.config import ExperimentConfig
from ditsam.model.config import DITSamConfig

# ---------------------------------------------------------------------------------------------------
# Tiny models and experiments
# ---------------------------------------------------------------------------------------------------
WORDS = "the a red blue green small large circle square triangle star left right of above below on".split()


def tiny_config(bert_dir: Path, **overrides) -> DITSamConfig:
    """A DITSam small enough for CPU tests: 64 px input, 2 blocks of width 32, window 3 (pads 4 -> 6)."""
    data = dict(
        backbone="custom",
        embed_dim=32,
        depth=2,
        num_heads=2,
        global_attn_indexes=[1],
        image_size=64,
        window_size=3,
        prompt_embed_dim=32,
        decoder_mlp_dim=64,
        decoder_num_heads=2,
        text=dict(name_or_path=str(bert_dir), max_tokens=10),
    )
    text_overrides = overrides.pop("text", {})
    data.update(overrides)
    data["text"].update(text_overrides)
    return DITSamConfig.from_dict(data)


TINY_MODEL = dict(
    backbone="custom",
    embed_dim=16,
    depth=2,
    num_heads=2,
    global_attn_indexes=[1],
    patch_size=8,
    image_size=32,
    prompt_embed_dim=16,
    decoder_mlp_dim=32,
    decoder_num_heads=2,
    injection="layerwise",
    injection_options=dict(zero_init=False),
)


def tiny_experiment(
    root: Path, bert_dir: Path, *, data_format: str = "refshapes", model: dict | None = None, **train_overrides
) -> ExperimentConfig:
    """The tiny model on generated data at ``root`` (``data_format`` refshapes or grefshapes, seed 3), a few steps'
    recipe; ``model`` entries are added to TINY_MODEL's, keyword arguments override the train section."""
    train = dict(
        epochs=2,
        batch_size=4,
        micro_batch_size=2,
        lr=1e-3,
        ema_decay=0.5,
        mixed_precision="no",
        num_visualizations=2,
        select_metric="miou",
        schedule=dict(warmup_epochs=0.5),
    )
    train.update(train_overrides)
    return ExperimentConfig.from_dict(
        dict(
            name="tiny",
            model={**TINY_MODEL, **(model or {}), "text": {"name_or_path": str(bert_dir), "max_tokens": 12}},
            data=dict(
                format=data_format, root=str(root), refshapes_seed=3, eval_splits=["val", "testB"], num_workers=0
            ),
            train=train,
        )
    )


# ---------------------------------------------------------------------------------------------------
# Annotations
# ---------------------------------------------------------------------------------------------------
def uncompressed_counts(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE counts of a bool (H, W) mask: run lengths in column-major order, starting
    with a run of zeros."""
    flat = mask.flatten(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    return runs if flat[0] == 0 else [0] + runs


# ---------------------------------------------------------------------------------------------------
# Several processes: `accelerate launch` of the ditsam command
# ---------------------------------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port nothing listens on now (for a process group's rendezvous)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_command(processes: int, *args: str) -> list[str]:
    """``accelerate launch`` of ``processes`` CPU processes running ``python -m ditsam.cli.main ARGS``.
    Two or more need ``--multi_gpu`` (accelerate then starts them with torchrun, on gloo with ``--device
    cpu``): its ``--cpu --num_processes 2`` starts a single process."""
    import sys

    placement = ["--cpu"] if processes == 1 else ["--multi_gpu", "--main_process_port", str(free_port())]
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *placement,
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "ditsam.cli.main",
        *args,
    ]


def evaluation_by_process_count(checkpoint: Path, out_root: Path, splits: tuple[str, ...] = ("val", "testB")) -> None:
    """Run ``ditsam eval`` on ``checkpoint`` with 1 and with 2 CPU processes and assert the two results.json
    agree on every split and value (sums across processes, no sample counted twice), and that 2 really ran."""
    import json
    import os
    import subprocess

    import pytest

    outputs = {}
    for processes in (1, 2):
        out = out_root / f"eval{processes}"
        command = launch_command(
            processes, "eval", str(checkpoint), "--out", str(out), "--splits", *splits, "--device", "cpu"
        )
        completed = subprocess.run(
            command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300
        )
        assert completed.returncode == 0, completed.stderr[-3000:]
        outputs[processes] = json.loads((out / "results.json").read_text())
    for split in splits:
        assert outputs[1][split].pop("processes") == 1 and outputs[2][split].pop("processes") == 2
        assert outputs[2][split]["count"] == outputs[1][split]["count"]
        for key, value in outputs[1][split].items():
            expected = pytest.approx(value, abs=1e-9) if isinstance(value, float) else value
            assert outputs[2][split][key] == expected, (split, key)


# ---------------------------------------------------------------------------------------------------
# A local Hub cache, laid out as huggingface_hub lays it out
# ---------------------------------------------------------------------------------------------------
COMMIT_MAIN = "a" * 40
COMMIT_V1 = "b" * 40
REPO = "ditsam-test/tiny"


def publish(cache: Path, repo_id: str, files: dict[str, Path], *, commit: str, ref: str) -> Path:
    """Lay ``files`` (name in the repo -> local file or folder) out as a cached snapshot, ``refs/<ref>`` -> commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for name, local in files.items():
        target = snapshot / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if local.is_dir():
            shutil.copytree(local, target)
        else:
            shutil.copyfile(local, target)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return snapshot


# ---------------------------------------------------------------------------------------------------
# A static file server on 127.0.0.1 (downloads are tested against it)
# ---------------------------------------------------------------------------------------------------
class FileServer:
    """Serves ``root`` on 127.0.0.1, with HTTP Range requests (``bytes=N-``, what resumed downloads send);
    ``requests`` lists the GET paths, ``ranges`` their Range headers (None without)."""

    def __init__(self, root: Path, *, prefix: str = "") -> None:
        self.root = root
        self.prefix = prefix
        self.requests: list[str] = []
        self.ranges: list[str | None] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.requests.append(self.path)
                server.ranges.append(self.headers.get("Range"))
                start = _range_start(self.headers.get("Range"))
                path = Path(self.translate_path(self.path))
                if start is None or not path.is_file():
                    super().do_GET()
                    return
                data = path.read_bytes()
                if start >= len(data):
                    self.send_error(416)
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                self.wfile.write(data[start:])

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/{self.prefix}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def _range_start(header: str | None) -> int | None:
    match = re.fullmatch(r"bytes=(\d+)-", header or "")
    return int(match.group(1)) if match else None


@contextlib.contextmanager
def download_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, base_url_env: str, folder: str = ""
) -> Iterator[FileServer]:
    """A :class:`FileServer` of ``tmp_path/served`` whose ``folder`` is the base URL in ``base_url_env``, torch's
    hub folder under ``tmp_path/torch_home``, downloads allowed (``HF_HUB_OFFLINE`` unset)."""
    root = tmp_path / "served"
    (root / folder).mkdir(parents=True)
    server = FileServer(root, prefix=f"{folder}/" if folder else "")
    monkeypatch.setenv(base_url_env, server.url)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    try:
        yield server
    finally:
        server.close()


def unreachable_base_url(monkeypatch: pytest.MonkeyPatch, base_url_env: str) -> int:
    """Point ``base_url_env`` at a port of 127.0.0.1 that nobody listens on, downloads allowed; returns the port."""
    with socket.socket() as probe:  # bound, then closed: the port is free and nothing answers on it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv(base_url_env, f"http://127.0.0.1:{port}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return port


# ---------------------------------------------------------------------------------------------------
# RefShapes sentences, parsed without the generator's code
# ---------------------------------------------------------------------------------------------------
SIZE_OF_WORD = {"small": "small", "little": "small", "large": "large", "big": "large"}
COLOUR_PATTERN = "|".join(COLOURS)
_SHAPE = "square|triangle|star|hexagon|diamond|cross|circle|ring|heart"
NOUN_PHRASE_PATTERN = rf"(?:(small|little|large|big) )?(?:({COLOUR_PATTERN}) )?({_SHAPE}|shape|object|one)"
_ORD = {"first": 0, "second": 1, "third": 2, "fourth": 3}
_EXTREME_WORDS = {
    "leftmost": "left",
    "rightmost": "right",
    "topmost": "top",
    "highest": "top",
    "bottommost": "bottom",
    "lowest": "bottom",
    "left": "left",
    "right": "right",
    "upper": "top",
    "top": "top",
    "lower": "bottom",
    "bottom": "bottom",
}
_PAIR_ONLY = {"left", "right", "upper", "top", "lower", "bottom"}
RELATIONS = {
    "left of": "left",
    "to the left of": "left",
    "right of": "right",
    "to the right of": "right",
    "above": "above",
    "higher than": "above",
    "below": "below",
    "under": "below",
    "beneath": "below",
    "closest to": "closest",
    "nearest to": "closest",
    "nearest": "closest",
}
RELATION_PATTERN = "|".join(sorted(RELATIONS, key=len, reverse=True))
# (words after the noun phrase, whether they presume exactly two candidates)
_TRAILING_POSITIONS = (
    ("furthest to the (left|right)", False),
    ("on the far (left|right)", False),
    ("nearest the (top|bottom)", False),
    ("at the very (top|bottom)", False),
    ("on the (left|right)", True),
    ("on top", True),
    ("at the bottom", True),
)


def _phrase(groups: tuple) -> tuple:
    size, colour, noun = groups
    return (SIZE_OF_WORD.get(size) if size else None, colour, noun if noun not in ("shape", "object", "one") else None)


def parse(sentence: str) -> dict:
    """Sentence -> program, with a grammar written independently of the generator's templates."""
    m = re.fullmatch(rf"(?:the )?{NOUN_PHRASE_PATTERN} ({RELATION_PATTERN}) (?:the )?{NOUN_PHRASE_PATTERN}", sentence)
    if m:
        g = m.groups()
        return {"kind": "relation", "np": _phrase(g[0:3]), "relation": RELATIONS[g[3]], "anchor": _phrase(g[4:7])}
    m = re.fullmatch(
        rf"(?:the )?(first|second|third|fourth) {NOUN_PHRASE_PATTERN} from the (left|right|top|bottom)", sentence
    )
    if m:
        g = m.groups()
        return {"kind": "ordinal", "np": _phrase(g[1:4]), "rank": _ORD[g[0]], "side": g[4]}
    m = re.fullmatch(
        rf"(?:the )?{NOUN_PHRASE_PATTERN} (first|second|third|fourth) from the (left|right|top|bottom)", sentence
    )
    if m:
        g = m.groups()
        return {"kind": "ordinal", "np": _phrase(g[0:3]), "rank": _ORD[g[3]], "side": g[4]}
    m = re.fullmatch(rf"(?:the )?middle {NOUN_PHRASE_PATTERN}|the {NOUN_PHRASE_PATTERN} in the middle", sentence)
    if m:
        g = m.groups()
        return {"kind": "middle", "np": _phrase(g[0:3] if g[2] else g[3:6])}
    m = re.fullmatch(
        rf"(?:the )?(leftmost|rightmost|topmost|highest|bottommost|lowest|left|right|upper|top|lower|bottom) {NOUN_PHRASE_PATTERN}",
        sentence,
    )
    if m:
        g = m.groups()
        return {
            "kind": "ordinal",
            "np": _phrase(g[1:4]),
            "rank": 0,
            "side": _EXTREME_WORDS[g[0]],
            "pair": g[0] in _PAIR_ONLY,
        }
    for pattern, pair in _TRAILING_POSITIONS:
        m = re.fullmatch(rf"the {NOUN_PHRASE_PATTERN} {pattern}", sentence)
        if m:
            g = m.groups()
            side = g[3] if len(g) > 3 else ("top" if sentence.endswith("top") else "bottom")
            return {"kind": "ordinal", "np": _phrase(g[0:3]), "rank": 0, "side": side, "pair": pair}
    m = re.fullmatch(rf"(?:the )?{NOUN_PHRASE_PATTERN}(?: in the (?:picture|image))?", sentence)
    if m:
        return {"kind": "attribute", "np": _phrase(m.groups())}
    raise AssertionError(f"sentence outside the grammar: {sentence!r}")


def referents(program: dict, objects: list[dict]) -> set[int]:
    """Indices of the objects the program describes, by plain (two-valued) comparisons."""

    def matching(phrase: tuple) -> list[int]:
        size, colour, shape = phrase
        return [
            i
            for i, o in enumerate(objects)
            if (size is None or o["size"] == size)
            and (colour is None or o["colour"] == colour)
            and (shape is None or o["shape"] == shape)
        ]

    def key(i: int, side: str) -> float:
        return {
            "left": objects[i]["cx"],
            "right": -objects[i]["cx"],
            "top": objects[i]["cy"],
            "bottom": -objects[i]["cy"],
        }[side]

    members = matching(program["np"])
    kind = program["kind"]
    if kind == "attribute":
        return set(members)
    if kind == "ordinal":
        if program.get("pair") and len(members) != 2:
            return set()
        keys = {i: key(i, program["side"]) for i in members}
        return {
            i
            for i in members
            if sum(keys[o] < keys[i] for o in members) == program["rank"] and list(keys.values()).count(keys[i]) == 1
        }
    if kind == "middle":
        if len(members) != 3:
            return set()
        xs = [objects[i]["cx"] for i in members]
        ys = [objects[i]["cy"] for i in members]
        side = "left" if max(xs) - min(xs) > max(ys) - min(ys) else "top"
        return {sorted(members, key=lambda i: key(i, side))[1]}
    anchors = matching(program["anchor"])
    if len(anchors) != 1:
        return set()
    a = anchors[0]
    candidates = [i for i in members if i != a]
    dx = {i: objects[i]["cx"] - objects[a]["cx"] for i in candidates}
    dy = {i: objects[i]["cy"] - objects[a]["cy"] for i in candidates}
    relation = program["relation"]
    if relation == "closest":
        distance = {i: math.hypot(dx[i], dy[i]) for i in candidates}
        best = min(distance.values())
        return {i for i in candidates if distance[i] == best}
    test = {
        "left": lambda i: dx[i] < 0,
        "right": lambda i: dx[i] > 0,
        "above": lambda i: dy[i] < 0,
        "below": lambda i: dy[i] > 0,
    }
    return {i for i in candidates if test[relation](i)}


def scene_objects(instances: dict, scenes: dict) -> dict[int, list[dict]]:
    """Per image: objects with shape (category), colour and size (scenes.json), centre (bbox)."""
    categories = {c["id"]: c["name"] for c in instances["categories"]}
    annotations = {a["id"]: a for a in instances["annotations"]}
    out = {}
    for image in scenes["images"]:
        objects = []
        for obj in image["objects"]:
            ann = annotations[obj["ann_id"]]
            x, y, w, h = ann["bbox"]
            assert categories[ann["category_id"]] == obj["shape"]
            objects.append({**obj, "cx": x + w / 2, "cy": y + h / 2})
        out[image["image_id"]] = objects
    return out
