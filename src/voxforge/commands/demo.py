"""`voxforge demo [--quick]`: the whole image → 3D pipeline on built-in data, with a report.

Stage 1 (this module): synth → prepare → train ss_vae → encode → train ss_flow → evaluate on
held-out assets → `voxforge generate structure` examples → `report.md` + `report.json`; then
stage 2 (`voxforge.pipelines.demo_stage2`) adds SLat VAE / flow, image → 3D and exports.

Design:
- Every step goes through the same public code a user runs (`data.synth`, `data.prepare`,
  `train.engine.train` with the built-in recipes plus overrides, `encode_dataset`, the
  `generate` command), so the demo is also the integration test of the stage.
- Re-runnable: each step is idempotent (synth rewrites identical files, prepare and encode
  skip finished assets, training resumes or reports "already complete", examples are
  skipped when their output exists), so after an interruption the same command finishes the
  job. `demo_state.json` keeps the plan (a different plan in the same folder is refused:
  mixing step counts would resume one run with another's schedule) and the time each step
  took when it actually ran.
- Held-out assets: the first `eval_assets` ids in sorted order train neither model (the
  stages' shared split); VAE reconstruction and generation are scored on them.
  Generation IoU is reported for conditional samples and, from the same noise, for
  unconditional ones, plain and yaw-aligned (synth objects have a random yaw that a single
  view does not reveal).
- Budgets (2 idle CPU cores, measured): `--quick` 1 min 40 s for both stages (CI smoke test,
  numbers only indicative); the full demo 14 min 39 s, of which stage 1 took 10 min 54 s
  (limits: 3, 20 and 15 minutes). Stage 2 is `voxforge.pipelines.demo_stage2`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class DemoPlan:
    num_assets: int
    eval_assets: int
    cond_views: int
    image_size: int
    vae_steps: int
    flow_steps: int
    eval_steps: int
    resolution: int = 32
    seed: int = 0


QUICK = DemoPlan(
    num_assets=44, eval_assets=8, cond_views=4, image_size=96, vae_steps=60, flow_steps=80, eval_steps=10
)
FULL = DemoPlan(
    num_assets=330, eval_assets=16, cond_views=8, image_size=128, vae_steps=600, flow_steps=700, eval_steps=25
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="image -> 3D on built-in data: synth, prepare, train all four models, generate, report",
        description="End-to-end image -> 3D demo on the built-in synthetic dataset: synth -> prepare -> "
        "SS-VAE -> encode -> SS-flow -> SLat-VAE -> SLat-flow -> held-out evaluation and exports, with a "
        "report (about 15 minutes on 2 CPU cores, stage 1 about 11; --quick under 2). Re-run the same "
        "command to resume after an interruption.",
    )
    p.add_argument("--out", default=None, help="output folder (default: runs/demo, or runs/demo-quick)")
    p.add_argument("--quick", action="store_true", help="a smaller, faster run for CI (under 2 minutes)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.set_defaults(func=run)


class Demo:
    def __init__(self, out: Path, plan: DemoPlan, device: str):
        self.out, self.plan, self.device = out, plan, device
        self.data, self.runs = out / "data", out / "runs"
        self.state_path = out / "demo_state.json"
        self.state: dict[str, Any] = {"plan": asdict(plan), "seconds": {}}

    # --- bookkeeping -----------------------------------------------------------------------
    def load_state(self) -> None:
        from voxforge.errors import UserError

        if self.state_path.is_file():
            previous = json.loads(self.state_path.read_text())
            if previous.get("plan") != asdict(self.plan):
                raise UserError(
                    f"{self.out} holds a demo with other settings ({'quick' if self.plan != QUICK else 'full'} "
                    "run); pass another --out"
                )
            self.state = previous
        self.out.mkdir(parents=True, exist_ok=True)
        self.save_state()

    def save_state(self) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=1))
        tmp.replace(self.state_path)

    def step(self, name: str, action, *, done: bool = False, worked=lambda result: True) -> Any:
        """Run `action` unless `done`; record its wall time when it did work (not a resume check)."""
        if done:
            print(f"voxforge demo: {name}: already done", file=sys.stderr)
            return None
        print(f"voxforge demo: {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        result = action()
        seconds = time.perf_counter() - start
        if worked(result) or name not in self.state["seconds"]:
            self.state["seconds"][name] = round(seconds, 1)
            self.save_state()
            print(f"voxforge demo: {name}: {seconds:.1f} s", file=sys.stderr, flush=True)
        else:
            print(f"voxforge demo: {name}: already done", file=sys.stderr, flush=True)
        return result

    # --- steps ------------------------------------------------------------------------------
    def synth(self) -> None:
        from voxforge.data.synth import SynthConfig, write_dataset

        write_dataset(self.data / "synth", SynthConfig(num=self.plan.num_assets, seed=self.plan.seed))

    def synth_done(self) -> bool:
        labels = self.data / "synth" / "labels.json"
        if not labels.is_file():
            return False
        doc = json.loads(labels.read_text())
        return doc.get("num") == self.plan.num_assets and doc.get("seed") == self.plan.seed

    def prepare_done(self) -> bool:
        from voxforge.data import PreparedDataset

        root = self.data / "prepared"
        if not list(root.glob("manifest*.sqlite")):
            return False
        required = ("cond", f"voxels_{self.plan.resolution}")
        return len(PreparedDataset(root).ids(require=required)) >= self.plan.num_assets

    def prepare(self) -> dict[str, Any]:
        from voxforge.data.prepare import PrepareConfig, prepare

        config = PrepareConfig(
            resolution=self.plan.resolution,
            image_size=self.plan.image_size,
            cond_views=self.plan.cond_views,
            steps=("ingest", "cond", "voxels"),
            seed=self.plan.seed,
            progress=False,
        )
        return prepare(self.data / "synth", self.data / "prepared", config)

    def train(
        self,
        recipe_name: str,
        run: Path,
        overrides: list[str],
        *,
        steps: int,
        checkpoints: int,
        max_warmup: int,
    ) -> Any:
        """Train a built-in recipe for `steps` (`checkpoints` checkpoints, no periodic samples)."""
        from voxforge.config.recipe import load_recipe
        from voxforge.train.engine import train

        common = ["train.progress=false", "train.tensorboard=false", f"train.device={self.device}"]
        schedule = [
            f"train.max_steps={steps}",
            f"train.checkpoint_every={max(1, steps // checkpoints)}",
            "train.sample_every=0",
            f"optim.warmup_steps={min(max_warmup, steps // 5)}",
        ]
        return train(load_recipe(recipe_name, common + overrides + schedule), run)

    def train_vae(self) -> Any:
        p = self.plan
        return self.train(
            "ss_vae_tiny",
            self.runs / "ss_vae",
            [
                f"data.path={self.data / 'prepared'}",
                f"data.eval_assets={p.eval_assets}",
                "data.augment=yaw",  # upright synthetic assets only: the 8 yaw symmetries learn faster
            ],
            steps=p.vae_steps,
            checkpoints=3,
            max_warmup=20,
        )

    def encode(self) -> dict[str, Any]:
        from voxforge.pipelines.structure import encode_dataset
        from voxforge.train.distributed import resolve_device

        return encode_dataset(
            self.runs / "ss_vae",
            self.data / "prepared",
            self.data / "ss_latents",
            device=resolve_device(self.device),
        )

    def train_flow(self) -> Any:
        p = self.plan
        return self.train(
            "ss_flow_tiny",
            self.runs / "ss_flow",
            [
                f"data.latents={self.data / 'ss_latents'}",
                f"data.eval_assets={p.eval_assets}",
                f"sampler.steps={p.eval_steps}",
            ],
            steps=p.flow_steps,
            checkpoints=3,
            max_warmup=30,
        )

    def evaluation(self) -> tuple[dict[str, Any], bool]:
        """The flow stage's final evaluation (held-out assets), recomputed only if missing."""
        path = self.runs / "ss_flow" / "eval_generation.json"
        if path.is_file():
            return json.loads(path.read_text()), False
        from voxforge.config.recipe import load_recipe
        from voxforge.pipelines.structure import StructurePipeline, evaluate_generation
        from voxforge.stages.ss_vae import split_ids
        from voxforge.train.distributed import resolve_device

        run = self.runs / "ss_flow"
        recipe = load_recipe(run / "config.yaml")
        pipeline = StructurePipeline.from_runs(run, device=resolve_device(self.device))
        ids = json.loads((self.data / "ss_latents" / "latents.json").read_text())["ids"]
        _, eval_ids = split_ids(ids, self.plan.eval_assets)
        result = evaluate_generation(
            pipeline,
            self.data / "prepared",
            eval_ids,
            sampler=recipe.sampler,
            out_dir=run / "samples" / "final",
        )
        path.write_text(json.dumps(result, indent=1))
        return result, True

    def examples(self) -> tuple[list[dict[str, Any]], bool]:
        """`voxforge generate structure` on held-out condition views: one image, and two in each mode."""
        from PIL import Image

        from voxforge.cli import main as cli_main
        from voxforge.data import PreparedDataset
        from voxforge.stages.ss_vae import split_ids

        data = PreparedDataset(self.data / "prepared")
        ids = json.loads((self.data / "ss_latents" / "latents.json").read_text())["ids"]
        _, eval_ids = split_ids(ids, self.plan.eval_assets)
        inputs = self.out / "examples" / "inputs"
        inputs.mkdir(parents=True, exist_ok=True)
        made, generated = [], False
        cases: list[tuple[str, list[Path], str]] = []
        for n, asset in enumerate(eval_ids[:2]):
            views = sorted((data.asset_dir(asset) / "cond").glob("[0-9]*.png"))
            # an RGB copy on white exercises the plain-background removal
            rgba = Image.open(views[0]).convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            white.alpha_composite(rgba)
            rgb_path = inputs / f"asset{n}_view0_white.png"
            white.convert("RGB").save(rgb_path)
            cases.append((f"asset{n}_single_white_background", [rgb_path], "stochastic"))
            if n == 0 and len(views) > 1:
                cases.append((f"asset{n}_two_views_stochastic", views[:2], "stochastic"))
                cases.append((f"asset{n}_two_views_multidiffusion", views[:2], "multidiffusion"))
        for name, images, mode in cases:
            target = self.out / "examples" / name
            if not (target / "generation.json").is_file():
                argv = ["generate", "structure", "--model", str(self.runs / "ss_flow"), "--out", str(target)]
                argv += [a for image in images for a in ("--image", str(image))]
                argv += [
                    "--mode",
                    mode,
                    "--steps",
                    str(self.plan.eval_steps),
                    "--cfg",
                    "3.0",
                    "--device",
                    self.device,
                ]
                if cli_main(argv) != 0:
                    raise RuntimeError(f"voxforge generate failed for the example {name}")
                generated = True
            record = json.loads((target / "generation.json").read_text())
            made.append(
                {"name": name, "mode": mode, "voxels": record["voxels"], "seconds": record["seconds"]}
            )
        return made, generated

    # --- report -----------------------------------------------------------------------------
    def report(self, vae: dict[str, Any], generation: dict[str, Any], examples: list[dict[str, Any]]) -> dict:
        def latest_sample(run: str, name: str) -> str | None:
            found = sorted((self.runs / run / "samples").glob(f"*/{name}"))
            return str(found[-1].relative_to(self.out)) if found else None

        report = {
            "plan": asdict(self.plan),
            "vae_heldout": {k.removeprefix("eval_"): v for k, v in vae.items() if k.startswith("eval_")},
            "generation_heldout": {
                k: generation[k] for k in ("iou", "iou_uncond", "yaw_iou", "yaw_iou_uncond", "assets")
            },
            "generation_sampler": generation.get("sampler"),
            "examples": examples,
            "seconds": self.state["seconds"],
            "total_seconds": round(sum(self.state["seconds"].values()), 1),
            "previews": {
                "vae_reconstructions": latest_sample("ss_vae", "reconstructions.png"),
                "generations": latest_sample("ss_flow", "generations.png"),
                "examples": [f"examples/{e['name']}/preview.png" for e in examples],
            },
        }
        (self.out / "report.json").write_text(json.dumps(report, indent=1))
        v, g = report["vae_heldout"], report["generation_heldout"]
        lines = [
            "# voxforge demo — stage 1 (image → sparse structure)",
            "",
            f"Plan: {self.plan.num_assets} synthetic assets ({self.plan.eval_assets} held out), "
            f"{self.plan.resolution}³ voxels, SS-VAE {self.plan.vae_steps} steps, SS-flow "
            f"{self.plan.flow_steps} steps, {self.plan.eval_steps} sampling steps.",
            "",
            "## Structure VAE (held-out reconstruction)",
            "",
            "| IoU | precision | recall |",
            "| --- | --- | --- |",
            f"| {v.get('iou', float('nan')):.3f} | {v.get('precision', float('nan')):.3f} | "
            f"{v.get('recall', float('nan')):.3f} |",
            "",
            "## Generation from held-out condition images (mean over assets)",
            "",
            "| samples | IoU | yaw-aligned IoU |",
            "| --- | --- | --- |",
            f"| conditional (image) | {g['iou']:.3f} | {g['yaw_iou']:.3f} |",
            f"| unconditional (same noise) | {g['iou_uncond']:.3f} | {g['yaw_iou_uncond']:.3f} |",
            "",
            "Yaw-aligned: best IoU over rotations of the sample about +Y (15° steps) and mirror images; a "
            "single view does not reveal an object's yaw in the world frame.",
            "",
            "## Previews",
            "",
        ]
        previews = report["previews"]
        if previews["vae_reconstructions"]:
            lines += [
                "Ground truth (top) and VAE reconstruction (bottom):",
                "",
                f"![]({previews['vae_reconstructions']})",
                "",
            ]
        if previews["generations"]:
            lines += [
                "Condition image | ground truth | conditional sample | unconditional sample:",
                "",
                f"![]({previews['generations']})",
                "",
            ]
        for example in examples:
            lines += [f"`{example['name']}` ({example['voxels']} voxels, {example['seconds']:.1f} s):", ""]
            lines += [f"![](examples/{example['name']}/preview.png)", ""]
        lines += ["## Time per step (s)", "", "| step | seconds |", "| --- | --- |"]
        lines += [f"| {name} | {seconds} |" for name, seconds in self.state["seconds"].items()]
        lines += [f"| total | {report['total_seconds']} |", ""]
        (self.out / "report.md").write_text("\n".join(lines))
        return report

    def run(self) -> dict[str, Any]:
        self.load_state()

        def trained(result: Any) -> bool:
            return result.reason != "already_complete"

        self.step("synth", self.synth, done=self.synth_done())
        self.step("prepare", self.prepare, done=self.prepare_done())
        self.step("train ss_vae", self.train_vae, worked=trained)
        self.step("encode", self.encode, worked=lambda summary: summary["encoded"] > 0)
        self.step("train ss_flow", self.train_flow, worked=trained)
        generation, _ = self.step("evaluate", self.evaluation, worked=lambda result: result[1])
        examples, _ = self.step("generate examples", self.examples, worked=lambda result: result[1])
        vae = json.loads((self.runs / "ss_vae" / "final_metrics.json").read_text())
        return self.report(vae, generation, examples)


def run(args: argparse.Namespace) -> int:
    plan = QUICK if args.quick else FULL
    out = Path(args.out or ("runs/demo-quick" if args.quick else "runs/demo"))
    demo = Demo(out, plan, args.device)
    from voxforge.pipelines.demo_stage2 import run_stage2  # stage 2: SLat, image -> 3D, exports

    report = run_stage2(demo, demo.run(), quick=args.quick)
    v, g = report["vae_heldout"], report["generation_heldout"]
    print(
        f"voxforge demo: VAE held-out IoU {v.get('iou', float('nan')):.3f}; generation IoU conditional "
        f"{g['iou']:.3f} vs unconditional {g['iou_uncond']:.3f} (yaw-aligned {g['yaw_iou']:.3f} vs "
        f"{g['yaw_iou_uncond']:.3f}); {report['total_seconds']:.0f} s; report: {out / 'report.md'}",
        file=sys.stderr,
    )
    return 0
