"""The loading keywords users type from habit (transformers / huggingface_hub) reach huggingface_hub, work
offline against a local Hub cache, and ``device="auto"`` picks CUDA, then MPS, then the CPU, said once."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from ditsam.api import Segmenter
from ditsam.inference import devices
from ditsam.model.checkpoints import load_pretrained
from ditsam.model.dit import DITSam
from helpers import COMMIT_MAIN, REPO, publish

HABITS = dict(token="hf_test", local_files_only=True, force_download=True)


def test_keywords_load_from_another_cache_offline(hub_cache: Path, checkpoint: Path, tmp_path: Path) -> None:
    other = tmp_path / "other_cache"
    publish(other, REPO, {".": checkpoint}, commit=COMMIT_MAIN, ref="main")
    model = DITSam.from_pretrained(REPO, cache_dir=other, local_files_only=True, token=False, revision="main")
    assert str(other) in model.config.text.name_or_path
    segmenter = Segmenter.from_pretrained(REPO, cache_dir=other, local_files_only=True, device="cpu")
    assert segmenter.image_size == model.config.image_size
    with pytest.raises(FileNotFoundError, match="not in the Hub cache"):
        DITSam.from_pretrained(REPO, local_files_only=True)  # the default cache does not hold it


def test_local_files_only_is_named_when_the_cache_lacks_the_repo(
    hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # online, yet the keyword forbids downloading
    with pytest.raises(FileNotFoundError, match=r"local_files_only=True forbids downloading"):
        DITSam.from_pretrained("ditsam-test/missing", local_files_only=True)


@pytest.mark.parametrize("name", ["REPO", "REPO/weights/file.pth"])
def test_keywords_reach_huggingface_hub(
    name: str, hub_cache: Path, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    calls: list[dict] = []

    def fake(*args: object, **kwargs: object) -> str:
        calls.append(kwargs)
        raise huggingface_hub.errors.LocalEntryNotFoundError("test: recorded, not fetched")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    source = name.replace("REPO", REPO)
    loaders = (
        lambda **kw: DITSam.from_pretrained(source, **kw),
        lambda **kw: Segmenter.from_pretrained(source, device="cpu", **kw),
        lambda **kw: load_pretrained(DITSam, source, **kw),
    )
    for load in loaders:
        with pytest.raises(FileNotFoundError, match=REPO):
            load(revision="v1", cache_dir=tmp_path / "cache", **HABITS)
    assert len(calls) == len(loaders)
    for kwargs in calls:
        assert {key: kwargs[key] for key in HABITS} == HABITS
        assert kwargs["revision"] == "v1" and kwargs["cache_dir"] == tmp_path / "cache"


def test_auto_device_prefers_cuda_then_mps_then_cpu(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    caplog.set_level(logging.INFO, logger=devices.__name__)
    for cuda, mps, expected in ((True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
        devices.auto_device.cache_clear()
        caplog.clear()
        assert devices.resolve_device("auto") == devices.resolve_device(None) == torch.device(expected)
        said = [record.getMessage() for record in caplog.records]
        assert said == [f"device='auto': running on {expected}"], "chosen and said once"
    devices.auto_device.cache_clear()  # the next test sees this machine again


def test_segmenter_runs_on_the_auto_device_by_default(checkpoint: Path) -> None:
    devices.auto_device.cache_clear()
    segmenter = Segmenter.from_pretrained(checkpoint)
    assert segmenter.device == devices.auto_device()
    assert Segmenter.from_pretrained(checkpoint, device="auto", dtype="fp32").device == segmenter.device
