"""`voxforge import trellis SRC --verify GOLDEN`: run every model on stored inputs, compare.

A golden folder (`golden/README.md` beside the fixtures) holds one safetensors file per
check: inputs and the outputs TRELLIS's own code computed from them (fp32, CPU). For each
file voxforge knows (`registry.all_goldens`) that is present, the models it needs are loaded
from SRC, run on the inputs, and each output is compared with its reference:

- tensors: the largest absolute error, the largest relative error (|out − ref| / |ref| over
  the elements where |ref| > atol, so near-zero references do not dominate), and whether
  |out − ref| <= atol + rtol·|ref| holds everywhere (numpy's `allclose` rule);
- exact outputs (sparse coordinates): equal shape and values;
- meshes: equal vertex and face counts; each output vertex is matched to its nearest
  reference vertex, the matching must be one-to-one and within atol; faces must be equal as
  sets under that matching (with their winding); vertex attributes within atol under it.
  When the check reports that an SDF value of the sample sits within 1e-6 of zero
  (`P.near_zero_sdf`), where float rounding may flip a sign and add or drop a vertex,
  the symmetric Chamfer distance below 1e-3 is accepted instead.

`verify_folder` returns the rows; the command prints them (or `--json`) and exits 1 when
one fails. A golden file voxforge has no check for is listed as skipped, never ignored
silently.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from voxforge.errors import UserError
from voxforge.trellis.spec import Compare, GoldenCheck

__all__ = ["CheckRow", "compare_output", "format_rows", "run_check", "verify_folder"]

CHAMFER_FALLBACK = 1e-3


@dataclass
class CheckRow:
    file: str
    output: str
    kind: str
    max_abs: float | None
    max_rel: float | None
    atol: float
    rtol: float
    passed: bool
    note: str = ""


def _tensor_row(file: str, key: str, out: Tensor, ref: Tensor, c: Compare) -> CheckRow:
    if tuple(out.shape) != tuple(ref.shape):
        return CheckRow(
            file,
            key,
            c.kind,
            None,
            None,
            c.atol,
            c.rtol,
            False,
            f"shape {tuple(out.shape)} != reference {tuple(ref.shape)}",
        )
    out64, ref64 = out.detach().double().cpu(), ref.double().cpu()
    if not torch.isfinite(out64).all():
        return CheckRow(file, key, c.kind, None, None, c.atol, c.rtol, False, "non-finite values")
    diff = (out64 - ref64).abs()
    max_abs = float(diff.max()) if diff.numel() else 0.0
    big = ref64.abs() > c.atol
    max_rel = float((diff[big] / ref64.abs()[big]).max()) if big.any() else 0.0
    passed = bool((diff <= c.atol + c.rtol * ref64.abs()).all())
    return CheckRow(file, key, c.kind, max_abs, max_rel, c.atol, c.rtol, passed)


def _exact_row(file: str, key: str, out: Tensor, ref: Tensor, c: Compare) -> CheckRow:
    same_shape = tuple(out.shape) == tuple(ref.shape)
    equal = same_shape and bool(torch.equal(out.cpu().to(ref.dtype), ref.cpu()))
    note = (
        ""
        if equal
        else (f"shape {tuple(out.shape)} != {tuple(ref.shape)}" if not same_shape else "values differ")
    )
    mismatches = None if not same_shape else float((out.cpu().to(ref.dtype) != ref.cpu()).sum())
    return CheckRow(file, key, "exact", mismatches, None, 0.0, 0.0, equal, note)


def _chamfer(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.spatial import cKDTree

    if not len(a) or not len(b):
        return float("inf") if len(a) != len(b) else 0.0
    return float(cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean())


def _canonical_faces(faces: np.ndarray) -> set[tuple[int, int, int]]:
    """Faces as a set, each rotated to start at its smallest index (winding kept)."""
    rows = set()
    for f in faces.tolist():
        i = f.index(min(f))
        rows.add(tuple(f[i:] + f[:i]))
    return rows


def _mesh_row(
    file: str, prefix: str, outputs: Mapping[str, Tensor], golden: Mapping[str, Tensor], c: Compare
) -> CheckRow:
    from scipy.spatial import cKDTree

    key = f"{prefix}.mesh"
    try:
        ov = outputs[f"{prefix}.vertices"].detach().double().cpu().numpy()
        of = outputs[f"{prefix}.faces"].detach().long().cpu().numpy()
    except KeyError as err:
        return CheckRow(file, key, "mesh", None, None, c.atol, 0.0, False, f"output {err} missing")
    rv = golden[f"{prefix}.vertices"].double().numpy()
    rf = golden[f"{prefix}.faces"].long().numpy()
    near_zero = bool(outputs.get(f"{prefix}.near_zero_sdf", torch.tensor(False)))
    counts = f"vertices {len(ov)}/{len(rv)}, faces {len(of)}/{len(rf)}"
    if len(ov) != len(rv) or len(of) != len(rf):
        if near_zero:
            chamfer = _chamfer(ov, rv)
            ok = chamfer < CHAMFER_FALLBACK
            return CheckRow(
                file,
                key,
                "mesh",
                chamfer,
                None,
                CHAMFER_FALLBACK,
                0.0,
                ok,
                f"{counts}; SDF near zero: Chamfer {chamfer:.2e}",
            )
        return CheckRow(file, key, "mesh", None, None, c.atol, 0.0, False, f"counts differ: {counts}")
    if not len(rv):
        return CheckRow(file, key, "mesh", 0.0, None, c.atol, 0.0, True, "empty mesh")
    dist, match = cKDTree(rv).query(ov)  # output vertex i ~ reference vertex match[i]
    max_abs = float(dist.max())
    one_to_one = len(np.unique(match)) == len(match)
    notes = [counts]
    passed = max_abs <= c.atol and one_to_one
    if not one_to_one:
        notes.append("vertex matching is not one-to-one")
    if passed and _canonical_faces(match[of]) != _canonical_faces(rf):
        passed = False
        notes.append("faces differ under the vertex matching")
    attrs = outputs.get(f"{prefix}.vertex_attrs")
    ref_attrs = golden.get(f"{prefix}.vertex_attrs")
    if attrs is not None and ref_attrs is not None:
        a = attrs.detach().double().cpu().numpy()
        order = np.empty_like(match)
        order[match] = np.arange(len(match))
        if a.shape != ref_attrs.shape:
            passed = False
            notes.append(f"vertex_attrs shape {a.shape} != {tuple(ref_attrs.shape)}")
        elif one_to_one:
            attr_err = float(np.abs(a[order] - ref_attrs.double().numpy()).max())
            notes.append(f"vertex_attrs max abs {attr_err:.2e}")
            passed = passed and attr_err <= c.atol
    if near_zero and not passed:  # a flipped sign at a zero SDF can move the matching
        chamfer = _chamfer(ov, rv)
        if chamfer < CHAMFER_FALLBACK:
            notes.append(f"SDF near zero: Chamfer {chamfer:.2e} accepted")
            passed = True
    return CheckRow(file, key, "mesh", max_abs, None, c.atol, 0.0, passed, "; ".join(notes))


def compare_output(
    file: str, key: str, outputs: Mapping[str, Tensor], golden: Mapping[str, Tensor], c: Compare
) -> CheckRow:
    if c.kind == "mesh":
        return _mesh_row(file, key, outputs, golden, c)
    if key not in golden:
        return CheckRow(
            file, key, c.kind, None, None, c.atol, c.rtol, False, "reference missing from the golden file"
        )
    if key not in outputs:
        return CheckRow(file, key, c.kind, None, None, c.atol, c.rtol, False, "not produced")
    if c.kind == "exact":
        return _exact_row(file, key, outputs[key], golden[key], c)
    return _tensor_row(file, key, outputs[key], golden[key], c)


def read_golden(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{path}: not a readable safetensors file ({err})") from None


def run_check(check: GoldenCheck, models: Mapping[str, Any], golden: Mapping[str, Tensor]) -> list[CheckRow]:
    missing = [name for name in check.needs if name not in models]
    if missing:
        return [
            CheckRow(
                check.file, "-", "-", None, None, 0, 0, False, f"model folder has no {', '.join(missing)}"
            )
        ]
    with torch.no_grad():
        outputs = check.run(models, golden)
    return [
        compare_output(check.file, key, outputs, golden, c) for key, c in check.comparisons(golden).items()
    ]


def verify_folder(
    src: str | Path, golden_dir: str | Path, *, dinov2: str | Path | None = None, models: Any = None
) -> tuple[list[CheckRow], list[str]]:
    """Rows for every known golden file of `golden_dir`, and the names of the unknown ones."""
    from voxforge.trellis.loading import load_trellis
    from voxforge.trellis.registry import all_goldens

    golden_dir = Path(golden_dir)
    if not golden_dir.is_dir():
        raise UserError(f"--verify {golden_dir}: not a folder")
    files = sorted(golden_dir.glob("*.safetensors"))
    if not files:
        raise UserError(f"--verify {golden_dir}: no golden .safetensors files in it")
    checks = all_goldens()
    present = [checks[f.name] for f in files if f.name in checks]
    unknown = [f.name for f in files if f.name not in checks]
    if models is None:
        needs = {name for check in present for name in check.needs}
        models = load_trellis(src, dinov2=dinov2, only=needs).by_class()
    torch.manual_seed(0)
    rows: list[CheckRow] = []
    for check in present:
        rows.extend(run_check(check, models, read_golden(golden_dir / check.file)))
    return rows, unknown


def format_rows(rows: list[CheckRow], unknown: list[str]) -> str:
    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.2e}"

    lines = [f"{'file':<22} {'output':<16} {'max abs':>9} {'max rel':>9} {'atol':>8} {'rtol':>8}  result"]
    for r in rows:
        lines.append(
            f"{r.file.removesuffix('.safetensors'):<22} {r.output:<16} {num(r.max_abs):>9} {num(r.max_rel):>9} "
            f"{num(r.atol):>8} {num(r.rtol):>8}  {'ok' if r.passed else 'FAIL'}"
            + (f"  ({r.note})" if r.note else "")
        )
    for name in unknown:
        lines.append(f"{name.removesuffix('.safetensors'):<22} skipped: voxforge has no check for this file")
    failed = sum(not r.passed for r in rows)
    lines.append(f"{len(rows) - failed} of {len(rows)} outputs within tolerance")
    return "\n".join(lines)


def rows_json(rows: list[CheckRow], unknown: list[str]) -> dict[str, Any]:
    return {
        "passed": all(r.passed for r in rows) and bool(rows),
        "outputs": [asdict(r) for r in rows],
        "skipped_files": unknown,
    }
