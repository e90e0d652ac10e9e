"""Evaluation and report of a video pipeline run (`workflows.video_pipeline`).

**What each stage changed** (`stage_changes`, in `pipeline.json` and the report): a flow stage's
`RUN/video.json` against its `init_from` stage's — resolution, frames, the autoencoder (kind,
compression, latent channels), the conditioning (`p_image_cond`: text → video or text / image →
video) — and, where weights moved across an autoencoder swap, the counts of `RUN/transfer.json`
(kept, re-initialised, new, dropped tensors).

**Evaluation** (`evaluate_videos`, the pipeline's `evaluate` step) needs no download:

1. the judge (`eval.video_attributes`) trains on 3/4 of the real judge clips (`OUT/videos_judge`:
   drawn apart from the training data, through the same encode → decode → prepare path as they
   are) and is scored on the other quarter, so the report says how far it can be trusted; that
   quarter is also the reference of the Fréchet distance;
2. every judged flow stage (`evaluate.models`, default all) generates a fixed prompt set
   (`evaluate.prompts.seed`: the same prompts on every run seed) with fixed noise (clip n: seed
   + n) with guidance and without (cfg 0): prompt accuracy of shape, colour and motion, and the
   Fréchet distance in the judge's features; a PNG strip (frames left to right; the guided clip
   above the unguided one) and a `.gif` per shown prompt (`evaluate.show`);
3. image → video (every judged stage trained with `flow.p_image_cond` > 0): the first frames of
   the stage's held-out clips are given with their captions; PSNR/SSIM of generated frame 0;
4. each autoencoder stage: per-frame PSNR/SSIM of its reconstructions of its held-out clips;
5. the swap (`evaluate.swap`, default the flow stage whose autoencoder differs from its
   `init_from`'s): the transfer counts, the re-initialised tensors, the mean of the first and of
   the last `window` logged losses of the swap stage and, with `control` (a stage trained the
   same way from `reinit: all`), of the control.

It writes `OUT/eval/video_eval.json` and `OUT/eval/clips/<stage>/prompt_<n>.{png,gif}`.

**Checks** (`evaluate.checks`: name -> threshold; passes when value >= threshold; a check whose
step did not run fails with the value null):

| check | value |
| --- | --- |
| `judge_mean` | the judge's mean accuracy (shape, colour, motion) on real clips it did not train on |
| `prompt_gain` | `evaluate.model` (default the last judged stage): conditional minus unconditional mean prompt accuracy |
| `prompt_gain_min` | the smallest of that gain over the judged stages |
| `fvd_gain` | `evaluate.model`: unconditional minus conditional Fréchet distance |
| `first_frame_psnr` | the lowest first-frame PSNR (dB) of the image → video stages |
| `ae_psnr_min` | the lowest held-out reconstruction PSNR (dB) of the autoencoders |
| `swap_reinitialised` | tensors the swap re-initialised (its table is in the report) |
| `swap_kept` | tensors the swap kept |
| `swap_loss_drop` | 1 - (last window mean loss) / (first window mean loss) of the swap stage |
| `swap_vs_control` | the control's first-window mean loss minus the swap stage's (the kept weights' head start) |
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image

from voxforge.config.core import from_dict, option
from voxforge.data.splits import split_ids
from voxforge.data.synth_videos import SynthVideosConfig, caption_of, draw_labels, vocabulary_of
from voxforge.data.videos import VideoClipDataset
from voxforge.errors import ConfigError, UserError
from voxforge.eval.video_attributes import (
    VideoClassifierConfig,
    chance_accuracy,
    clip_accuracy,
    evaluate_prompt_modes,
    first_frame_fidelity,
    reconstruction_metrics,
    train_video_classifier,
)
from voxforge.export.video import write_gif
from voxforge.pipelines.video import VIDEO_INFO, VideoPipeline
from voxforge.runs import load_video_autoencoder
from voxforge.workflows.report_parts import (
    Report,
    checks_record,
    checks_table,
    loss_curve,
    metric_rows,
    number,
    read_json,
    score_checks,
    step_times,
    steps_table,
)

__all__ = [
    "CHECKS",
    "EVAL_RECORD",
    "VideoEvaluateSpec",
    "VideoReport",
    "evaluate_videos",
    "stage_changes",
    "write_video_report",
]

EVAL_RECORD = "video_eval.json"
DEFAULT_ATTRIBUTES = ("shape", "colour", "motion")


@dataclass
class VideoJudgeSpec:
    clips: int = option(192, ge=8, help="real clips; the judge trains on 3/4 of them")
    prepared: str = option(
        "",
        help="the data.prepare settings the judge clips go through (default: the judged model's data_from)",
    )
    attributes: tuple[str, ...] = option(DEFAULT_ATTRIBUTES, help="what the judge learns and scores")
    classifier: dict[str, Any] = option(
        default_factory=dict, help="voxforge.eval.video_attributes.VideoClassifierConfig settings"
    )


@dataclass
class VideoPromptSpec:
    num: int = option(24, ge=2, help="prompts of the fixed set")
    seed: int = option(7, ge=0, help="the prompt set's draw; fixed, so every run seed is judged alike")


@dataclass
class VideoSamplingSpec:
    steps: int = option(12, ge=1)
    cfg: float = option(5.0, ge=0.0, help="guidance scale of the conditional clips")
    sampler: str = option("euler", choices=("dpm", "euler", "heun"))
    batch: int = option(16, ge=1, help="clips per sampling call")


@dataclass
class SwapSpec:
    stage: str = option(
        "", help="the swap stage (default: the flow stage whose autoencoder differs from init_from's)"
    )
    control: str = option("", help="a stage trained like it from reinit: all (optional)")
    window: int = option(3, ge=1, help="logged losses averaged at the start and at the end")


@dataclass
class VideoEvaluateSpec:
    judge: VideoJudgeSpec = option(default_factory=VideoJudgeSpec, help="the offline clip judge")
    prompts: VideoPromptSpec = option(default_factory=VideoPromptSpec)
    sampling: VideoSamplingSpec = option(default_factory=VideoSamplingSpec)
    models: list[str] = option(default_factory=list, help="flow stages judged (default: every one)")
    model: str = option("", help="the stage prompt_gain and fvd_gain read (default: the last judged)")
    image_clips: int = option(8, ge=0, help="held-out clips given as first frames (image → video)")
    show: int = option(4, ge=0, help="prompts drawn as PNG strips and GIFs per judged stage")
    swap: SwapSpec = option(default_factory=SwapSpec)
    checks: dict[str, float] = option(default_factory=dict, help="check name -> threshold (CHECKS)")

    def resolve_stages(self, stages: dict[str, dict[str, Any]], kinds: dict[str, str], source: str) -> None:
        """Check the named stages and fill in the defaults (module docstring)."""
        flows = [name for name, kind in kinds.items() if kind == "video_flow"]
        if not flows:
            raise ConfigError(f"{source}: key 'evaluate': the pipeline has no video_flow stage to judge")
        for name in self.models:
            if name not in flows:
                raise ConfigError(
                    f"{source}: key 'evaluate.models': '{name}' is not a video_flow stage ({flows})"
                )
        self.models = list(self.models or flows)
        self.model = self.model or self.models[-1]
        if self.model not in self.models:
            raise ConfigError(f"{source}: key 'evaluate.model': '{self.model}' is not judged ({self.models})")
        if not self.swap.stage:
            ae_of = _autoencoder_of(stages, kinds)
            swaps = [
                n for n in flows if stages[n].get("init_from") and ae_of[n] != ae_of[stages[n]["init_from"]]
            ]
            self.swap.stage = swaps[0] if swaps else ""
        for key in ("stage", "control"):
            value = getattr(self.swap, key)
            if value and value not in flows:
                raise ConfigError(f"{source}: key 'evaluate.swap.{key}': '{value}' is not a video_flow stage")
        unknown = sorted(set(self.checks) - set(CHECKS))
        if unknown:
            raise ConfigError(
                f"{source}: key 'evaluate.checks': unknown {unknown}; expected some of {sorted(CHECKS)}"
            )


def _autoencoder_of(stages: dict[str, dict[str, Any]], kinds: dict[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    last_ae = ""
    for name, kind in kinds.items():
        entry = stages[name]
        if kind == "video_ae":
            last_ae = name
        else:
            out[name] = entry.get("autoencoder") or out.get(entry.get("init_from", ""), "") or last_ae
    return out


# --- what a stage changed --------------------------------------------------------------------
def _describe(info: dict[str, Any]) -> dict[str, Any]:
    tc, sc = info.get("temporal_compression"), info.get("spatial_compression")
    return {
        "resolution": "x".join(str(v) for v in info.get("size", [])),
        "frames": info.get("frames"),
        "autoencoder": f"{info.get('autoencoder_kind')} {tc}x{sc}x{sc} ({info.get('latent_channels')} ch)",
        "conditioning": "text / image → video" if info.get("p_image_cond", 0) > 0 else "text → video",
    }


def stage_changes(run_dir: Path, base_dir: Path | None) -> dict[str, Any]:
    """What flow run `run_dir` changed against `base_dir` (its init_from run), from their records."""
    info = read_json(run_dir / VIDEO_INFO)
    if not info:
        return {}
    now = _describe(info)
    out: dict[str, Any] = {"now": now}
    if base_dir is None:
        out["summary"] = "from scratch: " + ", ".join(f"{k} {v}" for k, v in now.items())
        return out
    before = _describe(read_json(base_dir / VIDEO_INFO))
    changed = {k: [before[k], now[k]] for k in now if before.get(k) != now[k]}
    out["from"], out["changed"] = base_dir.name, changed
    parts = [f"{k} {a} -> {b}" for k, (a, b) in changed.items()] or ["nothing but the weights' start"]
    transfer = read_json(run_dir / "transfer.json")
    if transfer:
        counts = transfer.get("counts", {})
        out["transfer"] = counts
        parts.append(
            f"{counts.get('kept', 0)} tensors kept, {counts.get('reinitialised', 0)} re-initialised "
            f"(reinit {transfer.get('reinit')})"
        )
    out["summary"] = f"from {base_dir.name}: " + "; ".join(parts)
    return out


# --- evaluation ------------------------------------------------------------------------------
def prompt_set(
    num: int, seed: int, vocabulary: dict[str, tuple[str, ...]] | None = None
) -> tuple[list[str], list[dict[str, Any]]]:
    """`num` captions of the built-in grammar and their labels (`vocabulary`: SynthVideosConfig's
    `shapes`, `colours`, `backgrounds`, `motions` subsets; default all)."""
    config = SynthVideosConfig(num=num, seed=seed, **(vocabulary or {}))
    labels = [draw_labels(config, i) for i in range(num)]
    return [caption_of(row) for row in labels], labels


def _clips(dataset: VideoClipDataset) -> np.ndarray:  # uint8 [N, T, H, W, 3]
    return np.stack([np.asarray(dataset.frames(i)) for i in range(len(dataset))])


def _heldout(run_dir: Path) -> VideoClipDataset | None:
    """The held-out clips of a run (the first data.eval_clips sorted ids of its data.path)."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    data = config.get("data", {})
    everything = VideoClipDataset(data["path"])
    _, held = split_ids([r["id"] for r in everything.records], int(data.get("eval_clips", 0)))
    return VideoClipDataset(data["path"], ids=held) if held else None


def _strip(rows: list[np.ndarray], path: Path, scale: int = 2) -> None:
    """rows of uint8 [T, H, W, 3] -> a PNG: each row's frames left to right."""
    frames, height, width, _ = rows[0].shape
    gap = 2
    canvas = Image.new(
        "RGB", (frames * (width * scale + gap), len(rows) * (height * scale + gap)), (255,) * 3
    )
    for r, clip in enumerate(rows):
        for t in range(frames):
            tile = Image.fromarray(clip[t]).resize((width * scale, height * scale), Image.Resampling.NEAREST)
            canvas.paste(tile, (t * (width * scale + gap), r * (height * scale + gap)))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def _to_uint8(clips: Any) -> np.ndarray:
    array = np.asarray(clips)
    return array if array.dtype == np.uint8 else (np.clip(array, 0, 1) * 255).round().astype(np.uint8)


def _losses(run_dir: Path) -> list[float]:
    values = {}
    for row in metric_rows(run_dir / "metrics.jsonl"):
        if "event" not in row and isinstance(row.get("loss"), (int, float)) and "step" in row:
            values[int(row["step"])] = float(row["loss"])
    return [values[s] for s in sorted(values)]


def swap_record(out: Path, spec: SwapSpec) -> dict[str, Any]:
    """The swap stage's transfer table and its (and the control's) loss at start and end."""
    if not spec.stage:
        return {}
    run = out / "runs" / spec.stage
    transfer = read_json(run / "transfer.json")
    record: dict[str, Any] = {
        "stage": spec.stage,
        "base": transfer.get("base", ""),
        "reinit": transfer.get("reinit"),
        "autoencoders": [transfer.get("base_autoencoder", ""), transfer.get("autoencoder", "")],
        "counts": transfer.get("counts", {}),
        "reinitialised": [
            t["key"] for t in transfer.get("tensors", []) if t.get("action") == "reinitialised"
        ],
        "new": [t["key"] for t in transfer.get("tensors", []) if t.get("action") == "new"],
    }
    for name, key in ((spec.stage, "swap"), (spec.control, "control")):
        if not name:
            continue
        curve = _losses(out / "runs" / name)
        if len(curve) >= spec.window:
            record[key] = {
                "stage": name,
                "first": float(np.mean(curve[: spec.window])),
                "last": float(np.mean(curve[-spec.window :])),
                "logged": len(curve),
            }
    return record


def evaluate_videos(
    spec: VideoEvaluateSpec,
    out: Path,
    kinds: dict[str, str],
    *,
    seed: int,
    device: torch.device,
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """The evaluation of the module docstring; returns the record (with a one-line "summary")."""
    result: dict[str, Any] = {}
    # 1. the judge
    judge_data = VideoClipDataset(out / "videos_judge")
    clips = _clips(judge_data)
    labels = [dict(r.get("extra") or {}) for r in judge_data.records]
    known = read_json(out / "synth_judge" / "labels.json").get("attributes", {})
    missing = [name for name in spec.judge.attributes if name not in known]
    if missing or any(name not in row for row in labels for name in spec.judge.attributes):
        raise UserError(
            f"{out / 'videos_judge'}: the judge clips do not carry the attributes {missing or list(spec.judge.attributes)}"
            f" (known: {sorted(known)})"
        )
    attributes = {name: [str(v) for v in known[name]] for name in spec.judge.attributes}
    labels = [{name: str(row[name]) for name in attributes} for row in labels]
    cut = max(1, len(clips) * 3 // 4)
    config = from_dict(VideoClassifierConfig, dict(spec.judge.classifier), source="evaluate.judge.classifier")
    classifier = train_video_classifier(clips[:cut], labels[:cut], attributes, config, device=device)
    real, real_labels = clips[cut:], labels[cut:]
    result["judge"] = {
        "train_clips": cut,
        "test_clips": len(real),
        "accuracy": clip_accuracy(classifier, real, real_labels),
        "chance": chance_accuracy(real_labels, list(attributes)),
    }
    log(f"judge: mean accuracy {result['judge']['accuracy']['mean']:.3f} on {len(real)} real clips")
    # 2. prompts, conditional and unconditional; 3. image -> video
    # the prompts name what the clips show: the judge clips' vocabulary (that of the training clips)
    prompts, prompt_labels = prompt_set(spec.prompts.num, spec.prompts.seed, vocabulary_of(known))
    prompt_labels = [{name: str(row[name]) for name in attributes} for row in prompt_labels]
    sampling = spec.sampling
    result["prompts"] = prompts
    result["models"], result["first_frame"] = {}, {}
    for name in spec.models:
        run_dir = out / "runs" / name
        pipe = VideoPipeline.from_run(run_dir, device=device)

        def generate(
            texts: list[str], cfg: float, image: torch.Tensor | None = None, pipe: VideoPipeline = pipe
        ) -> np.ndarray:
            chunks = []
            for start in range(0, len(texts), sampling.batch):
                given = None if image is None else image[start : start + sampling.batch]
                chunks.append(
                    pipe.generate(
                        texts[start : start + sampling.batch],
                        steps=sampling.steps,
                        cfg=cfg,
                        seed=seed + start,
                        sampler=sampling.sampler,
                        image=given,
                    )
                )
            return np.concatenate(chunks)

        scores, generated = evaluate_prompt_modes(
            classifier, generate, prompts, prompt_labels, real, cfg=sampling.cfg
        )
        info = read_json(run_dir / VIDEO_INFO)
        shown = []
        for n in range(min(spec.show, len(prompts))):
            rows = [_to_uint8(generated["conditional"][n]), _to_uint8(generated["unconditional"][n])]
            folder = out / "eval" / "clips" / name
            _strip(rows, folder / f"prompt_{n}.png")
            write_gif(
                np.concatenate(rows, axis=1),
                folder / f"prompt_{n}.gif",
                fps=max(1, round(info.get("fps", 8))),
            )
            shown.append({"prompt": prompts[n], "png": f"eval/clips/{name}/prompt_{n}.png"})
        result["models"][name] = {"modes": scores, "shown": shown, **_describe(info)}
        gain = scores["conditional"]["mean"] - scores["unconditional"]["mean"]
        log(
            f"{name}: prompt accuracy {scores['conditional']['mean']:.3f} vs {scores['unconditional']['mean']:.3f}"
            f" unconditional (gain {gain:+.3f})"
        )
        held = _heldout(run_dir) if info.get("p_image_cond", 0) > 0 and spec.image_clips else None
        if held is not None:
            given = _clips(held)[: spec.image_clips]
            captions = held.captions()[: len(given)]
            first = torch.from_numpy(given[:, 0]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            clips_out = generate(captions, sampling.cfg, first)
            result["first_frame"][name] = first_frame_fidelity(clips_out, given[:, 0])
            _strip(
                [_to_uint8(given[0]), _to_uint8(clips_out[0])], out / "eval" / "clips" / name / "image_0.png"
            )
    # 4. the autoencoders
    result["autoencoders"] = {}
    for name, kind in kinds.items():
        if kind != "video_ae":
            continue
        run_dir = out / "runs" / name
        held = _heldout(run_dir)
        if held is None:
            continue
        ae = load_video_autoencoder(run_dir, device)
        batches = [
            torch.from_numpy(_clips(held)[i : i + 8]).permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)
            for i in range(0, len(held), 8)
        ]
        metrics = reconstruction_metrics(lambda v, ae=ae: ae.decode(ae.encode(v.to(device))).cpu(), batches)
        result["autoencoders"][name] = {
            **metrics,
            "kind": ae.kind,
            "compression": [ae.temporal_compression, ae.spatial_compression, ae.spatial_compression],
            "latent_channels": ae.latent_channels,
        }
    # 5. the swap
    result["swap"] = swap_record(out, spec.swap)
    model = result["models"][spec.model]["modes"]
    result["summary"] = (
        f"{spec.model}: prompt accuracy {model['conditional']['mean']:.3f} conditional vs "
        f"{model['unconditional']['mean']:.3f} unconditional; judge {result['judge']['accuracy']['mean']:.3f}"
    )
    return result


# --- checks and report ------------------------------------------------------------------------
def _gain(evaluation: dict[str, Any], name: str, key: str = "mean", sign: float = 1.0) -> float | None:
    modes = evaluation.get("models", {}).get(name, {}).get("modes")
    if not modes:
        return None
    return sign * (modes["conditional"][key] - modes["unconditional"][key])


def _model(evaluation: dict[str, Any]) -> str:
    return ((evaluation.get("evaluate") or {}).get("model")) or ""


def _min(values: list[float]) -> float | None:
    return min(values) if values else None


def _swap(evaluation: dict[str, Any], what: str) -> float | None:
    swap = evaluation.get("swap") or {}
    if what in ("reinitialised", "kept"):
        counts = swap.get("counts")
        return None if not counts else float(counts.get(what, 0))
    run, control = swap.get("swap"), swap.get("control")
    if what == "drop":
        return None if not run else 1.0 - run["last"] / run["first"]
    return None if not (run and control) else control["first"] - run["first"]


#: check name -> (what it measures, value from the evaluation record)
CHECKS: dict[str, tuple[str, Callable[[dict[str, Any]], float | None]]] = {
    "judge_mean": (
        "judge: mean accuracy on real clips it did not train on",
        lambda e: (e.get("judge") or {}).get("accuracy", {}).get("mean"),
    ),
    "prompt_gain": (
        "conditional minus unconditional mean prompt accuracy",
        lambda e: _gain(e, _model(e)),
    ),
    "prompt_gain_min": (
        "the smallest prompt gain over the judged stages",
        lambda e: _min([g for n in e.get("models", {}) if (g := _gain(e, n)) is not None]),
    ),
    "fvd_gain": (
        "unconditional minus conditional Fréchet distance",
        lambda e: _gain(e, _model(e), "fvd", -1.0),
    ),
    "first_frame_psnr": (
        "image → video: lowest PSNR (dB) of generated frame 0 against the given image",
        lambda e: _min([v["psnr"] for v in e.get("first_frame", {}).values()]),
    ),
    "ae_psnr_min": (
        "lowest held-out reconstruction PSNR (dB) of the autoencoders",
        lambda e: _min([v["psnr"] for v in e.get("autoencoders", {}).values()]),
    ),
    "swap_reinitialised": ("tensors the swap re-initialised", lambda e: _swap(e, "reinitialised")),
    "swap_kept": ("tensors the swap kept", lambda e: _swap(e, "kept")),
    "swap_loss_drop": ("swap stage: 1 - last / first logged loss (window means)", lambda e: _swap(e, "drop")),
    "swap_vs_control": (
        "control's first logged loss minus the swap stage's (window means)",
        lambda e: _swap(e, "control"),
    ),
}


class VideoReport(Report):
    """The report of a video pipeline run (`build_video_report`)."""


def build_video_report(out: str | Path) -> VideoReport:
    out = Path(out)
    pipeline = read_json(out / "pipeline.json")
    spec = pipeline.get("spec", {})
    evaluation = read_json(out / "eval" / EVAL_RECORD)
    # every measure reads None off a missing record; a value must be finite to pass
    checks = score_checks(CHECKS, (spec.get("evaluate") or {}).get("checks") or {}, evaluation, finite=True)
    steps = pipeline.get("steps", [])
    latest: dict[str, dict[str, Any]] = {}
    for s in steps:
        if s.get("info", {}).get("changes"):
            latest[s["step"]] = s["info"]["changes"]
    data = {
        "spec": spec,
        "changes": latest,
        "evaluation": {k: v for k, v in evaluation.items() if k not in ("evaluate",)},
        **step_times(steps),
        **checks_record(checks),
    }
    return VideoReport(data, checks)


def _markdown(report: VideoReport, title: str, out: Path) -> str:
    data, evaluation = report.data, report.data["evaluation"]
    lines = [f"# {title}", ""]
    lines += [
        f"**{report.verdict}** — {len(report.checks)} checks; {data['total_seconds']:.0f} s of work this run.",
        "",
    ]
    if report.checks:
        lines += [*checks_table(report.checks, result=""), ""]
    if data["changes"]:
        lines += ["## Stages: what each changed", "", "| stage | resolution | frames | autoencoder | conditioning | from | |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for name, change in data["changes"].items():
            now, moved = change.get("now", {}), change.get("changed", {})
            cells = [f"**{now[k]}**" if k in moved else str(now.get(k, "")) for k in
                     ("resolution", "frames", "autoencoder", "conditioning")]  # fmt: skip
            counts = change.get("transfer")
            note = (
                f"{counts.get('kept', 0)} kept, {counts.get('reinitialised', 0)} re-initialised"
                if counts
                else ""
            )
            lines.append(
                f"| {name} | " + " | ".join(cells) + f" | {change.get('from', 'scratch')} | {note} |"
            )
        lines += ["", "Bold: changed against the stage it started from.", ""]
    aes = evaluation.get("autoencoders", {})
    if aes:
        lines += ["## Autoencoders: held-out reconstruction", "", "| stage | kind | compression (t×h×w) | channels | PSNR (dB) | SSIM | clips |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for name, ae in aes.items():
            comp = "×".join(str(v) for v in ae["compression"])
            lines.append(
                f"| {name} | {ae['kind']} | {comp} | {ae['latent_channels']} | {number(ae['psnr'], 2)} | {number(ae['ssim'])} | {ae['clips']} |"
            )
        lines.append("")
    swap = evaluation.get("swap") or {}
    if swap:
        counts = swap.get("counts", {})
        lines += [f"## The autoencoder swap: {swap['stage']}", "",
                  f"From {swap.get('base', '')} with `reinit: {swap.get('reinit')}`; autoencoder "
                  f"{swap['autoencoders'][0]} → {swap['autoencoders'][1]}.", "",
                  "| kept | re-initialised | new | dropped |", "| --- | --- | --- | --- |",
                  f"| {counts.get('kept', 0)} | {counts.get('reinitialised', 0)} | {counts.get('new', 0)} | {counts.get('dropped', 0)} |", ""]  # fmt: skip
        if swap.get("reinitialised"):
            lines += ["Re-initialised: " + ", ".join(f"`{k}`" for k in swap["reinitialised"]), ""]
        lines.append(f"The full table: `runs/{swap['stage']}/transfer.md`.")
        lines.append("")
        rows = [swap[k] for k in ("swap", "control") if k in swap]
        if rows:
            lines += ["| run | first logged loss | last logged loss | logged |", "| --- | --- | --- | --- |"]
            for row in rows:
                lines.append(
                    f"| {row['stage']} | {number(row['first'], 4)} | {number(row['last'], 4)} | {row['logged']} |"
                )
            lines += ["", "(means over the first and the last logged steps)", ""]
    judge = evaluation.get("judge")
    if judge:
        acc, chance = judge["accuracy"], judge["chance"]
        attrs = [k for k in acc if k not in ("all", "mean")]
        lines += ["## Judge", "", f"A 3-D CNN trained on {judge['train_clips']} real clips, scored on {judge['test_clips']} others:", "",
                  "| | " + " | ".join(attrs) + " | all | mean |", "| --- " * (len(attrs) + 3) + "|",
                  "| accuracy | " + " | ".join(number(acc[a]) for a in attrs) + f" | {number(acc['all'])} | {number(acc['mean'])} |",
                  "| chance | " + " | ".join(number(chance[a]) for a in attrs) + f" | | {number(chance['mean'])} |", ""]  # fmt: skip
    models = evaluation.get("models", {})
    if models:
        lines += ["## Prompt accuracy and Fréchet distance", "",
                  f"{len(evaluation.get('prompts', []))} fixed prompts, the same noise with guidance and without (cfg 0).", "",
                  "| stage | mode | " + " | ".join(attrs) + " | all | mean | Fréchet |", "| --- " * (len(attrs) + 5) + "|"]  # fmt: skip
        for name, entry in models.items():
            for mode, scores in entry["modes"].items():
                lines.append(f"| {name} | {mode} | " + " | ".join(number(scores[a]) for a in attrs)
                             + f" | {number(scores['all'])} | {number(scores['mean'])} | {number(scores['fvd'], 2)} |")  # fmt: skip
        lines.append("")
    first = evaluation.get("first_frame", {})
    if first:
        lines += [
            "## Image → video: first-frame fidelity",
            "",
            "| stage | PSNR (dB) | SSIM | clips |",
            "| --- | --- | --- | --- |",
        ]
        for name, row in first.items():
            lines.append(f"| {name} | {number(row['psnr'], 2)} | {number(row['ssim'])} | {row['clips']} |")
        lines.append("")
    if models:
        lines += ["## Sampled clips", "", "Each strip: frames left to right, the guided clip above the unguided one (same noise); the `.gif` beside each PNG plays them.", ""]  # fmt: skip
        for name, entry in models.items():
            for shown in entry["shown"]:
                lines += [f"**{name}** — {shown['prompt']}", "", f"![{name}]({shown['png']})", ""]
    curves = out / "eval" / "curves"
    drawn = []
    for name in data["spec"].get("stages", {}):
        if loss_curve(out / "runs" / name / "metrics.jsonl", curves / f"{name}.png", name):
            drawn.append(name)
    if drawn:
        lines += ["## Training loss", ""] + [f"![{n}](eval/curves/{n}.png)" for n in drawn] + [""]
    lines += steps_table(data["steps"], data["cpu_seconds"], wall="wall s", cpu="CPU s")
    return "\n".join(lines) + "\n"


def write_video_report(out: str | Path, title: str = "voxforge video pipeline report") -> VideoReport:
    """`OUT/report.md` and `OUT/report.json` from what the pipeline recorded."""
    out = Path(out)
    report = build_video_report(out)
    evaluation = read_json(out / "eval" / EVAL_RECORD)
    report.data["evaluation"] = {k: v for k, v in evaluation.items() if k != "evaluate"}
    (out / "report.md").write_text(_markdown(report, title, out))
    (out / "report.json").write_text(json.dumps(report.data, indent=1, default=str))
    return report
