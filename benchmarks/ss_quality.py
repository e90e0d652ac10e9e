"""Stage-1 quality on held-out data: SS-VAE reconstruction and generated-vs-true structures.

    # VAE reconstruction IoU / precision / recall on every asset of a prepared folder
    # (e.g. real meshes the VAE never saw), or on its held-out split with --heldout N:
    python benchmarks/ss_quality.py vae --model runs/ss_vae --data data/real_prepared
    python benchmarks/ss_quality.py vae --model runs/ss_vae --data data/prepared --heldout 8

    # generation: conditional vs unconditional samples (same noise) for the held-out assets,
    # at several guidance scales, in one run:
    python benchmarks/ss_quality.py flow --model runs/ss_flow --cfg 1 3 7.5

Prints one table row per setting, and per-asset IoU with --per-asset.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def vae_quality(args: argparse.Namespace) -> None:
    from voxforge.data import OccupancyDataset, PreparedDataset
    from voxforge.data.splits import split_ids
    from voxforge.runs import load_ss_vae
    from voxforge.stages.ss_vae import evaluate_reconstruction

    vae, info = load_ss_vae(args.model)
    data = PreparedDataset(args.data)
    ids = data.ids(require=(f"voxels_{vae.cfg.resolution}",))
    if args.heldout:
        _, ids = split_ids(ids, args.heldout)
    dataset = OccupancyDataset(data, resolution=vae.cfg.resolution, ids=ids)
    metrics, pairs = evaluate_reconstruction(vae, dataset, torch.device("cpu"))
    print(f"VAE {args.model} (step {info.step}) on {len(ids)} assets of {args.data}:")
    print(f"IoU {metrics['iou']:.4f}  precision {metrics['precision']:.4f}  recall {metrics['recall']:.4f}")
    if args.per_asset:
        labels = {r.id: Path(r.source).name for r in data.records() if r.id}
        for asset, (true, pred) in zip(ids, pairs):
            iou = (true & pred).sum() / max(1, (true | pred).sum())
            print(f"  {labels.get(asset, asset)[:40]:40s} IoU {iou:.3f}  voxels {int(true.sum())}")


def flow_quality(args: argparse.Namespace) -> None:
    from voxforge.data.splits import split_ids
    from voxforge.models.conditioning import default_structure_sampler
    from voxforge.pipelines.evaluate import evaluate_generation
    from voxforge.pipelines.structure import StructurePipeline
    from voxforge.recipe import load_recipe

    recipe = load_recipe(Path(args.model) / "config.yaml")
    info = json.loads((Path(args.model) / "structure.json").read_text())
    latents = json.loads((Path(info["latents"]) / "latents.json").read_text())
    _, ids = split_ids(latents["ids"], recipe.data.eval_assets)
    pipeline = StructurePipeline.from_run(args.model)
    print(
        f"flow {args.model}: {len(ids)} held-out assets, {args.steps} Euler steps, guidance on t in [0.5, 1]"
    )
    print("| cfg | IoU cond | IoU uncond | yaw-aligned cond | yaw-aligned uncond |")
    print("| --- | --- | --- | --- | --- |")
    for scale in args.cfg:
        sampler = default_structure_sampler(steps=args.steps, cfg_scale=scale)
        result = evaluate_generation(pipeline, info["prepared"], ids, seed=args.seed, sampler=sampler)
        print(
            f"| {scale} | {result['iou']:.3f} | {result['iou_uncond']:.3f} | {result['yaw_iou']:.3f} | "
            f"{result['yaw_iou_uncond']:.3f} |"
        )
        if args.per_asset:
            for row in result["per_asset"]:
                print(f"  {row['id'][:12]} cond {row['iou']:.3f} uncond {row['iou_uncond']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    vae = sub.add_parser("vae")
    vae.add_argument("--model", required=True)
    vae.add_argument("--data", required=True)
    vae.add_argument("--heldout", type=int, default=0, help="only the held-out split of this size")
    vae.add_argument("--per-asset", action="store_true")
    vae.set_defaults(func=vae_quality)
    flow = sub.add_parser("flow")
    flow.add_argument("--model", required=True)
    flow.add_argument("--cfg", type=float, nargs="+", default=[1.0, 3.0, 7.5])
    flow.add_argument("--steps", type=int, default=25)
    flow.add_argument("--seed", type=int, default=0)
    flow.add_argument("--per-asset", action="store_true")
    flow.set_defaults(func=flow_quality)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
