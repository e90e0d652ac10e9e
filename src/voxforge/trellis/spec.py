"""What each TRELLIS model class needs to become a voxforge module, and to be verified.

A TRELLIS-image-large download is a folder with `pipeline.json` and `ckpts/NAME.json`
(`{"name": TRELLIS class, "args": {...}}`) + `ckpts/NAME.safetensors` (TRELLIS key names,
transformer blocks stored in fp16). For every TRELLIS class voxforge knows, one `ModelSpec`
says how to build the voxforge module at those args and how to rename (and, where the
layouts differ, reshape) TRELLIS's state dict into that module's. The loader
(`voxforge.trellis.loading`) does the rest once for all of them: read the file, upcast to
fp32, convert, compare keys and shapes strictly (naming missing, unexpected and wrongly
shaped keys), load.

A `GoldenCheck` runs loaded modules on the inputs stored in one file of a golden folder
(fixtures made by TRELLIS's own code, `golden/README.md`) and returns the outputs under
the file's key names; `voxforge.trellis.verify` compares them with the stored references.

The specs themselves live next to the conversions they describe: `trellis/vaes.py`
(sparse-structure VAE, SLat encoder and Gaussian decoder), `trellis/flows.py` (both flow
transformers and TRELLIS's guided Euler sampler), `trellis/mesh.py` (SLat mesh decoder +
FlexiCubes), `trellis/dinov2.py` (the image encoder). `trellis/registry.py` collects them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor, nn

__all__ = ["Compare", "GoldenCheck", "ModelSpec"]


@dataclass(frozen=True)
class ModelSpec:
    """One TRELLIS model class (the `name` of `ckpts/NAME.json`).

    `build(args)` returns the voxforge module for the JSON's `args` (fp32 parameters; it is
    called under `torch.device("meta")` by the official-shapes test, so it must not touch
    parameter values). `convert(args, state)` maps a TRELLIS state dict (fp32 tensors, TRELLIS
    key names) to the state dict of `build(args)`: every TRELLIS key is used or deliberately
    dropped (say which in `dropped`), nothing is invented.
    """

    trellis_class: str
    build: Callable[[Mapping[str, Any]], nn.Module]
    convert: Callable[[Mapping[str, Any], Mapping[str, Tensor]], dict[str, Tensor]]
    #: TRELLIS keys (regular expressions, full match) that carry nothing voxforge uses.
    dropped: tuple[str, ...] = ()


@dataclass(frozen=True)
class Compare:
    """How one output of a golden file is compared with its reference.

    kind "tensor": |out - ref| <= atol + rtol·|ref| everywhere (the report gives the largest
    absolute and relative error); "exact": equal values and shapes (sparse coordinates, face
    counts); "mesh": the output key prefix `P` names `P.vertices`, `P.faces` and optionally
    `P.vertex_attrs`; equal vertex and face counts, vertices equal up to a permutation within
    atol, faces equal as sets under that permutation, attributes within atol under it.
    """

    kind: Literal["tensor", "exact", "mesh"] = "tensor"
    atol: float = 2e-4
    rtol: float = 1e-4


@dataclass(frozen=True)
class GoldenCheck:
    """One golden file: which model classes it needs and how to run them on its inputs.

    `run(models, golden)` gets the loaded modules by TRELLIS class name (plus "DINOv2" for the
    image encoder and "pipeline" for the `pipeline.json` settings, a `TrellisPipelineConfig`)
    and the golden file's tensors, and returns outputs under the golden keys. `compare` maps an
    output key (or, for kind "mesh", a key prefix such as "0") to its comparison; keys of the
    golden file that are not in `compare` are inputs.
    """

    file: str  # e.g. "ss_vae.safetensors"
    needs: tuple[str, ...]  # TRELLIS class names (and/or "DINOv2")
    run: Callable[[Mapping[str, Any], Mapping[str, Tensor]], dict[str, Tensor]]
    compare: Mapping[str, Compare] = field(default_factory=dict)
    #: when the outputs depend on the golden file (e.g. one mesh per sample), a function
    #: golden -> compare mapping, used instead of `compare`.
    compare_for: Callable[[Mapping[str, Tensor]], Mapping[str, Compare]] | None = None

    def comparisons(self, golden: Mapping[str, Tensor]) -> Mapping[str, Compare]:
        return self.compare_for(golden) if self.compare_for is not None else self.compare
