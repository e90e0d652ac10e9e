"""Evaluation and report of an image pipeline run (`workflows.image_pipeline`).

**Evaluation** (`evaluate_images`, the pipeline's `evaluate` step) needs no download:

1. the judge (`eval.image_attributes`) trains on 3/4 of the real judge images (`OUT/synth_judge`:
   every colour, the held-back one included, drawn apart from the training data) and is scored
   on the other quarter, so the report says how far it can be trusted;
2. the final flow (`evaluate.model`, default the last full flow stage) generates for a fixed
   prompt set (`evaluate.prompts.seed`: the same prompts on every run seed, never naming the
   held-back colour) with fixed noise (image n: seed + n), conditionally, unconditionally (the
   empty prompt) and for shuffled prompts (`evaluate_prompt_modes`): prompt accuracy per
   attribute, FID and KID in the judge's features against the judge's held-out real images;
3. with a LoRA stage (`evaluate.lora`, default the stage trained on the held-back data), its
   base (`init_from`) and the LoRA generate for prompts naming the held-back colour with the same
   noise; the judge's colour accuracy on them says whether the LoRA learned the colour;
4. optionally, standard FID (Inception) and CLIP score from local weights
   (`evaluate.standard`: `voxforge.eval.standard_image`).

It writes `OUT/eval/image_eval.json`, `OUT/eval/grid.png` (a row per prompt: its conditional
samples, the unconditional sample of the same noise, the sample of the prompt it was shuffled
to), `OUT/eval/held_back.png` (a row per held-back prompt: base, LoRA) and `OUT/eval/curves/
<stage>.png` (the training loss of each run, from its `metrics.jsonl`).

**Checks** (`evaluate.checks`: name -> threshold; a check passes when value >= threshold, and
fails with the value null when its step did not run):

| check | value |
| --- | --- |
| `ae_psnr` | the autoencoder's held-out reconstruction PSNR (dB) |
| `judge_colour` | the judge's colour accuracy on real images it did not train on |
| `judge_mean` | the judge's mean accuracy over the attributes on those images |
| `prompt_gain` | final flow: conditional minus unconditional mean prompt accuracy |
| `colour_gain` | final flow: conditional minus unconditional colour accuracy |
| `shuffled_gain` | final flow: conditional minus shuffled-prompt mean accuracy |
| `prompt_colour` | final flow: conditional colour accuracy |
| `lora_colour` | LoRA: held-back colour accuracy on the prompts naming it |
| `lora_colour_gain` | LoRA minus its base on those prompts |
| `lora_pixels` | LoRA: share of the held-back prompts' images that show the colour (below) |
| `lora_pixels_gain` | LoRA minus its base on that share |

"Shows the colour" is read off the pixels, not the judge: an image shows it when at least
`evaluate.pixel_share` (2 %) of its pixels are nearer to that colour than to any other colour
of the built-in palette (shapes and backgrounds). The small judge, trained on a hundred-odd
real images, reads the LoRA's first, lighter attempts at a colour it never drew as blue;
the pixel count says whether the colour is there at all, which is what a LoRA teaching a
held-back attribute must first achieve.

The checks, the steps table and the loss curves are drawn by `workflows.report_parts`, as in
every family's report (`loss_curve` is importable from here too).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from voxforge.config.core import from_dict, option
from voxforge.data.synth_images import ATTRIBUTES, BACKGROUND_RGB, SynthImagesConfig, caption_of, draw_labels
from voxforge.errors import ConfigError, UserError
from voxforge.eval.image_attributes import (
    AttributeClassifierConfig,
    attribute_accuracy,
    chance_accuracy,
    evaluate_prompt_modes,
    train_attribute_classifier,
)
from voxforge.pipelines.image import ImagePipeline
from voxforge.workflows.report_parts import (
    Report,
    checks_record,
    checks_table,
    label_font,
    loss_curve,
    number,
    read_json,
    save_report,
    score_checks,
    step_times,
    steps_table,
)

__all__ = [
    "CHECKS",
    "EVAL_RECORD",
    "ImageEvaluateSpec",
    "ImageReport",
    "evaluate_images",
    "loss_curve",
    "write_image_report",
]

EVAL_RECORD = "image_eval.json"
#: the held-back prompts draw from prompts.seed + this (the main set never names that colour)
HELD_BACK_PROMPT_OFFSET = 1


@dataclass
class JudgeSpec:
    images: int = option(192, ge=8, help="real images (every colour); the judge trains on 3/4 of them")
    classifier: dict[str, Any] = option(
        default_factory=dict, help="voxforge.eval.image_attributes.AttributeClassifierConfig settings"
    )


@dataclass
class PromptSpec:
    num: int = option(24, ge=2, help="prompts of the fixed set (the held-back colour left out)")
    per_prompt: int = option(1, ge=1, help="samples per prompt (image n starts from the noise of seed + n)")
    held_back: int = option(16, ge=1, help="prompts naming the held-back colour (base vs LoRA)")
    seed: int = option(7, ge=0, help="the prompt set's draw; fixed, so every run seed is judged alike")


@dataclass
class SamplingSpec:
    steps: int = option(12, ge=1)
    cfg: float = option(4.5, ge=0.0, help="guidance scale of the conditional and shuffled samples")
    sampler: str = option("dpm", choices=("dpm", "euler", "heun"))
    batch: int = option(32, ge=1, help="images per sampling call")


@dataclass
class StandardSpec:
    inception: str = option("", help="local Inception weights for standard FID (voxforge.eval.inception)")
    clip: str = option("", help="a local transformers CLIPModel folder for CLIP score")


@dataclass
class ImageEvaluateSpec:
    judge: JudgeSpec | None = option(default_factory=JudgeSpec, help="the offline attribute judge")
    prompts: PromptSpec = option(default_factory=PromptSpec)
    sampling: SamplingSpec = option(default_factory=SamplingSpec)
    model: str = option("", help="the stage judged (default: the last full image_flow stage)")
    lora: str = option("", help="the LoRA stage (default: the stage with train_on: held_back)")
    standard: StandardSpec | None = option(None, help="standard FID / CLIP score from local weights")
    pixel_share: float = option(
        0.02, gt=0.0, le=1.0, help="share of pixels nearest the held-back colour for an image to show it"
    )
    checks: dict[str, float] = option(default_factory=dict, help="check name -> threshold (CHECKS)")

    def resolve_stages(self, stages: dict[str, dict[str, Any]], kinds: dict[str, str], source: str) -> None:
        """Fill `model` and `lora` from the stages when left empty; check what was named."""
        flows = [
            n for n, k in kinds.items() if k == "image_flow" and stages[n].get("train_on") != "held_back"
        ]
        if not self.model:
            if not flows:
                raise ConfigError(f"{source}: key 'evaluate': no image_flow stage to evaluate")
            self.model = flows[-1]
        if kinds.get(self.model) != "image_flow":
            raise ConfigError(f"{source}: key 'evaluate.model': '{self.model}' is not an image_flow stage")
        if not self.lora:
            held = [n for n in kinds if stages[n].get("train_on") == "held_back"]
            self.lora = held[-1] if held else ""
        if self.lora and not stages.get(self.lora, {}).get("init_from"):
            raise ConfigError(
                f"{source}: key 'evaluate.lora': '{self.lora}' is not a stage with init_from (its base)"
            )
        unknown = sorted(set(self.checks) - set(CHECKS))
        if unknown:
            raise ConfigError(
                f"{source}: key 'evaluate.checks': unknown checks {unknown}; expected some of {sorted(CHECKS)}"
            )


# --- evaluation -----------------------------------------------------------------------------


def _read_synth(folder: Path) -> tuple[np.ndarray, list[dict[str, Any]]]:  # uint8 [N, H, W, 3], labels
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines() if line]
    images = []
    for row in rows:
        with Image.open(folder / row["file_name"]) as image:  # written by this run's synth step
            images.append(np.asarray(image.convert("RGB")))
    return np.stack(images), [{k: row[k] for k in ATTRIBUTES} for row in rows]


def prompt_set(num: int, seed: int, **colours: tuple[str, ...]) -> tuple[list[str], list[dict[str, Any]]]:
    """`num` captions of the built-in grammar and their labels (`exclude_colours` / `only_colours`)."""
    config = SynthImagesConfig(num=num, seed=seed, **colours)
    labels = [{k: v for k, v in draw_labels(config, i).items() if k in ATTRIBUTES} for i in range(num)]
    return [caption_of(row) for row in labels], labels


def _sampler(pipe: ImagePipeline, spec: SamplingSpec, seed: int) -> Callable[..., np.ndarray]:
    def generate(prompts: list[str], cfg: float | None = None) -> np.ndarray:  # float [N, H, W, 3]
        chunks = [
            pipe.generate(
                prompts[start : start + spec.batch],
                steps=spec.steps,
                cfg=spec.cfg if cfg is None else cfg,
                seed=seed + start,
                sampler=spec.sampler,
                output="float",
            )
            for start in range(0, len(prompts), spec.batch)
        ]
        return np.concatenate(chunks)

    return generate


def prompt_grid(
    rows: list[tuple[str, list[np.ndarray]]], columns: list[str], path: Path, scale: int = 2
) -> None:
    """A PNG with one row per (caption, images [H, W, 3] float in [0, 1]) and a header of `columns`."""
    if not rows:
        return
    height, width = rows[0][1][0].shape[:2]
    cell_w, cell_h = width * scale, height * scale
    text_w, gap, header = 330, 4, 16
    count = max(len(images) for _, images in rows)
    canvas = Image.new(
        "RGB", (text_w + count * (cell_w + gap), header + len(rows) * (cell_h + gap)), (255, 255, 255)
    )
    draw = ImageDraw.Draw(canvas)
    font = label_font()
    for c, name in enumerate(columns):
        draw.text((text_w + c * (cell_w + gap), 2), name, fill=(0, 0, 0), font=font)
    for r, (caption, images) in enumerate(rows):
        top = header + r * (cell_h + gap)
        draw.text((2, top + cell_h // 2 - 6), caption, fill=(0, 0, 0), font=font)
        for c, image in enumerate(images):
            tile = Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8))
            canvas.paste(
                tile.resize((cell_w, cell_h), Image.Resampling.NEAREST), (text_w + c * (cell_w + gap), top)
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def evaluate_images(
    spec: ImageEvaluateSpec,
    out: Path,
    *,
    seed: int,
    held_back: str | None,
    device: torch.device,
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """The evaluation (module docstring); returns the record written to `OUT/eval/image_eval.json`."""
    eval_dir = out / "eval"
    result: dict[str, Any] = {"model": spec.model, "lora": spec.lora, "held_back": held_back}
    if spec.judge is None:
        raise UserError("key 'evaluate.judge': the image evaluation needs its judge")
    real, labels = _read_synth(out / "synth_judge")
    split = max(1, len(real) * 3 // 4)
    info = json.loads((out / "synth_judge" / "synth.json").read_text())
    attributes = {name: info["attributes"][name] for name in ATTRIBUTES}
    judge_cfg = from_dict(
        AttributeClassifierConfig,
        {"seed": seed, **spec.judge.classifier},
        source="the pipeline file",
        prefix="evaluate.judge.classifier",
    )
    log(f"evaluate: training the judge on {split} real images")
    judge = train_attribute_classifier(real[:split], labels[:split], attributes, judge_cfg, device=device)
    test_images, test_labels = real[split:], labels[split:]
    result["judge"] = {
        "train_images": split,
        "test_images": len(test_images),
        "accuracy": attribute_accuracy(judge, test_images, test_labels),
        "chance": chance_accuracy(test_labels, list(ATTRIBUTES)),
    }

    exclude = (held_back,) if held_back else ()
    prompts, prompt_labels = prompt_set(spec.prompts.num, spec.prompts.seed, exclude_colours=exclude)
    per = spec.prompts.per_prompt
    repeated = [p for p in prompts for _ in range(per)]
    repeated_labels = [row for row in prompt_labels for _ in range(per)]
    pipe = ImagePipeline.from_run(out / "runs" / spec.model, device=device)
    generate = _sampler(pipe, spec.sampling, seed)
    made: dict[tuple[str, ...], np.ndarray] = {}

    def remembered(batch: list[str]) -> np.ndarray:
        made[tuple(batch)] = generate(batch)
        return made[tuple(batch)]

    unconditional: dict[str, np.ndarray] = {}

    def generate_unconditional(batch: list[str]) -> np.ndarray:  # the empty prompt, no guidance
        unconditional["images"] = generate([""] * len(batch), cfg=1.0)
        return unconditional["images"]

    log(f"evaluate: {len(repeated)} samples x 3 prompt modes from {spec.model}")
    modes = evaluate_prompt_modes(
        judge,
        remembered,
        repeated,
        repeated_labels,
        test_images,
        generate_unconditional=generate_unconditional,
        seed=seed,
        kid_subset_size=min(100, len(repeated), len(test_images)),
    )
    result["prompts"] = {"count": len(prompts), "per_prompt": per, "seed": spec.prompts.seed}
    result["modes"] = modes
    result["prompt_chance"] = chance_accuracy(repeated_labels, list(ATTRIBUTES))
    conditional = made[tuple(repeated)]
    shuffled = next(images for key, images in made.items() if key != tuple(repeated))
    rows = [
        (
            prompt,
            [conditional[i * per + k] for k in range(per)]
            + [unconditional["images"][i * per], shuffled[i * per]],
        )
        for i, prompt in enumerate(prompts)
    ]
    columns = [f"sample {k + 1}" for k in range(per)] + ["uncond.", "shuffled"]
    prompt_grid(rows, columns, eval_dir / "grid.png")

    if spec.lora and held_back:
        lora_dir = out / "runs" / spec.lora
        base_dir = Path(json.loads((lora_dir / "image.json").read_text())["base"])
        colour_prompts, colour_labels = prompt_set(
            spec.prompts.held_back, spec.prompts.seed + HELD_BACK_PROMPT_OFFSET, only_colours=(held_back,)
        )
        log(f"evaluate: {len(colour_prompts)} '{held_back}' prompts, base ({base_dir.name}) vs LoRA")
        images = {}
        for name, run_dir in (("base", base_dir), ("lora", lora_dir)):
            sampler = _sampler(ImagePipeline.from_run(run_dir, device=device), spec.sampling, seed)
            images[name] = sampler(colour_prompts)
        result["held_back_eval"] = {
            "colour": held_back,
            "prompts": len(colour_prompts),
            "base_stage": base_dir.name,
            "pixel_share": spec.pixel_share,
            **{
                name: {
                    **attribute_accuracy(judge, imgs, colour_labels),
                    "shown": float(colour_shown(imgs, held_back, spec.pixel_share).mean()),
                }
                for name, imgs in images.items()
            },
        }
        prompt_grid(
            [(p, [images["base"][i], images["lora"][i]]) for i, p in enumerate(colour_prompts)],
            [f"base ({base_dir.name})", f"LoRA ({spec.lora})"],
            eval_dir / "held_back.png",
        )

    if spec.standard is not None and (spec.standard.inception or spec.standard.clip):
        # the lead's module of standard metrics, imported only when weights are named
        from voxforge.eval.standard_image import clip_score, standard_fid

        fake = torch.from_numpy(conditional).permute(0, 3, 1, 2).float()
        standard: dict[str, float] = {}
        if spec.standard.inception:
            reference = torch.from_numpy(real).permute(0, 3, 1, 2).float() / 255.0
            standard["fid"] = float(standard_fid(reference, fake, weights=spec.standard.inception))
        if spec.standard.clip:
            standard["clip_score"] = float(clip_score(fake, repeated, model_dir=spec.standard.clip))
        result["standard"] = standard

    for stage in sorted(p.name for p in (out / "runs").iterdir() if p.is_dir()):
        loss_curve(out / "runs" / stage / "metrics.jsonl", eval_dir / "curves" / f"{stage}.png", stage)
    c, u = modes["conditional"], modes["unconditional"]
    result["summary"] = (
        f"{spec.model}: prompt accuracy {c['mean']:.3f} conditional vs {u['mean']:.3f} unconditional "
        f"(colour {c['colour']:.3f} vs {u['colour']:.3f})"
    )
    if "held_back_eval" in result:
        h = result["held_back_eval"]
        result["summary"] += (
            f"; '{held_back}' colour: base {h['base']['colour']:.3f}, LoRA {h['lora']['colour']:.3f}"
        )
    return result


# --- report ---------------------------------------------------------------------------------


def _mode(evaluation: dict[str, Any], mode: str, key: str) -> float | None:
    return evaluation.get("modes", {}).get(mode, {}).get(key)


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else float(a) - float(b)


def _held(evaluation: dict[str, Any], model: str, key: str = "colour") -> float | None:
    return evaluation.get("held_back_eval", {}).get(model, {}).get(key)


def colour_shown(images: np.ndarray, colour: str, share: float) -> np.ndarray:  # -> bool [N]
    """Whether each image (uint8 or float [N, H, W, 3]) has at least `share` of its pixels
    nearest to `colour` among the built-in palette."""
    x = np.asarray(images, dtype=np.float32)
    if x.max() <= 1.0:
        x = x * 255.0
    names = list(BACKGROUND_RGB)
    palette = np.array([BACKGROUND_RGB[n] for n in names], dtype=np.float32)  # [K, 3]
    nearest = ((x[..., None, :] - palette) ** 2).sum(-1).argmin(-1)  # [N, H, W]
    return (nearest == names.index(colour)).mean(axis=(1, 2)) >= share


CHECKS: dict[str, tuple[str, Callable[[dict[str, Any], dict[str, Any]], float | None]]] = {
    "ae_psnr": ("autoencoder held-out PSNR (dB)", lambda e, ae: ae.get("psnr")),
    "judge_colour": (
        "judge colour accuracy on real images it did not train on",
        lambda e, ae: e.get("judge", {}).get("accuracy", {}).get("colour"),
    ),
    "judge_mean": (
        "judge mean attribute accuracy on those images",
        lambda e, ae: e.get("judge", {}).get("accuracy", {}).get("mean"),
    ),
    "prompt_gain": (
        "mean prompt accuracy, conditional minus unconditional",
        lambda e, ae: _difference(_mode(e, "conditional", "mean"), _mode(e, "unconditional", "mean")),
    ),
    "colour_gain": (
        "colour accuracy, conditional minus unconditional",
        lambda e, ae: _difference(_mode(e, "conditional", "colour"), _mode(e, "unconditional", "colour")),
    ),
    "shuffled_gain": (
        "mean prompt accuracy, conditional minus shuffled prompts",
        lambda e, ae: _difference(_mode(e, "conditional", "mean"), _mode(e, "shuffled", "mean")),
    ),
    "prompt_colour": ("colour accuracy, conditional", lambda e, ae: _mode(e, "conditional", "colour")),
    "lora_colour": ("LoRA: held-back colour accuracy", lambda e, ae: _held(e, "lora")),
    "lora_colour_gain": (
        "held-back colour accuracy, LoRA minus its base",
        lambda e, ae: _difference(_held(e, "lora"), _held(e, "base")),
    ),
    "lora_pixels": (
        "LoRA: share of held-back prompts showing the colour",
        lambda e, ae: _held(e, "lora", "shown"),
    ),
    "lora_pixels_gain": (
        "share showing the held-back colour, LoRA minus its base",
        lambda e, ae: _difference(_held(e, "lora", "shown"), _held(e, "base", "shown")),
    ),
}


class ImageReport(Report):
    """The report of an image pipeline run (`build_image_report`)."""


def _ae_eval(out: Path, stages: dict[str, Any]) -> dict[str, Any]:
    for name in stages:
        record = out / "runs" / name / "eval_reconstruction.json"
        if record.is_file():
            return {"stage": name, **read_json(record)}
    return {}


def build_image_report(out: str | Path) -> ImageReport:
    out = Path(out)
    pipeline = read_json(out / "pipeline.json")
    spec = pipeline.get("spec", {})
    evaluation = read_json(out / "eval" / EVAL_RECORD)
    ae = _ae_eval(out, spec.get("stages", {}))
    checks = score_checks(CHECKS, (spec.get("evaluate") or {}).get("checks", {}), evaluation, ae)
    flows = {
        name: read_json(out / "runs" / name / "eval_heldout.json")
        for name in spec.get("stages", {})
        if (out / "runs" / name / "eval_heldout.json").is_file()
    }
    data = {
        "spec": spec,
        "autoencoder": ae,
        "flows_heldout": flows,
        "judge": evaluation.get("judge", {}),
        "prompts": evaluation.get("prompts", {}),
        "model": evaluation.get("model"),
        "modes": evaluation.get("modes", {}),
        "prompt_chance": evaluation.get("prompt_chance", {}),
        "held_back": evaluation.get("held_back_eval", {}),
        "standard": evaluation.get("standard", {}),
        **step_times(pipeline.get("steps", [])),
        **checks_record(checks),
    }
    return ImageReport(data, checks)


def _markdown(report: ImageReport, title: str, out: Path) -> str:
    d = report.data
    spec = d["spec"]
    synth = spec.get("data", {}).get("synth_images") or {}
    held = spec.get("data", {}).get("held_back") or {}
    lines = [
        f"# {title}",
        "",
        f"Data: {synth.get('num', '?')} built-in captioned images at {synth.get('size', '?')} px"
        + (
            f" without '{held['colour']}', {held['num']} held-back images all '{held['colour']}'"
            if held
            else ""
        )
        + f"; seed {spec.get('seed')}. Stages: "
        + ", ".join(
            f"{name} ({entry.get('recipe')}, {entry.get('train', {}).get('max_steps', 'recipe default')} steps"
            + (f", from {entry['init_from']}" if entry.get("init_from") else "")
            + ")"
            for name, entry in spec.get("stages", {}).items()
        )
        + ".",
        "",
        f"## Checks: {'all passed' if report.passed else 'FAILED'}",
        "",
        *checks_table(report.checks),
    ]
    judge = d["judge"]
    if judge:
        acc, chance = judge.get("accuracy", {}), judge.get("chance", {})
        names = [n for n in ATTRIBUTES if n in acc]
        lines += [
            "",
            f"## The judge (trained on {judge.get('train_images')} real images, scored on "
            f"{judge.get('test_images')} others)",
            "",
            "| | " + " | ".join(names) + " | mean |",
            "| --- " * (len(names) + 2) + "|",
            "| accuracy | "
            + " | ".join(number(acc.get(n)) for n in names)
            + f" | {number(acc.get('mean'))} |",
            "| chance | "
            + " | ".join(number(chance.get(n)) for n in names)
            + f" | {number(chance.get('mean'))} |",
        ]
    modes = d["modes"]
    if modes:
        prompts = d["prompts"]
        names = [n for n in ATTRIBUTES if n in modes.get("conditional", {})]
        lines += [
            "",
            f"## Prompt following: `{d['model']}` ({prompts.get('count')} prompts x {prompts.get('per_prompt')}"
            " samples, fixed noise)",
            "",
            "| prompts | " + " | ".join(names) + " | mean | all | FID (judge) | KID (judge) |",
            "| --- " * (len(names) + 5) + "|",
        ]
        for mode in ("conditional", "unconditional", "shuffled"):
            m = modes.get(mode, {})
            lines.append(
                f"| {mode} | "
                + " | ".join(number(m.get(n)) for n in names)
                + f" | {number(m.get('mean'))} | {number(m.get('all'))} | {number(m.get('fid'), 2)} | {number(m.get('kid'), 4)} |"
            )
        chance = d["prompt_chance"]
        lines.append(
            "| chance | "
            + " | ".join(number(chance.get(n)) for n in names)
            + f" | {number(chance.get('mean'))} | | | |"
        )
        lines += [
            "",
            "Unconditional: the empty prompt; shuffled: each image generated for another prompt of the set and "
            "judged against its own. FID / KID are in the judge's features (comparable only within this report).",
            "",
            "![samples per prompt: conditional, unconditional, shuffled](eval/grid.png)",
        ]
    held_eval = d["held_back"]
    if held_eval:
        lines += [
            "",
            f"## The held-back colour: '{held_eval['colour']}' ({held_eval['prompts']} prompts naming it)",
            "",
            "| model | shows the colour (pixels) | colour accuracy (judge) | mean accuracy (judge) |",
            "| --- | --- | --- | --- |",
            f"| base (`{held_eval['base_stage']}`) | {number(held_eval['base'].get('shown'))} | "
            f"{number(held_eval['base'].get('colour'))} | {number(held_eval['base'].get('mean'))} |",
            f"| LoRA (`{spec.get('evaluate', {}).get('lora') or 'lora'}`) | {number(held_eval['lora'].get('shown'))} | "
            f"{number(held_eval['lora'].get('colour'))} | {number(held_eval['lora'].get('mean'))} |",
            "",
            f"Shows the colour: at least {number(held_eval.get('pixel_share', 0.02), 2)} of the image's pixels "
            "nearest to it in the built-in palette.",
            "",
            "![base vs LoRA](eval/held_back.png)",
        ]
    if d["standard"]:
        lines += ["", "## Standard metrics (local weights)", ""]
        lines += [f"- {k}: {number(v, 2)}" for k, v in d["standard"].items()]
    ae, flows = d["autoencoder"], d["flows_heldout"]
    lines += ["", "## Training", ""]
    if ae:
        lines.append(f"- autoencoder `{ae['stage']}`: held-out PSNR {number(ae.get('psnr'), 2)} dB")
    for name, record in flows.items():
        lines.append(
            f"- `{name}`: held-out flow loss {number(record.get('heldout_loss'), 4)} with captions, "
            f"{number(record.get('heldout_loss_uncond'), 4)} with the empty caption"
        )
    curves = sorted((out / "eval" / "curves").glob("*.png"))
    lines += [""] + [f"![{p.stem}](eval/curves/{p.name})" for p in curves]
    lines += ["", *steps_table(d["steps"], d["cpu_seconds"])]
    lines += ["", f"Total time of the steps that did work: {d['total_seconds']} s.", ""]
    return "\n".join(lines)


def write_image_report(out: str | Path, title: str = "voxforge image pipeline report") -> ImageReport:
    """Build the report of the image pipeline run in `out`; write `report.md` and `report.json`."""
    out = Path(out)
    return save_report(out, build_image_report(out), lambda report: _markdown(report, title, out))
