"""Shared fixtures: paths to the real meshes in ../shared and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_MESHES = REPO.parent / "shared" / "data" / "meshes"

# Keep tests single-threaded-friendly on 2-core machines and fully offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def shared_meshes() -> Path:
    if not SHARED_MESHES.is_dir():
        pytest.skip(f"real test meshes not found at {SHARED_MESHES}")
    return SHARED_MESHES


@pytest.fixture
def one_thread():
    """One torch thread for the test (tiny tensors: on a busy 2-core machine intra-op threads
    cost 10-25x), restored afterwards. Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO
