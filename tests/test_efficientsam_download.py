"""train.init_checkpoint=efficientsam_ti / efficientsam_s: the official files downloaded from a local HTTP server on
127.0.0.1 (the S file as the zip the authors publish), checked (an EfficientSAM state dict; the first download's
SHA-256 recorded, later uses checked against it), cached in torch's hub folder."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from checkpoint_files import cheap_state_dict, official_sam_shapes
from ditsam.engine.config import ExperimentConfig
from ditsam.engine.train import build_model
from ditsam.model.checkpoints import CheckpointError, resolve_init_checkpoint
from ditsam.model.checkpoints import efficientsam_download as files
from ditsam.model.checkpoints.efficientsam_download import (
    EfficientSamDownloadError,
    efficientsam_checkpoint_url,
    fetch_efficientsam_checkpoint,
)
from efficientsam_files import official_efficientsam_shapes, random_state_dict, save_official
from helpers import FileServer, download_server, tiny_config, unreachable_base_url

WIDTH, PROMPT = 32, 32


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FileServer]:
    """A local server as the base URL, torch's hub folder under tmp, downloads allowed."""
    with download_server(
        tmp_path, monkeypatch, base_url_env=files.EFFICIENTSAM_BASE_URL_ENV, folder="weights"
    ) as server:
        yield server


def cache(tmp_path: Path) -> Path:
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def official_tiny() -> dict[str, torch.Tensor]:
    return random_state_dict(official_efficientsam_shapes(width=WIDTH, depth=2, prompt=PROMPT, decoder_mlp=64))


def experiment(bert_dir: Path, init_checkpoint: str) -> ExperimentConfig:
    model = tiny_config(bert_dir, family="efficientsam", attention="global", global_attn_indexes=None).to_dict()
    return ExperimentConfig.from_dict({"model": model, "train": {"init_checkpoint": init_checkpoint}})


def test_official_names_and_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(files.EFFICIENTSAM_BASE_URL_ENV, raising=False)
    base = "https://github.com/yformer/EfficientSAM/raw/main/weights/"
    assert efficientsam_checkpoint_url("efficientsam_ti") == base + "efficient_sam_vitt.pt"
    assert efficientsam_checkpoint_url("efficientsam_s") == base + "efficient_sam_vits.pt.zip"
    with pytest.raises(ValueError, match="'efficientsam_m' is not an official EfficientSAM checkpoint name; known"):
        fetch_efficientsam_checkpoint("efficientsam_m")


def test_ti_by_name_is_downloaded_checked_and_cached(
    server: FileServer, tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    official = official_tiny()
    save_official(official, server.root / "weights" / "efficient_sam_vitt.pt")

    model = build_model(experiment(tiny_bert_dir, "efficientsam_ti"))

    cached = cache(tmp_path) / "efficient_sam_vitt.pt"
    assert sorted(p.name for p in cached.parent.iterdir()) == ["efficient_sam_vitt.pt", "efficient_sam_vitt.pt.sha256"]
    assert server.requests == ["/weights/efficient_sam_vitt.pt"]
    assert torch.equal(
        model.state_dict()["image_encoder.blocks.0.mlp.lin1.weight"], official["image_encoder.blocks.0.mlp.fc1.weight"]
    )
    # Cached: no second request, HF_HUB_OFFLINE=1 still finds it; an uncached name is then an error.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_init_checkpoint("efficientsam_ti") == cached
    assert len(server.requests) == 1
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE=1 forbids downloading it from http://127.0.0.1.*zip"):
        fetch_efficientsam_checkpoint("efficientsam_s")
    # A cached file that changed is refused, named.
    save_official(official_tiny() | {"prompt_encoder.invalid_points.weight": torch.ones(1, PROMPT)}, cached)
    with pytest.raises(CheckpointError, match=r"efficient_sam_vitt\.pt has changed since it was cached"):
        resolve_init_checkpoint("efficientsam_ti")


def test_s_is_unpacked_from_the_published_zip(server: FileServer, tiny_bert_dir: Path, tmp_path: Path) -> None:
    staging = save_official(official_tiny(), tmp_path / "efficient_sam_vits.pt")
    with zipfile.ZipFile(server.root / "weights" / "efficient_sam_vits.pt.zip", "w") as bundle:
        bundle.write(staging, "efficient_sam_vits.pt")
        bundle.writestr("__MACOSX/._efficient_sam_vits.pt", b"resource fork")
    path = fetch_efficientsam_checkpoint("efficientsam_s", progress=False)
    assert path == cache(tmp_path) / "efficient_sam_vits.pt" and path.read_bytes() == staging.read_bytes()
    assert sorted(p.name for p in path.parent.iterdir()) == ["efficient_sam_vits.pt", "efficient_sam_vits.pt.sha256"]
    build_model(experiment(tiny_bert_dir, "efficientsam_s"))  # loads strictly


def test_a_file_that_is_not_efficientsam_is_discarded(server: FileServer, tmp_path: Path) -> None:
    sam = cheap_state_dict(official_sam_shapes(width=32, depth=2, heads=2, global_blocks=(1,)))
    torch.save({k: v.contiguous() for k, v in sam.items()}, server.root / "weights" / "efficient_sam_vitt.pt")
    with pytest.raises(EfficientSamDownloadError, match="holds sam weights, not an EfficientSAM state dict; discarded"):
        fetch_efficientsam_checkpoint("efficientsam_ti", progress=False)
    (server.root / "weights" / "efficient_sam_vits.pt.zip").write_bytes(b"not a zip")
    with pytest.raises(EfficientSamDownloadError, match="efficient_sam_vits.pt.zip is not a zip file"):
        fetch_efficientsam_checkpoint("efficientsam_s", progress=False)
    assert not any(cache(tmp_path).iterdir()), "nothing, not even a staging folder, is left in the cache"


def test_an_unreachable_server_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = unreachable_base_url(monkeypatch, files.EFFICIENTSAM_BASE_URL_ENV)
    with pytest.raises(
        EfficientSamDownloadError,
        match=rf"efficientsam_ti: cannot download http://127\.0\.0\.1:{port}/efficient_sam_vitt\.pt.*"
        rf"DITSAM_EFFICIENTSAM_BASE_URL",
    ):
        fetch_efficientsam_checkpoint("efficientsam_ti", cache_dir=tmp_path / "cache", progress=False)
    assert not any((tmp_path / "cache").iterdir())
