"""Shared fixtures: a tiny random BERT (generated vocabulary, no download) and tiny model configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ditsam.model.config import DITSamConfig
from ditsam.model.text import build_tiny_bert

# The suite never touches the network: only tiny models and data built locally. Set before anything imports
# huggingface_hub (it reads the variable once); text models may download by default, so this matters.
os.environ["HF_HUB_OFFLINE"] = "1"

WORDS = "the a red blue green small large circle square triangle star left right of above below on".split()


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
    return [sys.executable, "-m", "accelerate.commands.launch", *placement, "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "ditsam.cli.main", *args]


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), words=WORDS, hidden_size=32, num_layers=2)


def tiny_config(bert_dir: Path, **overrides) -> DITSamConfig:
    """A DITSam small enough for CPU tests: 64 px input, 2 blocks of width 32, window 3 (pads 4 -> 6)."""
    data = dict(
        backbone="custom", embed_dim=32, depth=2, num_heads=2, global_attn_indexes=[1], image_size=64,
        window_size=3, prompt_embed_dim=32, decoder_mlp_dim=64, decoder_num_heads=2,
        text=dict(name_or_path=str(bert_dir), max_tokens=10),
    )
    text_overrides = overrides.pop("text", {})
    data.update(overrides)
    data["text"].update(text_overrides)
    return DITSamConfig.from_dict(data)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path) -> Path:
    """A saved tiny L-DIT whose projections are not zero, so the sentence changes the output."""
    from ditsam.model.dit import DITSam

    torch.manual_seed(0)
    model = DITSam(tiny_config(tiny_bert_dir, injection_zero_init=False))
    return model.save_pretrained(tmp_path_factory.mktemp("checkpoint") / "ckpt")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hub cache under tmp, offline (the constants are read when huggingface_hub is imported)."""
    from huggingface_hub import constants

    home = tmp_path / "hf_home"
    cache = home / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture
def no_network(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """:func:`hub_cache`, and any socket connection an error; returns the (empty) Hub cache."""
    import socket

    def refuse(self: socket.socket, address: object) -> None:
        raise OSError(f"test: no network allowed (connect to {address})")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    return hub_cache
