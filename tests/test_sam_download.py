"""train.init_checkpoint from every source: SAM by name (downloaded from a local HTTP server on 127.0.0.1,
hash-checked, cached in torch's hub folder), a Hub id from a local Hub cache, a local folder."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from checkpoint_files import randomise
from ditsam.engine.config import ExperimentConfig
from ditsam.engine.train import build_model
from ditsam.model.checkpoints import download as sam_files
from ditsam.model.checkpoints import resolve_init_checkpoint
from ditsam.model.checkpoints.download import SamDownloadError, fetch_sam_checkpoint, hash_prefix_of, sam_checkpoint_url
from ditsam.model.checkpoints.keys import SAM_PREFIXES
from ditsam.model.dit import DITSam
from helpers import COMMIT_MAIN, REPO, FileServer, download_server, publish, tiny_config, unreachable_base_url

HASH_DIGITS = 6


@pytest.fixture
def sam_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FileServer]:
    """A local server as the base URL, torch's hub folder under tmp, downloads allowed."""
    with download_server(
        tmp_path, monkeypatch, base_url_env=sam_files.BASE_URL_ENV, folder="segment_anything"
    ) as server:
        yield server


def serve_sam_file(server: FileServer, state: dict[str, torch.Tensor], *, stem: str, prefix: str | None = None) -> str:
    """Save ``state`` under ``<stem>_<prefix>.pth`` (default prefix: the file's real SHA-256 prefix)."""
    staging = server.root / "staging.pth"
    torch.save(state, staging)
    digest = hashlib.sha256(staging.read_bytes()).hexdigest()
    name = f"{stem}_{prefix or digest[:HASH_DIGITS]}.pth"
    staging.rename(server.root / "segment_anything" / name)
    return name


def sam_part(model: DITSam) -> dict[str, torch.Tensor]:
    """The SAM-named tensors of a model (an official SAM file holds exactly these names)."""
    return {
        k: v.clone()
        for k, v in model.state_dict().items()
        if k.startswith(SAM_PREFIXES) and not k.startswith("image_encoder.injection.")
    }


def experiment(bert_dir: Path, init_checkpoint: str) -> ExperimentConfig:
    return ExperimentConfig.from_dict(
        {"model": tiny_config(bert_dir).to_dict(), "train": {"init_checkpoint": init_checkpoint}}
    )


def test_official_names_and_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(sam_files.BASE_URL_ENV, raising=False)
    assert sam_checkpoint_url("sam_vit_b") == "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"
    assert sam_checkpoint_url("sam_vit_l").endswith("/sam_vit_l_0b3195.pth")
    assert sam_checkpoint_url("sam_vit_h").endswith("/sam_vit_h_4b8939.pth")
    assert [hash_prefix_of(name) for name in sam_files.SAM_CHECKPOINTS.values()] == ["01ec64", "0b3195", "4b8939"]
    with pytest.raises(ValueError, match="'sam_vit_x' is not an official SAM checkpoint name; known: sam_vit_b"):
        fetch_sam_checkpoint("sam_vit_x")


def test_sam_by_name_is_downloaded_verified_and_cached(
    sam_server: FileServer, tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = sam_part(randomise(DITSam(tiny_config(tiny_bert_dir)), seed=4))
    name = serve_sam_file(sam_server, weights, stem="sam_vit_b")
    monkeypatch.setitem(sam_files.SAM_CHECKPOINTS, "sam_vit_b", name)

    model = build_model(experiment(tiny_bert_dir, "sam_vit_b"))

    cached = tmp_path / "torch_home" / "hub" / "checkpoints" / name
    assert cached.is_file() and sorted(p.name for p in cached.parent.iterdir()) == [name]
    assert sam_server.requests == [f"/segment_anything/{name}"]
    state = model.state_dict()
    assert all(torch.equal(state[key], value) for key, value in weights.items())

    # Cached: no second request, and HF_HUB_OFFLINE=1 still finds it; an uncached name is then an error.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_init_checkpoint("sam_vit_b") == cached
    assert len(sam_server.requests) == 1
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE=1 forbids downloading it from http://127.0.0.1"):
        fetch_sam_checkpoint("sam_vit_l")


def test_a_file_failing_the_hash_check_is_discarded(
    sam_server: FileServer, tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = sam_part(DITSam(tiny_config(tiny_bert_dir)))
    name = serve_sam_file(sam_server, weights, stem="sam_vit_l", prefix="000000")
    monkeypatch.setitem(sam_files.SAM_CHECKPOINTS, "sam_vit_l", name)

    with pytest.raises(
        SamDownloadError,
        match=rf"sam_vit_l: the file downloaded from http://127\.0\.0\.1.*{name}: its "
        rf"SHA-256 does not start with 000000.*discarded",
    ):
        build_model(experiment(tiny_bert_dir, "sam_vit_l"))

    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    assert not any(cache.iterdir()), "nothing, not even a partial file, is left in the cache"


def test_an_unreachable_server_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = unreachable_base_url(monkeypatch, sam_files.BASE_URL_ENV)
    with pytest.raises(
        SamDownloadError,
        match=rf"sam_vit_h: cannot download http://127\.0\.0\.1:{port}/sam_vit_h_4b8939"
        rf"\.pth.*DITSAM_SAM_BASE_URL",
    ):
        fetch_sam_checkpoint("sam_vit_h", cache_dir=tmp_path / "cache", progress=False)
    assert not any((tmp_path / "cache").iterdir())


def test_init_checkpoint_takes_a_hub_id_and_a_folder(hub_cache: Path, checkpoint: Path, tiny_bert_dir: Path) -> None:
    snapshot = publish(hub_cache, REPO, {".": checkpoint}, commit=COMMIT_MAIN, ref="main")
    assert resolve_init_checkpoint(REPO) == snapshot
    expected = DITSam.from_pretrained(checkpoint).state_dict()
    for source in (REPO, str(checkpoint)):
        config = experiment(tiny_bert_dir, source)
        config.model.injection_options.zero_init = False  # the saved fixture's setting, so the configs agree
        state = build_model(config).state_dict()
        assert all(torch.equal(state[key], value) for key, value in expected.items())
    with pytest.raises(FileNotFoundError, match="'ditsam-test/missing'"):
        build_model(experiment(tiny_bert_dir, "ditsam-test/missing"))
