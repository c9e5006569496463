"""Shared fixtures: a tiny random BERT (generated vocabulary, no download) and a saved tiny model; the
markers (``slow`` by module, ``browser`` for tests that drive headless Chromium); the hypothesis profiles of the
property tests. Helpers that tests import live in ``helpers.py`` (``strategies.py`` for the property tests)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

from ditsam.model.text import build_tiny_bert
from helpers import WORDS, tiny_config

# The suite never touches the network: only tiny models and data built locally. Set before anything imports
# huggingface_hub (it reads the variable once); text models may download by default, so this matters.
os.environ["HF_HUB_OFFLINE"] = "1"

# Property tests (test_properties_*.py): "ci" keeps the whole property suite near a minute on one core (a few
# hundred examples per reader); HYPOTHESIS_PROFILE=long runs thousands per test. No deadline: the machines are
# shared and timings vary; readers write and read files, which hypothesis would call too slow.
PROPERTY_EXAMPLES = {"ci": 200, "long": 2000}


def _share_the_cores_between_workers() -> None:
    """Each pytest-xdist worker gets its share of the cores: torch's threads spin while they wait, so two workers
    of two threads each on two cores run every heavy test several times slower than one thread each."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def pytest_configure(config: pytest.Config) -> None:
    _share_the_cores_between_workers()
    for name, examples in PROPERTY_EXAMPLES.items():
        settings.register_profile(
            name,
            max_examples=examples,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# Modules whose tests train, generate datasets, export, serve or download: `pytest -m "not slow"` leaves them out.
SLOW_MODULES = frozenset(
    {
        "test_engine",
        "test_export",
        "test_finetune",
        "test_finetune_memory_smoke",
        "test_gpu_suite",
        "test_gres",
        "test_int8",
        "test_int8_cache",
        "test_multimask",
        "test_notebook",
        "test_predict_processes",
        "test_recipe",
        "test_run_safety",
        "test_run_scale",
        "test_serve",
        "test_step",
        "test_trackers",
        "test_wheel",
    }
)


# Modules whose tests each launch several processes for tens of seconds. They run first, so that pytest-xdist
# fills the other worker with short tests around them instead of leaving one of them to finish alone at the end.
LONG_MODULES = (
    "test_run_scale",
    "test_gpu_suite",
    "test_wheel",
    "test_finetune_memory_smoke",
    "test_predict_processes",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.module is None or item.module.__name__ not in LONG_MODULES)
    for item in items:
        if item.module is not None and item.module.__name__ in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
        if "browser" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), words=WORDS, hidden_size=32, num_layers=2)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path) -> Path:
    """A saved tiny L-DIT whose projections are not zero, so the sentence changes the output."""
    from ditsam.model.dit import DITSam

    torch.manual_seed(0)
    model = DITSam(tiny_config(tiny_bert_dir, injection_options=dict(zero_init=False)))
    return model.save_pretrained(tmp_path_factory.mktemp("checkpoint") / "ckpt")


@pytest.fixture(scope="module")
def refshapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few tiny RefShapes images in the REFER layout (seed 3), generated once per test module."""
    from ditsam.data.refshapes import generate_refshapes

    root = tmp_path_factory.mktemp("refshapes")
    generate_refshapes(root, seed=3, preset="tiny", num_images={"train": 3, "val": 2, "testA": 1, "testB": 1})
    return root


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session", autouse=True)
def _float32_by_default(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """dtype="auto" reads the CPU's flags, and the machines' CPUs change from session to session: in-process
    tests see a CPU without bf16 instructions (auto = float32), so their numbers do not depend on the machine.
    Session-wide, so that module-scoped segmenters see it too; tests/test_dtype_auto.py sets the flags it tests."""
    from ditsam.inference import devices

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(devices, "_CPUINFO", str(tmp_path_factory.getbasetemp() / "no-cpuinfo"))
        devices.auto_dtype.cache_clear()
        yield
    devices.auto_dtype.cache_clear()


@pytest.fixture(scope="session", autouse=True)
def _int8_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """dtype="int8" caches the quantised model (ditsam.int8_cache): in the tests, in a session folder, never in
    the user's torch hub folder."""
    from ditsam.int8_cache import CACHE_ENV

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("int8_cache")))
        yield


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
