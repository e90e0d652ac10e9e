"""TRELLIS-image-large on this CPU: every network at its official size, random weights.

What it measures, one fresh subprocess per stage (so each stage's peak RSS is its own):

- `condition`: DINOv2 ViT-L/14-reg condition tokens of one 518² image (once per image);
- `ss_flow`: the structure flow (L: width 1024, 24 blocks, 16³ tokens): one guided sampler
  step (one forward at batch 2: conditional + unconditional batched) and one unguided step
  (batch 1). TRELLIS guides only for t in `cfg_interval` = [0.5, 1]; the number of guided
  steps among the 25 is counted on voxforge's own time grid (`flow.samplers.time_grid`,
  rescale_t 3) and the 25-step time projected from it;
- `ss_decoder`: the structure decoder 16³ × 8 → 64³ occupancy logits (+ the `> 0` voxels);
- `slat_flow`: the SLat flow (L) on a realistic structure: the occupied voxels of a real mesh
  (`--mesh`, default `ballA.off` from ../shared/data/meshes, ~18.6k voxels) voxelised at 64³
  with `voxforge.data.voxelize`; guided (batch 2) and unguided steps, projected to 25;
- `gs_decoder`: the Gaussian decoder (B, 12 swin blocks) on the same structure;
- `mesh_decoder`: the mesh decoder's network (trunk + two subdivide blocks, 64³ → 256³) on
  the same structure, then FlexiCubes on its 256³ fine voxels. A random-weight network
  predicts a random SDF, whose "surface" is a sign flip at almost every corner — nothing
  like a real decode — so FlexiCubes runs on the same fine voxels with the SDF channels set
  to the signed distance of the mesh itself (solid of its 256³ voxelisation, exact Euclidean
  distance transform); deformations, weights and colours are left at zero;
- `glb`: `export.textured.textured_glb` (TRELLIS's GLB: simplify 95 %, xatlas unwrap,
  1024² texture baked from 32 Gaussian views) on that mesh and the Gaussians of `gs_decoder`.

Every network is also run in fp32 and under bf16 autocast on a *reduced form* of itself
(`--bf16-blocks` transformer blocks, a smaller structure — the mesh voxelised at
`--small-resolution` placed in the same 64³ grid — and an 8³ latent for the conv decoder) and
the ratio printed: on an AVX2-only CPU bf16 is emulated and a full-size bf16 run would take
many minutes per call; the ratio is what shows the gain (or loss) of `--precision bf16`.
`--bf16-full` measures bf16 on the full networks instead (for AVX512-BF16 / AMX machines).

Weights: modules are built at the configs of `official_shapes.json` (or a TRELLIS folder's
`ckpts/*.json`) through `voxforge.trellis.registry`, then every matrix / conv kernel is
refilled in place with N(0, 0.02) (biases and norms keep their init; zero-initialised output
and modulation layers become random too). Latency does not depend on the values, except for
FlexiCubes (see above).

Memory: the peak RSS (`ru_maxrss`) of each stage's process, after its full-size part. The
whole image → GLB keeps every model resident (`TrellisModels` loads them all), so its peak is
estimated as Σ parameters (fp32) + the largest stage working set (its peak − its parameters).

    python benchmarks/bench_trellis_cpu.py [--threads 2] [--stages ss_flow,slat_flow] [--quick]

`--quick` (smoke test, about a minute): only the reduced forms, one block, an 8³ structure-flow
grid, a 6³-voxelised structure, a 256² GLB texture from 4 views, one repetition, no warm-up;
its numbers are not projections.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIGS = REPO / ".." / "shared" / "golden" / "trellis" / "official_shapes.json"
DEFAULT_MESH = REPO / ".." / "shared" / "data" / "meshes" / "plain" / "ballA.off"
STAGES = ("condition", "ss_flow", "ss_decoder", "slat_flow", "gs_decoder", "mesh_decoder", "glb")
STEPS = 25  # pipeline.json's steps, both samplers
RESCALE_T, CFG_INTERVAL = 3.0, (0.5, 1.0)
#: TRELLIS's README (commit 6b0d647) gives no latency; this is the issue's figure (A100).
A100_NOTE = (
    "TRELLIS's README (microsoft/TRELLIS 6b0d647) states no latency, only the hardware: "
    '"An NVIDIA GPU with at least 16GB of memory is necessary. The code has been verified on '
    "NVIDIA A100 and A6000 GPUs.\" The issue's ~5 s preview + ~30 s GLB on an A100 is not from it."
)


# ------------------------------------------------------------------------------ helpers
def best_of(repeats: int, fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(min wall seconds, its process CPU seconds, last output) over `repeats` calls."""
    best, best_cpu, out = float("inf"), 0.0, None
    for _ in range(max(1, repeats)):
        start, start_cpu = time.perf_counter(), time.process_time()
        out = fn()
        wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        if wall < best:
            best, best_cpu = wall, cpu
    return best, best_cpu, out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return [f for f in wanted if f" {f}" in text]


def load_configs(path: Path) -> dict[str, dict[str, Any]]:
    """TRELLIS class -> args, from official_shapes.json or a TRELLIS folder's ckpts/*.json."""
    entries: list[dict[str, Any]] = []
    if path.is_dir():
        entries = [json.loads(p.read_text()) for p in sorted((path / "ckpts").glob("*.json"))]
    else:
        entries = [v for v in json.loads(path.read_text()).values() if isinstance(v, dict) and "name" in v]
    if not entries:
        raise SystemExit(f"{path}: no model configs ({{name, args}} entries or ckpts/*.json)")
    return {e["name"]: dict(e["args"]) for e in entries}


@torch.no_grad()
def randomize(module: torch.nn.Module) -> torch.nn.Module:
    """Matrices and kernels N(0, 0.02) in place; 1-D parameters keep their init."""
    for p in module.parameters():
        if p.ndim >= 2:
            p.normal_(0.0, 0.02)
        elif not torch.any(p):  # zero-initialised biases of output layers
            p.normal_(0.0, 0.02)
    return module.eval()


def build(cls: str, args: dict[str, Any], **overrides: Any) -> torch.nn.Module:
    from voxforge.trellis.registry import all_specs

    return randomize(all_specs()[cls].build({**args, **overrides}))


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def autocast(dtype: torch.dtype) -> Any:
    return nullcontext() if dtype == torch.float32 else torch.autocast("cpu", dtype=dtype)


def guided_steps(steps: int = STEPS) -> int:
    """Steps of the Euler sampler whose time lies in TRELLIS's guidance interval."""
    from voxforge.flow.samplers import time_grid

    lo, hi = CFG_INTERVAL
    return sum(1 for t in time_grid(steps, RESCALE_T).tolist()[:steps] if lo <= t <= hi)


def structure(mesh_path: Path, resolution: int, grid: int = 64) -> np.ndarray:  # [N, 3] int64
    """Occupied voxels of a real mesh at `resolution`, placed at the centre of a `grid`³ grid."""
    import trimesh

    from voxforge.data.voxelize import voxelize

    mesh = trimesh.load(mesh_path, force="mesh")
    v = np.asarray(mesh.vertices, dtype=np.float64)
    lo, hi = v.min(0), v.max(0)
    v = (v - (lo + hi) / 2) / (hi - lo).max() * 0.98  # into [-0.49, 0.49]
    coords = voxelize(v, np.asarray(mesh.faces), resolution)
    return coords + (grid - resolution) // 2


def sparse(coords: np.ndarray, channels: int, grid: int = 64) -> Any:  # one sample, random feats
    from voxforge.sparse.tensor import SparseTensor

    c = torch.from_numpy(coords).int()
    c = torch.cat([torch.zeros(len(c), 1, dtype=torch.int32), c], 1)  # [N, 4]
    return SparseTensor(c, torch.randn(len(c), channels), spatial_shape=(grid,) * 3)


def cond_tokens(batch: int) -> torch.Tensor:  # [B, 1374, 1024] like DINOv2-L/14-reg at 518²
    from voxforge.models.dinov2 import DinoV2Config

    cfg = DinoV2Config()
    return torch.randn(batch, cfg.num_tokens(), cfg.embed_dim)


# ------------------------------------------------------------------------------ stages
class Stage:
    """Collects rows {what, seconds, cpu} and the reduced-form fp32/bf16 pair of one stage."""

    def __init__(self, opts: argparse.Namespace):
        self.opts = opts
        self.rows: list[dict[str, Any]] = []
        self.info: dict[str, Any] = {}

    def time(self, what: str, fn: Callable[[], Any], repeats: int | None = None) -> tuple[float, Any]:
        seconds, cpu, out = best_of(self.opts.repeats if repeats is None else repeats, fn)
        self.rows.append({"what": what, "seconds": seconds, "cpu": cpu})
        print(f"    {what}: {seconds:.3f} s (cpu {cpu:.2f} s)", file=sys.stderr, flush=True)
        return seconds, out

    def precision_pair(self, what: str, fn: Callable[[], Any]) -> None:
        """fp32 then bf16 autocast of the same call (each after one warm-up call, except --quick)."""
        times = {}
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            with autocast(dtype):
                if not self.opts.quick:
                    fn()  # warm-up: oneDNN kernel choice, allocator, sparse caches
                seconds, _, _ = best_of(self.opts.repeats, fn)
            times[name] = seconds
            print(f"    [{what}] {name}: {seconds:.3f} s", file=sys.stderr, flush=True)
        self.info["precision"] = {"what": what, **times, "bf16_over_fp32": times["bf16"] / times["fp32"]}

    def full_done(self, params: int) -> None:
        self.info["params"] = params
        self.info["peak_rss_mb"] = peak_rss_mb()


def reduced_blocks(opts: argparse.Namespace) -> int:
    return 1 if opts.quick else opts.bf16_blocks


@torch.no_grad()
def stage_condition(st: Stage, cfgs: dict[str, Any]) -> None:
    from voxforge.models.dinov2 import DinoV2, DinoV2Config
    from voxforge.trellis.dinov2 import condition_tokens

    image = torch.rand(1, 3, 518, 518)
    if not st.opts.quick:
        model = randomize(DinoV2(DinoV2Config()))
        st.time("DINOv2-L/14-reg, one 518² image", lambda: condition_tokens(model, image))
        st.full_done(n_params(model))
        del model
    small = randomize(DinoV2(DinoV2Config(depth=reduced_blocks(st.opts))))
    if st.opts.bf16_full and not st.opts.quick:
        small = randomize(DinoV2(DinoV2Config()))
    st.precision_pair(f"DINOv2-L {len(small.blocks)} block(s)", lambda: condition_tokens(small, image))


@torch.no_grad()
def stage_ss_flow(st: Stage, cfgs: dict[str, Any]) -> None:
    args = cfgs["SparseStructureFlowModel"]
    n_guided = guided_steps()
    st.info["guided_steps"] = n_guided
    if not st.opts.quick:
        model = build("SparseStructureFlowModel", args)
        r, c = model.cfg.resolution, model.cfg.in_channels
        x2, t2, ctx2 = torch.randn(2, c, r, r, r), torch.full((2,), 0.7), cond_tokens(2)
        guided, _ = st.time("guided step (batch 2)", lambda: model(x2, t2, ctx2))
        unguided, _ = st.time("unguided step (batch 1)", lambda: model(x2[:1], t2[:1], ctx2[:1]))
        st.info["projected"] = n_guided * guided + (STEPS - n_guided) * unguided
        st.full_done(n_params(model))
        del model
    overrides = {} if (st.opts.bf16_full and not st.opts.quick) else {"num_blocks": reduced_blocks(st.opts)}
    if st.opts.quick:
        overrides["resolution"] = 8
    small = build("SparseStructureFlowModel", args, **overrides)
    r, c = small.cfg.resolution, small.cfg.in_channels
    b = 1 if st.opts.quick else 2
    xb, tb, ctxb = torch.randn(b, c, r, r, r), torch.full((b,), 0.7), cond_tokens(b)
    st.precision_pair(f"SS flow {small.cfg.depth} block(s), {r}³, batch {b}", lambda: small(xb, tb, ctxb))


@torch.no_grad()
def stage_ss_decoder(st: Stage, cfgs: dict[str, Any]) -> None:
    from voxforge.trellis.compose import structure_coords

    args = cfgs["SparseStructureDecoder"]
    model = build("SparseStructureDecoder", args)
    c = int(args["latent_channels"])
    if not st.opts.quick:
        z = torch.randn(1, c, 16, 16, 16)
        st.time("16³ latent -> 64³ logits + voxels", lambda: structure_coords(model, z))
        st.full_done(n_params(model))
    side = 16 if (st.opts.bf16_full and not st.opts.quick) else (2 if st.opts.quick else 4)
    z_small = torch.randn(1, c, side, side, side)
    st.precision_pair(f"SS decoder {side}³ latent", lambda: model(z_small))


def _structures(st: Stage, shrink: int = 1) -> tuple[np.ndarray | None, np.ndarray]:
    """(full structure or None under --quick, reduced structure voxelised at small_resolution / shrink)."""
    full = None if st.opts.quick else structure(st.opts.mesh, 64)
    small_res = 6 if st.opts.quick else max(4, st.opts.small_resolution // shrink)
    small = full if (st.opts.bf16_full and full is not None) else structure(st.opts.mesh, small_res)
    st.info["voxels"] = None if full is None else len(full)
    st.info["small_voxels"] = len(small)
    return full, small


@torch.no_grad()
def stage_slat_flow(st: Stage, cfgs: dict[str, Any]) -> None:
    from voxforge.sparse.tensor import sparse_cat

    args = cfgs["SLatFlowModel"]
    n_guided = guided_steps()
    st.info["guided_steps"] = n_guided
    full, small = _structures(st)

    def calls(model: Any, coords: np.ndarray) -> tuple[Callable[[], Any], Callable[[], Any]]:
        one = sparse(coords, model.cfg.in_channels)
        pair = sparse_cat([one, one])  # cond + uncond rows; caches neighbour maps like `sample`
        t1, t2, ctx2 = torch.full((1,), 0.7), torch.full((2,), 0.7), cond_tokens(2)
        return (lambda: model(pair, t2, ctx2)), (lambda: model(one, t1, ctx2[:1]))

    if full is not None:
        model = build("SLatFlowModel", args)
        guided_fn, unguided_fn = calls(model, full)
        guided, _ = st.time(f"guided step (batch 2, {len(full)} voxels, first call)", guided_fn, 1)
        if st.opts.repeats > 1:
            guided, _ = st.time("guided step (cached)", guided_fn)
        unguided, _ = st.time("unguided step (batch 1)", unguided_fn)
        st.info["projected"] = n_guided * guided + (STEPS - n_guided) * unguided
        st.full_done(n_params(model))
        del model, guided_fn, unguided_fn
    overrides = {} if st.opts.bf16_full and not st.opts.quick else {"num_blocks": reduced_blocks(st.opts)}
    small_model = build("SLatFlowModel", args, **overrides)
    _, unguided_small = calls(small_model, small)
    st.precision_pair(
        f"SLat flow {small_model.cfg.depth} block(s), {len(small)} voxels, batch 1", unguided_small
    )


@torch.no_grad()
def stage_gs_decoder(st: Stage, cfgs: dict[str, Any]) -> None:
    args = cfgs["SLatGaussianDecoder"]
    full, small = _structures(st)
    latent = int(args["latent_channels"])
    if full is not None:
        model = build("SLatGaussianDecoder", args)
        x = sparse(full, latent)
        _, out = st.time(f"{len(full)} voxels -> Gaussians", lambda: model(x))
        st.info["gaussians"] = int(out[0].num_gaussians)
        torch.save(out[0], Path(st.opts.workdir) / "gaussians.pt")
        st.full_done(n_params(model))
        del model
    overrides = {} if st.opts.bf16_full and not st.opts.quick else {"num_blocks": reduced_blocks(st.opts)}
    small_model = build("SLatGaussianDecoder", args, **overrides)
    xs = sparse(small, latent)
    st.precision_pair(
        f"GS decoder {overrides.get('num_blocks', 'all')} block(s), {len(small)} voxels",
        lambda: small_model(xs),
    )


def surface_features(h: Any, mesh_path: Path, coarse: int, grid: int = 64) -> torch.Tensor:  # [M, 101]
    """Fine-voxel features whose SDF channels are the mesh's signed distance (module docstring).

    The structure is the mesh voxelised at `coarse` in a `grid`³ grid; the fine grid is 4× both.
    """
    from scipy import ndimage

    from voxforge.representations.flexicubes import CUBE_CORNERS

    resolution = 4 * grid
    coords = structure(mesh_path, 4 * coarse, resolution)  # surface voxels at the fine grid
    solid = np.zeros((resolution,) * 3, dtype=bool)
    solid[tuple(coords.T)] = True
    solid = ndimage.binary_fill_holes(solid)
    sdf = (ndimage.distance_transform_edt(~solid) - ndimage.distance_transform_edt(solid)) / resolution
    corners = h.coords[:, None, 1:].long() + torch.tensor(CUBE_CORNERS, dtype=torch.long)  # [M, 8, 3]
    idx = corners.clamp(0, resolution - 1).numpy()
    values = torch.from_numpy(sdf[idx[..., 0], idx[..., 1], idx[..., 2]].astype(np.float32))  # [M, 8]
    feats = torch.zeros(h.feats.shape[0], h.feats.shape[1])
    feats[:, :8] = values + 1.0 / resolution  # features_to_mesh subtracts 1/resolution
    return feats


@torch.no_grad()
def stage_mesh_decoder(st: Stage, cfgs: dict[str, Any]) -> None:
    args = cfgs["SLatMeshDecoder"]
    # the subdivide blocks' sparse convs run 64x the voxels; bf16 on AVX2 is ~20x slower there
    full, small = _structures(st, shrink=2)
    latent = int(args["latent_channels"])
    coords = full if full is not None else small
    if full is not None:
        model = build("SLatMeshDecoder", args)
        x = sparse(full, latent)
        _, h = st.time(f"network: {len(full)} voxels -> fine features at 256³", lambda: model.features(x))
        st.info["fine_voxels"] = int(h.feats.shape[0])
        st.full_done(n_params(model))
        del model
    else:  # quick: FlexiCubes on the small structure's children
        from voxforge.sparse.sampling import sparse_subdivide

        h = sparse_subdivide(sparse_subdivide(sparse(coords, 101)))
    from voxforge.models.slat_mesh import features_to_mesh

    h = h.replace(surface_features(h, st.opts.mesh, 64 if full is not None else 16))

    _, mesh = st.time(
        f"FlexiCubes on {h.feats.shape[0]} fine voxels (mesh SDF)",
        lambda: features_to_mesh(h.coords[:, 1:], h.feats, 256, True),
        1,
    )
    st.info["faces"], st.info["vertices"] = int(mesh.faces.shape[0]), int(mesh.vertices.shape[0])
    np.savez(
        Path(st.opts.workdir) / "mesh.npz",
        vertices=mesh.vertices.numpy(),
        faces=mesh.faces.numpy(),
        colors=mesh.vertex_attrs[:, :3].numpy(),
    )
    overrides = {} if st.opts.bf16_full and not st.opts.quick else {"num_blocks": reduced_blocks(st.opts)}
    small_model = build("SLatMeshDecoder", args, **overrides)
    xs = sparse(small, latent)
    st.precision_pair(
        f"mesh decoder network {overrides.get('num_blocks', 'all')} block(s), {len(small)} voxels",
        lambda: small_model.features(xs),
    )


def stage_glb(st: Stage, cfgs: dict[str, Any]) -> None:
    from voxforge.export.textured import textured_glb

    work = Path(st.opts.workdir)
    if not (work / "mesh.npz").exists():
        raise SystemExit("glb needs the mesh_decoder stage (and gs_decoder for the Gaussian bake)")
    mesh = np.load(work / "mesh.npz")
    gaussians = (
        torch.load(work / "gaussians.pt", weights_only=False) if (work / "gaussians.pt").exists() else None
    )
    st.info["baked_from_gaussians"] = gaussians is not None

    def export() -> None:
        size = {"texture_size": 256, "views": 4, "view_resolution": 128} if st.opts.quick else {}
        out = textured_glb(
            mesh["vertices"], mesh["faces"], mesh["colors"], up="z", gaussians=gaussians, **size
        )
        out.save_glb(work / "asset.glb")

    side = 256 if st.opts.quick else 1024
    st.time(f"textured_glb ({len(mesh['faces'])} faces, {side}² texture)", export, 1)
    st.full_done(0)


def run_stage(name: str, opts: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(opts.threads)
    torch.manual_seed(0)
    cfgs = load_configs(opts.configs)
    st = Stage(opts)
    globals()[f"stage_{name}"](st, cfgs)
    st.info.setdefault("peak_rss_mb", peak_rss_mb())
    return {"stage": name, "rows": st.rows, **st.info, "peak_rss_mb_end": peak_rss_mb()}


# ------------------------------------------------------------------------------ report
def auto_precision() -> str:
    """What `voxforge generate --precision auto` picks here (the engine's bf16 probe)."""
    try:
        from voxforge.train.precision import resolve_precision

        choice = resolve_precision("auto", torch.device("cpu"))
        return f"{choice.resolved} ({choice.reason})"
    except Exception as err:  # noqa: BLE001 - the report must not fail on a moved helper
        return f"unknown ({err!r})"


def report(results: list[dict[str, Any]], opts: argparse.Namespace) -> None:
    print(
        f"\nTRELLIS-image-large, random weights, CPU: {cpu_model()} "
        f"(capability {torch.backends.cpu.get_cpu_capability()}, flags {' '.join(cpu_flags()) or '-'}), "
        f"{opts.threads} thread(s), torch {torch.__version__}, "
        f"--precision auto -> {auto_precision()}"
    )
    n_guided = guided_steps()
    print(
        f"sampler: {STEPS} Euler steps, rescale_t {RESCALE_T}, guidance on t in {list(CFG_INTERVAL)}: "
        f"{n_guided} guided steps (batch 2) + {STEPS - n_guided} unguided (batch 1)"
    )
    print(f"\n  {'stage':<14} {'measured':<58} {'seconds':>9} {'cpu s':>8}")
    for res in results:
        for row in res["rows"]:
            print(f"  {res['stage']:<14} {row['what']:<58} {row['seconds']:9.3f} {row['cpu']:8.2f}")
    print(
        f"\n  {'stage':<14} {'params':>8} {'peak RSS':>10}  {'bf16 / fp32 on':<52} {'fp32 s':>7} {'bf16 s':>7} {'ratio':>6}"
    )
    for res in results:
        prec = res.get("precision")
        params = res.get("params")
        ptxt = "-" if not params else f"{params / 1e6:.0f} M"
        line = f"  {res['stage']:<14} {ptxt:>8} {res['peak_rss_mb'] / 1024:8.2f} GB"
        if prec:
            line += (
                f"  {prec['what']:<52} {prec['fp32']:7.2f} {prec['bf16']:7.2f} {prec['bf16_over_fp32']:5.2f}x"
            )
        print(line)
    if opts.quick:
        print("\n--quick: reduced forms only; no projection.")
        return
    by = {r["stage"]: r for r in results}
    first = {name: by[name]["rows"][0]["seconds"] for name in by if by[name]["rows"]}
    parts: list[tuple[str, float, str]] = []
    if "condition" in by:
        parts.append(("condition (DINOv2, once)", first["condition"], "condition"))
    if "ss_flow" in by:
        parts.append((f"structure flow, {STEPS} steps", by["ss_flow"]["projected"], "ss_flow"))
    if "ss_decoder" in by:
        parts.append(("structure decoder", first["ss_decoder"], "ss_decoder"))
    if "slat_flow" in by:
        parts.append((f"SLat flow, {STEPS} steps", by["slat_flow"]["projected"], "slat_flow"))
    if "gs_decoder" in by:
        parts.append(("Gaussian decoder", first["gs_decoder"], "gs_decoder"))
    if "mesh_decoder" in by:
        rows = by["mesh_decoder"]["rows"]
        parts.append(("mesh decoder network", rows[0]["seconds"], "mesh_decoder"))
        parts.append(("FlexiCubes 256³", rows[1]["seconds"], ""))
    if "glb" in by:
        parts.append(("GLB export (simplify, unwrap, bake)", first["glb"], ""))
    total = sum(p[1] for p in parts)
    total_bf16 = sum(
        s * (by[k]["precision"]["bf16_over_fp32"] if k and by[k].get("precision") else 1.0)
        for _, s, k in parts
    )
    print(f"\nprojected image -> GLB ({len(parts)} parts measured of 8):")
    for what, seconds, _ in parts:
        print(f"  {what:<40} {seconds:9.1f} s  {100 * seconds / total:5.1f} %")
    print(f"  {'total fp32':<40} {total:9.1f} s  ({total / 60:.1f} min)")
    print(
        f"  {'total bf16 autocast (x reduced ratios)':<40} {total_bf16:9.1f} s  ({total_bf16 / 60:.1f} min)"
    )
    print(f"  {A100_NOTE}")
    models = [r for r in results if r.get("params")]
    resident = sum(r["params"] for r in models) * 4 / 2**30
    working = max((r["peak_rss_mb"] / 1024 - r["params"] * 4 / 2**30 for r in results), default=0.0)
    print(
        f"\nmemory: every stage's own peak is above; image -> GLB with all models resident "
        f"(fp32) ~ {resident:.2f} GB parameters ({', '.join(r['stage'] for r in models)}) + "
        f"{working:.2f} GB largest working set = {resident + working:.2f} GB (limit 16 GB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads in every stage")
    parser.add_argument(
        "--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}"
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: reduced forms only")
    parser.add_argument("--repeats", type=int, default=1, help="calls per measurement (minimum kept)")
    parser.add_argument("--bf16-blocks", type=int, default=2, help="transformer blocks of the reduced forms")
    parser.add_argument(
        "--small-resolution", type=int, default=16, help="voxelisation of the reduced structure"
    )
    parser.add_argument(
        "--bf16-full", action="store_true", help="bf16 on the full networks (native-bf16 CPUs)"
    )
    parser.add_argument(
        "--configs", type=Path, default=DEFAULT_CONFIGS, help="official_shapes.json or a TRELLIS folder"
    )
    parser.add_argument("--mesh", type=Path, default=DEFAULT_MESH, help="mesh whose voxels are the structure")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # internal: run one stage, print JSON
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.stage:
        print("RESULT " + json.dumps(run_stage(opts.stage, opts)), flush=True)
        return
    stages = [s.strip() for s in opts.stages.split(",") if s.strip()]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise SystemExit(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    if not opts.configs.exists():
        raise SystemExit(
            f"{opts.configs}: not found (pass --configs official_shapes.json or a TRELLIS folder)"
        )
    results = []
    with tempfile.TemporaryDirectory() as work:
        for name in [s for s in STAGES if s in stages]:
            print(f"[{name}]", file=sys.stderr, flush=True)
            cmd = [sys.executable, __file__, "--stage", name, "--workdir", work]
            for key in ("threads", "repeats", "bf16_blocks", "small_resolution", "configs", "mesh"):
                cmd += [f"--{key.replace('_', '-')}", str(getattr(opts, key))]
            cmd += ["--quick"] * opts.quick + ["--bf16-full"] * opts.bf16_full
            env = {**os.environ, "OMP_NUM_THREADS": str(opts.threads)}
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode or not lines:
                print(f"  stage {name} failed (exit {proc.returncode})", file=sys.stderr)
                continue
            results.append(json.loads(lines[-1][len("RESULT ") :]))
            print(f"  peak RSS {results[-1]['peak_rss_mb'] / 1024:.2f} GB", file=sys.stderr, flush=True)
    if opts.json:
        opts.json.write_text(json.dumps({"threads": opts.threads, "results": results}, indent=1))
    report(results, opts)


if __name__ == "__main__":
    main()
