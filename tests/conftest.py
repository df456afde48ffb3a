"""Shared fixtures. CPU only (but the gpu tier); tiny models; fixed seeds; one local Ray instance per test session
(started on demand)."""

from __future__ import annotations

import os
import random
import re
import shutil

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
torch.set_num_threads(2)


def _selects_gpu_tier(markexpr: str) -> bool:
    return re.search(r"(?<!not )\bgpu\b", markexpr) is not None


def pytest_configure(config: pytest.Config) -> None:
    # CUDA stays hidden (before anything initialises it) unless the run asks for the gpu tier (`-m gpu`, as
    # `make test-gpu` does): a CPU test then cannot pick up a GPU by chance. A CUDA_VISIBLE_DEVICES set by the caller
    # is kept either way.
    if not _selects_gpu_tier(config.getoption("markexpr", "") or ""):
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A `gpu` test is skipped, with the reason, where no CUDA device is visible."""
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if gpu_items and not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device (none visible; the gpu tier runs with -m gpu)")
        for item in gpu_items:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fixed_seeds() -> None:
    """Every test starts from the same RNG state (torch, CUDA included; numpy's global; random): a test's random
    draws do not depend on which tests ran before it, so a failure reproduces when the test runs alone."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)


@pytest.fixture
def seed() -> int:
    torch.manual_seed(0)
    return 0


@pytest.fixture(scope="session")
def ray_session():
    """A private local Ray instance (own temp dir, 4 logical CPUs, no dashboard), shared by the whole test session;
    like the product's private Ray, it has a token of its own and listens on 127.0.0.1 only.

    Never touches other Ray clusters on the machine: no address lookup, and shutdown only ends what it started.
    """
    ray = pytest.importorskip("ray")
    from pipelines import ray_session

    os.environ.pop("RAY_ADDRESS", None)
    # 4 logical CPUs on the 2 cores: 2 Ray Train workers plus room for Ray Data decode tasks
    with ray_session.connect(None, num_cpus=4, object_store_mb=1430, log_to_driver=False):
        yield ray


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory):
    """A small synthetic benchmark of real mp4 files (24 train / 8 val / 8 test videos)."""
    from glccl.data import synth

    root = tmp_path_factory.mktemp("synth")
    synth.generate(root, num_train=24, num_val=8, num_test=8, seed=1, size=64, fps=8, seconds=2.0, workers=1)
    return root


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture
def chromium() -> str:
    """Headless Chromium's path. Missing, a test that needs it fails under CI (``CI=true``: `.ci/run` installs
    Debian's chromium) and skips elsewhere, with the reason."""
    path = chromium_path()
    if path is None:
        why = "needs headless Chromium (Debian: apt-get install -y chromium)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(why + "; CI must have it")
        pytest.skip(why)
    return path
