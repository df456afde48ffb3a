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
    """A private local Ray instance (own temp dir, 4 logical CPUs, no dashboard), shared by the whole test session;
    like the product's private Ray, it has a token of its own and listens on 127.0.0.1 only.

    Never touches other Ray clusters on the machine: no address lookup, and shutdown only ends what it started.
    """
    ray = pytest.importorskip("ray")
    from pipelines.private_ray import secure_private_ray

    tmp = tempfile.mkdtemp(prefix="glr", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    os.environ.pop("RAY_ADDRESS", None)
    restore = secure_private_ray()
    # 4 logical CPUs on the 2 cores: 2 Ray Train workers plus room for Ray Data decode tasks
    ray.init(num_cpus=4, include_dashboard=False, _temp_dir=tmp, object_store_memory=1_500_000_000,
             log_to_driver=False, configure_logging=False)
    restore()
    yield ray
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory):
    """A small synthetic benchmark of real mp4 files (24 train / 8 val / 8 test videos)."""
    from glccl.data import synth

    root = tmp_path_factory.mktemp("synth")
    synth.generate(root, num_train=24, num_val=8, num_test=8, seed=1, size=64, fps=8, seconds=2.0, workers=1)
    return root
