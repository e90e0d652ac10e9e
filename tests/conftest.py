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


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO
