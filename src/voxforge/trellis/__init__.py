"""TRELLIS's released models in voxforge: load, convert, verify (see `docs/trellis.md`).

- `load_trellis(src)`: a TRELLIS-image-large folder → voxforge modules (`TrellisModels`);
- `import_trellis(src, out)`: the same, written as a voxforge model folder;
- `load_model_folder(path)`: either kind of folder;
- `verify_folder(src, golden)`: every model against outputs of TRELLIS's own code.

Importing this package loads no torch-heavy module; the functions import what they use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["import_trellis", "load_model_folder", "load_trellis", "verify_folder"]


def __getattr__(name: str) -> Any:
    if name == "load_trellis":
        from voxforge.trellis.loading import load_trellis

        return load_trellis
    if name in ("import_trellis", "load_model_folder"):
        from voxforge.trellis import importer

        return getattr(importer, name)
    if name == "verify_folder":
        from voxforge.trellis.verify import verify_folder

        return verify_folder
    raise AttributeError(name)
