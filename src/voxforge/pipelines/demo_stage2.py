"""The stage-2 half of `voxforge demo`: structured latents, image → 3D, exports, report.

Runs after the stage-1 demo (`voxforge.commands.demo.Demo`) in the same folder and with the
same bookkeeping (its `step` records each step's time when it did work; every step is
idempotent, so an interrupted demo finishes on re-run):

1. **data**: stage 2 needs feature views, which stage 1 does not render, and rendering them
   for every asset would cost most of the time budget. It prepares the first
   `eval_assets + train_assets` assets of the stage-1 data in sorted id order — a set that
   contains exactly stage 1's held-out assets as its own first `eval_assets` ids, so all four
   models share one held-out set — copied into `data/synth_slat` and prepared into
   `data/prepared_slat` with `views` feature views at `image_size` pixels.
2. **train slat_vae**, **encode slat**, **train slat_flow**: the built-in tiny recipes with the
   plan's step counts.
3. **evaluate image to 3D**: `evaluate_image_to_3d` on the held-out assets — IoU of the
   generated structure, PSNR/SSIM of the generated Gaussians against the asset's views, and
   PSNR/SSIM of stage 2 alone (SLat flow on the true structure).
4. **export example**: `voxforge generate --model <demo runs>` on one held-out condition
   image: `.ply`, turntable `.mp4`/`.gif`, preview `.png`, `.glb`.

The report gets a stage-2 section (SLat-VAE reconstruction PSNR/SSIM on held-out views and
assets, image → 3D scores, previews, times), and `report.json` a `stage2` entry.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["FULL_STAGE2", "QUICK_STAGE2", "Stage2Plan", "run_stage2"]


@dataclass(frozen=True)
class Stage2Plan:
    train_assets: int  # stage-2 training assets (besides the held-out ones)
    views: int  # feature views per asset
    image_size: int  # rendered side of the stage-2 views and condition images
    vae_steps: int
    flow_steps: int
    sample_steps: int
    eval_limit: int  # held-out assets evaluated image -> 3D
    frames: int  # turntable frames of the exported example
    export_size: int


QUICK_STAGE2 = Stage2Plan(
    train_assets=4,
    views=6,
    image_size=64,
    vae_steps=12,
    flow_steps=12,
    sample_steps=4,
    eval_limit=1,
    frames=8,
    export_size=64,
)
FULL_STAGE2 = Stage2Plan(
    train_assets=32,
    views=16,
    image_size=64,
    vae_steps=160,
    flow_steps=160,
    sample_steps=12,
    eval_limit=4,
    frames=36,
    export_size=160,
)


class Stage2Demo:
    def __init__(self, demo: Any, plan: Stage2Plan):
        self.demo, self.plan = demo, plan
        self.data, self.runs, self.out = demo.data, demo.runs, demo.out
        self.prepared = self.data / "prepared_slat"

    # --- steps ------------------------------------------------------------------------------
    def subset(self) -> list[tuple[str, str]]:
        """(id, source) of the stage-2 assets: the first eval + train ids of the stage-1 data."""
        from voxforge.data import PreparedDataset

        stage1 = PreparedDataset(self.data / "prepared")
        records = {r.id: r.source for r in stage1.records() if r.status == "done" and r.id}
        count = self.demo.plan.eval_assets + self.plan.train_assets
        return [(i, records[i]) for i in sorted(records)[:count]]

    def prepare_done(self) -> bool:
        from voxforge.data import PreparedDataset

        if not list(self.prepared.glob("manifest*.sqlite")):
            return False
        step = f"features_rgb_{self.demo.plan.resolution}"
        return len(PreparedDataset(self.prepared).ids(require=(step, "cond"))) >= len(self.subset())

    def prepare(self) -> dict[str, Any]:
        from voxforge.data.prepare import PrepareConfig, prepare

        source = self.data / "synth_slat"
        source.mkdir(parents=True, exist_ok=True)
        for _, name in self.subset():
            target = source / Path(name).name
            if not target.is_file():
                shutil.copyfile(self.data / "synth" / name, target)
        config = PrepareConfig(
            resolution=self.demo.plan.resolution,
            views=self.plan.views,
            image_size=self.plan.image_size,
            cond_views=self.demo.plan.cond_views,
            seed=self.demo.plan.seed,
            progress=False,
        )
        return prepare(source, self.prepared, config)

    def train_vae(self) -> Any:
        steps = self.plan.vae_steps
        return self.demo.train(
            "slat_vae_tiny",
            self.runs / "slat_vae",
            [
                f"data.path={self.prepared}",
                f"data.eval_assets={self.demo.plan.eval_assets}",
                f"data.eval_views={4 if steps >= 50 else 2}",
                "data.holdout_every=4",
                f"data.eval_limit={self.plan.eval_limit}",
                f"train.batch_size={min(2, self.plan.train_assets)}",
            ],
            steps=steps,
            checkpoints=2,
            max_warmup=20,
        )

    def encode(self) -> dict[str, Any]:
        from voxforge.pipelines.encode_slat import encode_slat_dataset
        from voxforge.train.distributed import resolve_device

        return encode_slat_dataset(
            self.runs / "slat_vae",
            self.prepared,
            self.data / "slat_latents",
            device=resolve_device(self.demo.device),
        )

    def train_flow(self) -> Any:
        return self.demo.train(
            "slat_flow_tiny",
            self.runs / "slat_flow",
            [
                f"data.latents={self.data / 'slat_latents'}",
                f"data.eval_assets={self.demo.plan.eval_assets}",  # the held-out set of every model
                "data.eval_views=2",
                f"data.eval_limit={self.plan.eval_limit}",
                f"train.batch_size={min(4, self.plan.train_assets)}",
                f"sampler.steps={self.plan.sample_steps}",
            ],
            steps=self.plan.flow_steps,
            checkpoints=2,
            max_warmup=20,
        )

    def samplers(self) -> tuple[Any, Any]:
        from voxforge.pipelines.image_to_3d import default_slat_sampler
        from voxforge.pipelines.structure import default_sampler

        steps = self.plan.sample_steps
        return default_sampler(steps=steps, cfg_scale=3.0), default_slat_sampler(steps=steps)

    def eval_ids(self) -> list[str]:
        return [i for i, _ in self.subset()[: self.demo.plan.eval_assets]][: self.plan.eval_limit]

    def evaluate(self) -> tuple[dict[str, Any], bool]:
        path = self.runs / "image_to_3d_eval.json"
        if path.is_file():
            return json.loads(path.read_text()), False
        from voxforge.pipelines.image_to_3d import ImageTo3DPipeline, evaluate_image_to_3d
        from voxforge.train.distributed import resolve_device

        pipeline = ImageTo3DPipeline.from_model_dir(self.out, device=resolve_device(self.demo.device))
        structure_sampler, slat_sampler = self.samplers()
        result = evaluate_image_to_3d(
            pipeline,
            self.prepared,
            self.eval_ids(),
            seed=self.demo.plan.seed,
            structure_sampler=structure_sampler,
            slat_sampler=slat_sampler,
            image_size=self.plan.image_size,
            out_dir=self.runs / "samples_image_to_3d",
        )
        path.write_text(json.dumps(result, indent=1))
        return result, True

    def export_example(self) -> tuple[dict[str, Any], bool]:
        from voxforge.cli import main as cli_main
        from voxforge.data import PreparedDataset

        target = self.out / "examples" / "image_to_3d"
        if not (target / "generation.json").is_file():
            asset = self.eval_ids()[0]
            image = sorted((PreparedDataset(self.prepared).asset_dir(asset) / "cond").glob("[0-9]*.png"))[0]
            steps = str(self.plan.sample_steps)
            argv = ["generate", "--model", str(self.out), "--image", str(image), "--out", str(target)]
            argv += [
                "--steps",
                steps,
                "--slat-steps",
                steps,
                "--cfg",
                "3.0",
                "--frames",
                str(self.plan.frames),
            ]
            argv += ["--size", str(self.plan.export_size), "--device", self.demo.device]
            if cli_main(argv) != 0:
                raise RuntimeError("voxforge generate failed for the image-to-3D example")
            return json.loads((target / "generation.json").read_text()), True
        return json.loads((target / "generation.json").read_text()), False

    # --- report -----------------------------------------------------------------------------
    def report(
        self, report: dict[str, Any], evaluation: dict[str, Any], example: dict[str, Any]
    ) -> dict[str, Any]:
        vae = json.loads((self.runs / "slat_vae" / "final_metrics.json").read_text())
        seconds = self.demo.state["seconds"]
        stage2 = {
            "plan": asdict(self.plan),
            "slat_vae_heldout": {k.removeprefix("eval_"): v for k, v in vae.items() if k.startswith("eval_")},
            "image_to_3d_heldout": {k: v for k, v in evaluation.items() if k != "per_asset"},
            "example": {k: example.get(k) for k in ("voxels", "gaussians", "seconds", "files")},
        }
        total = round(sum(seconds.values()), 1)
        report = {**report, "stage2": stage2, "seconds": seconds, "total_seconds": total}
        (self.out / "report.json").write_text(json.dumps(report, indent=1))
        v, e = stage2["slat_vae_heldout"], stage2["image_to_3d_heldout"]
        nan = float("nan")
        vae_preview = sorted((self.runs / "slat_vae" / "samples").glob("*/heldout_views.png"))
        lines = [
            "",
            "# Stage 2 (structured latents → 3D Gaussians)",
            "",
            f"Plan: {self.demo.plan.eval_assets} held-out + {self.plan.train_assets} training assets with "
            f"{self.plan.views} feature views at {self.plan.image_size}²; SLat-VAE {self.plan.vae_steps} steps, "
            f"SLat-flow {self.plan.flow_steps} steps, {self.plan.sample_steps} sampling steps.",
            "",
            "## SLat VAE reconstruction (rendered Gaussians vs ground truth, white background)",
            "",
            "| views | PSNR (dB) | SSIM |",
            "| --- | --- | --- |",
            f"| held-out views of training assets | {v.get('views_psnr', nan):.2f} | {v.get('views_ssim', nan):.3f} |",
            f"| held-out assets | {v.get('assets_psnr', nan):.2f} | {v.get('assets_ssim', nan):.3f} |",
            "",
            f"## Image → 3D on held-out assets ({e.get('assets', 0)} assets, one condition image each)",
            "",
            "| | structure IoU | yaw-aligned IoU | PSNR (dB) | SSIM |",
            "| --- | --- | --- | --- | --- |",
            f"| full pipeline | {e.get('iou', nan):.3f} | {e.get('yaw_iou', nan):.3f} | {e.get('psnr', nan):.2f} | "
            f"{e.get('ssim', nan):.3f} |",
            f"| stage 2 on the true structure | 1 | 1 | {e.get('stage2_psnr', nan):.2f} | {e.get('stage2_ssim', nan):.3f} |",
            "",
            f"Mean generation time per asset: {e.get('seconds', nan):.1f} s. PSNR compares with the asset's own "
            "views; a generated asset with another yaw scores low even when its shape is right.",
            "",
            "## Previews",
            "",
        ]
        if vae_preview:
            lines += [
                "SLat VAE: ground-truth views (top) and decoded Gaussians (bottom):",
                "",
                f"![]({vae_preview[-1].relative_to(self.out)})",
                "",
            ]
        if (self.runs / "samples_image_to_3d" / "image_to_3d.png").is_file():
            lines += [
                "Condition image | ground-truth view | image → 3D | stage 2 on the true structure:",
                "",
                "![](runs/samples_image_to_3d/image_to_3d.png)",
                "",
            ]
        files = ", ".join(f"`examples/image_to_3d/{name}`" for name in example.get("files", []))
        lines += [
            f"Exported example ({example.get('voxels')} voxels, {example.get('gaussians')} Gaussians): {files}.",
            "",
            "![](examples/image_to_3d/asset.gif)",
            "",
            "## Time per step, both stages (s)",
            "",
            "| step | seconds |",
            "| --- | --- |",
        ]
        lines += [f"| {name} | {value} |" for name, value in seconds.items()]
        lines += [f"| total | {total} |", ""]
        text = (self.out / "report.md").read_text()
        text = text.replace(
            "# voxforge demo — stage 1 (image → sparse structure)", "# voxforge demo — image → 3D", 1
        )
        (self.out / "report.md").write_text(text.rstrip("\n") + "\n" + "\n".join(lines))
        return report

    def run(self, report: dict[str, Any]) -> dict[str, Any]:
        from voxforge.errors import UserError

        state = self.demo.state
        if state.get("stage2_plan") not in (None, asdict(self.plan)):
            raise UserError(f"{self.out} holds a demo with other stage-2 settings; pass another --out")
        state["stage2_plan"] = asdict(self.plan)
        self.demo.save_state()

        def trained(result: Any) -> bool:
            return result.reason != "already_complete"

        self.demo.step("stage 2 data", self.prepare, done=self.prepare_done())
        self.demo.step("train slat_vae", self.train_vae, worked=trained)
        self.demo.step("encode slat", self.encode, worked=lambda summary: summary["encoded"] > 0)
        self.demo.step("train slat_flow", self.train_flow, worked=trained)
        evaluation, _ = self.demo.step("evaluate image to 3D", self.evaluate, worked=lambda result: result[1])
        example, _ = self.demo.step("export example", self.export_example, worked=lambda result: result[1])
        return self.report(report, evaluation, example)


def run_stage2(
    demo: Any, report: dict[str, Any], quick: bool = False, plan: Stage2Plan | None = None
) -> dict[str, Any]:
    """Run the stage-2 steps after the stage-1 demo `demo`; returns the merged report."""
    import sys

    plan = plan or (QUICK_STAGE2 if quick else FULL_STAGE2)
    merged = Stage2Demo(demo, plan).run(report)
    v = merged["stage2"]["slat_vae_heldout"]
    e = merged["stage2"]["image_to_3d_heldout"]
    print(
        f"voxforge demo: stage 2: SLat-VAE held-out PSNR {v.get('assets_psnr', float('nan')):.2f} dB; image to 3D "
        f"PSNR {e.get('psnr', float('nan')):.2f} dB, IoU {e.get('iou', float('nan')):.3f} (stage 2 alone "
        f"{e.get('stage2_psnr', float('nan')):.2f} dB); both stages {merged['total_seconds']:.0f} s",
        file=sys.stderr,
    )
    return merged
