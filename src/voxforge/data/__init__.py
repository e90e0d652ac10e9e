"""Data toolkit: ingest, synth, prepare, manifest and datasets (see docs/data.md).

Names are imported lazily so `import voxforge.data` stays cheap.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "PreparedDataset": "voxforge.data.dataset",
    "AssetRecord": "voxforge.data.dataset",
    "ViewSet": "voxforge.data.dataset",
    "OccupancyDataset": "voxforge.data.dataset",
    "SparseFeatureDataset": "voxforge.data.dataset",
    "ConditionImageDataset": "voxforge.data.dataset",
    "VoxelBalancedBatchSampler": "voxforge.data.dataset",
    "collate_sparse": "voxforge.data.dataset",
    "condition_image": "voxforge.data.dataset",
    "PrepareConfig": "voxforge.data.prepare",
    "prepare": "voxforge.data.prepare",
    "SynthConfig": "voxforge.data.synth",
    "write_dataset": "voxforge.data.synth",
    "ingest_file": "voxforge.data.ingest",
    "Limits": "voxforge.data.safety",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'voxforge.data' has no attribute {name!r}")
