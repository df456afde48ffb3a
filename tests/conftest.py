"""Shared fixtures. CPU only; tiny models; one local Ray instance per test session (started on demand)."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
import torch

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
torch.set_num_threads(2)


@pytest.fixture
def seed() -> int:
    torch.manual_seed(0)
    return 0


@pytest.fixture(scope="session")
def ray_session():
    """A private local Ray instance (own temp dir, 2 CPUs, no dashboard), shared by the whole test session.

    Never touches other Ray clusters on the machine: no address lookup, and shutdown only ends what it started.
    """
    ray = pytest.importorskip("ray")
    tmp = tempfile.mkdtemp(prefix="glr", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    os.environ.pop("RAY_ADDRESS", None)
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tmp, object_store_memory=1_500_000_000,
             log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)
