"""The authors' released checkpoints by name (``dit-refcoco``, ...), offline: downloaded from a local HTTP server
on 127.0.0.1 (the mirror variable), with a progress bar, resumed, converted once, loaded again with no network,
a changed file refused by its SHA-256, and the clear errors offline and without a source link."""

from __future__ import annotations

import dataclasses
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType

import pytest
import torch

from checkpoint_files import authors_file, logits
from ditsam.api import Segmenter
from ditsam.cli.main import main
from ditsam.model.checkpoints import (
    RELEASED_CHECKPOINTS,
    CheckpointError,
    ResolvedSource,
    fetch_released_file,
    released,
    resolve_init_checkpoint,
    resolve_pretrained,
)
from ditsam.model.checkpoints import load as loading
from ditsam.model.checkpoints.download import DownloadError, download_resumable
from ditsam.model.dit import DITSam
from helpers import FileServer, download_server

NAME = "dit-refcoco"


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FileServer]:
    """A local server as the mirror, torch's hub folder under tmp, downloads allowed."""
    from huggingface_hub import constants

    with download_server(tmp_path, monkeypatch, base_url_env=released.MIRROR_ENV) as mirror:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        yield mirror


def cache_of(tmp_path: Path, name: str = NAME) -> Path:
    return tmp_path / "torch_home" / "hub" / "checkpoints" / "ditsam" / name


def test_a_name_downloads_with_progress_converts_once_and_loads_offline(
    server: FileServer,
    tiny_bert_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> None:
    source = authors_file(tiny_bert_dir, server.root / f"{NAME}.pth", monkeypatch)

    segmenter = Segmenter.from_pretrained(NAME, text_name_or_path=str(tiny_bert_dir))

    assert server.requests == [f"/{NAME}.pth"]
    progress = capsys.readouterr().err
    assert f"{NAME}.pth" in progress and "100%" in progress, "a progress bar on stderr"
    cache = cache_of(tmp_path)
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == [
        f"{NAME}.pth",
        released.FOLDER_NAME,
        released.MANIFEST_FILE,
    ]
    assert (cache / released.FOLDER_NAME / "config.json").is_file()
    expected = logits(source)
    torch.testing.assert_close(logits(segmenter.model), expected)

    hub = request.getfixturevalue("no_network")  # offline, and any connection an error
    monkeypatch.setattr(loading, "_load_file", lambda *a, **k: pytest.fail("converted a second time"))
    again = DITSam.from_pretrained(NAME)
    assert torch.equal(logits(again), logits(segmenter.model))
    assert not any(hub.iterdir()), "the converted folder needs nothing from the Hub"
    assert resolve_init_checkpoint(NAME) == cache / f"{NAME}.pth"  # train.init_checkpoint=dit-refcoco
    assert resolve_pretrained(DITSam, NAME) == ResolvedSource(path=cache / released.FOLDER_NAME, released=NAME)  # eval
    destination = tmp_path / "converted"
    assert main(["convert", NAME, str(destination)]) == 0
    assert (destination / "model.safetensors").is_file()
    assert len(server.requests) == 1

    weights = cache / released.FOLDER_NAME / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(CheckpointError, match=rf"{NAME}: {weights} has changed since it was cached \(SHA-256"):
        DITSam.from_pretrained(NAME)


def test_a_partial_download_is_continued_with_a_range_request(server: FileServer, tmp_path: Path) -> None:
    payload = bytes(range(256)) * 64
    (server.root / f"{NAME}.pth").write_bytes(payload)
    cache = cache_of(tmp_path)
    cache.mkdir(parents=True)
    half = len(payload) // 2
    (cache / f"{NAME}.pth.part").write_bytes(payload[:half])

    path = fetch_released_file(NAME, progress=False)

    assert server.ranges == [f"bytes={half}-"]
    assert path.read_bytes() == payload and not (cache / f"{NAME}.pth.part").exists()


def test_a_partial_file_longer_than_the_source_is_discarded(server: FileServer, tmp_path: Path) -> None:
    (server.root / f"{NAME}.pth").write_bytes(b"short")
    cache = cache_of(tmp_path)
    cache.mkdir(parents=True)
    (cache / f"{NAME}.pth.part").write_bytes(b"a longer partial file")
    assert fetch_released_file(NAME, progress=False).read_bytes() == b"short"
    assert server.ranges == ["bytes=21-", None]


def test_a_changed_file_is_refused_by_its_sha256(server: FileServer, tmp_path: Path) -> None:
    (server.root / f"{NAME}.pth").write_bytes(b"the authors' weights")
    path = fetch_released_file(NAME, progress=False)
    assert fetch_released_file(NAME, progress=False) == path and len(server.requests) == 1

    path.write_bytes(b"other weights")
    with pytest.raises(CheckpointError, match=rf"{NAME}: {path} has changed since it was cached.*delete {path.parent}"):
        fetch_released_file(NAME, progress=False)


def test_offline_with_an_empty_cache_is_a_clear_error(
    no_network: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(
        FileNotFoundError,
        match=rf"dit-refcocog: the released checkpoint is not in the cache "
        rf"{cache_of(tmp_path, 'dit-refcocog')} and HF_HUB_OFFLINE=1",
    ):
        Segmenter.from_pretrained("dit-refcocog")
    assert main(["convert", "dit-refcocog", str(tmp_path / "out")]) == 2
    assert "HF_HUB_OFFLINE=1" in capsys.readouterr().err, "one line, not a traceback"


def test_without_a_source_link_the_mirror_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(released.MIRROR_ENV, raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    assert released.released_url("dit-grefcoco").startswith("https://drive.google.com/file/d/")
    table = dict(released.RELEASED_CHECKPOINTS)
    table["dit-grefcoco"] = dataclasses.replace(table["dit-grefcoco"], url=None)  # a name whose link is unknown
    monkeypatch.setattr(released, "RELEASED_CHECKPOINTS", MappingProxyType(table))
    with pytest.raises(DownloadError, match=rf"dit-grefcoco: .*source link.*{released.MIRROR_ENV}=<base URL>"):
        fetch_released_file("dit-grefcoco")
    with pytest.raises(ValueError, match="'dit-coco' is not a released DIT checkpoint name; known: dit-refcoco, "):
        fetch_released_file("dit-coco")


def test_a_google_drive_link_goes_through_gdown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, object]] = []

    def download(**kwargs: object) -> str:
        calls.append(kwargs)
        Path(str(kwargs["output"])).write_bytes(b"weights")
        return str(kwargs["output"])

    monkeypatch.setitem(sys.modules, "gdown", types.SimpleNamespace(download=download))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    url = "https://drive.google.com/file/d/abc/view"
    target = download_resumable(url, tmp_path / "f.pth", progress=False)
    assert target.read_bytes() == b"weights"
    assert calls == [{"url": url, "output": str(target), "quiet": True, "resume": True}]


def test_the_readme_lists_every_name() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    for name, entry in RELEASED_CHECKPOINTS.items():
        assert f"`{name}`" in readme, name
        assert f"`ditsam eval {name} {entry.eval_args} --protocol reference`" in readme, name
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{name}` | "))
        for split, scores in (entry.scores or {}).items():
            assert f"{split} {scores['published']:.2f}" in row, (name, split)
