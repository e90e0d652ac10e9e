"""Offline metrics of a text / image → video model: prompt accuracy by a clip classifier of shape,
colour and motion, a Fréchet distance in that classifier's clip features (FVD-style), first-frame
fidelity for image → video, and reconstruction PSNR/SSIM of a video autoencoder.

No download: the judge is a small 3-D CNN trained here on *real* clips whose attributes are
known (the built-in clips of `data.synth_videos` name each clip's shape, colour, motion and
background; `data.synth_videos.parse_caption` reads them back from a caption). Generated clips
are then judged against the attributes their prompt asked for:

- prompt accuracy: per attribute, the fraction of generated clips the classifier labels as the
  prompt said, the fraction with every attribute right and the mean over attributes.
  `evaluate_prompt_modes` generates the same prompts with the same noise conditionally (the
  guidance scale given) and unconditionally (guidance 0: the empty caption), so the gap is what
  the text is followed for. Motion is an attribute: a model that draws the right shape but does
  not move it is caught.
- Fréchet distance (FVD-style): FVD (Unterthiner et al. 2018) is the Fréchet distance of
  Gaussians fitted to clip features of an action-recognition network (I3D); here the features are
  the classifier's penultimate ones, so values compare only between runs judged by the same
  classifier (its seed and data fixed), as any FVD compares only within one feature extractor.
- first-frame fidelity (`first_frame_fidelity`): PSNR and SSIM of a generated clip's frame 0
  against the image it was given (image → video).
- reconstruction (`reconstruction_metrics`): per-frame PSNR and SSIM of an autoencoder's
  reconstructions of held-out clips (any `reconstruct(video [B, 3, T, H, W] in [-1, 1])`).

Clips enter as uint8 [N, T, H, W, 3] (what `pipelines.video.VideoPipeline.generate` returns and
what a decoder writes) or float [N, 3, T, H, W] in [0, 1]. The classifier resizes them to
`size` × `size` and resamples time to `frames` frames (evenly spaced, first and last kept), so
one judge takes clips of any length.

The video judge's own parts live here: the 3-D network's input (`as_clip_tensor`, the
resampling in space and time), the guided / unguided prompt modes, first-frame fidelity and
reconstruction; the network's shared structure, its training, prompt accuracy (`clip_accuracy`),
chance levels and the Fréchet distance are `voxforge.eval.attribute_judge`'s, shared with the
image judge.

The classifier is voxforge's own (a few 3-D convolutions): a judge for these synthetic
attributes must be trained on them, and no maintained library ships one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voxforge.config.core import option
from voxforge.eval.attribute_judge import (
    AttributeJudge,
    attribute_accuracy,
    chance_accuracy,
    check_prompt_labels,
    frechet_distance,
    train_judge,
)
from voxforge.eval.image_metrics import psnr, ssim

__all__ = [
    "VideoAttributeClassifier",
    "VideoClassifierConfig",
    "as_clip_tensor",
    "chance_accuracy",
    "clip_accuracy",
    "evaluate_prompt_modes",
    "first_frame_fidelity",
    "frechet_distance",
    "reconstruction_metrics",
    "train_video_classifier",
]


@dataclass
class VideoClassifierConfig:
    size: int = option(32, ge=8, help="frames are resized to this side before the classifier")
    frames: int = option(5, ge=2, help="clips are resampled to this many frames (evenly spaced)")
    width: int = option(16, ge=4, help="channels of the first convolution (doubled per level)")
    levels: int = option(2, ge=1, help="levels halving the frame side")
    feature_dim: int = option(64, ge=4, help="penultimate features (the Fréchet distance's space)")
    steps: int = option(300, ge=1, help="training steps")
    batch_size: int = option(32, ge=1)
    lr: float = option(1e-2, gt=0.0, help="peak of the one-cycle schedule")
    seed: int = option(0, ge=0)


def as_clip_tensor(clips: Any) -> Tensor:  # -> float [N, 3, T, H, W] in [0, 1]
    """uint8 [N, T, H, W, 3], float [N, T, H, W, 3] or float [N, 3, T, H, W] in [0, 1] as one layout."""
    tensor = clips if isinstance(clips, Tensor) else torch.as_tensor(np.asarray(clips))
    if tensor.ndim != 5:
        raise ValueError(
            f"expected clips [N, T, H, W, 3] or [N, 3, T, H, W], got shape {tuple(tensor.shape)}"
        )
    channels_last = tensor.shape[-1] == 3 and tensor.shape[1] != 3
    if tensor.dtype == torch.uint8:
        tensor = tensor.float() / 255.0
    tensor = tensor.float()
    return tensor.permute(0, 4, 1, 2, 3) if channels_last else tensor


class VideoAttributeClassifier(AttributeJudge):
    """The video judge: 3-D convolutions (halving the frame side per level, never time) over clips
    resampled to `cfg.frames` frames of `cfg.size` × `cfg.size`."""

    cfg: VideoClassifierConfig
    eval_batch_size = 64
    as_tensor = staticmethod(as_clip_tensor)

    def __init__(self, attributes: Mapping[str, Sequence[Any]], cfg: VideoClassifierConfig | None = None):
        cfg = cfg or VideoClassifierConfig()
        # pooled over space per frame, kept in time order: where a shape went is a motion
        super().__init__(attributes, cfg, conv=nn.Conv3d, stride=(1, 2, 2), pooled_positions=cfg.frames)

    def _prepare(self, clips: Tensor) -> Tensor:  # [N, 3, T, H, W] in [0, 1] -> [N, 3, F, s, s] in [-1, 1]
        n, c, t, h, w = clips.shape
        index = torch.linspace(0, t - 1, self.cfg.frames).round().long().to(clips.device)
        clips = clips.index_select(2, index)
        size = self.cfg.size
        if (h, w) != (size, size):
            frames = clips.permute(0, 2, 1, 3, 4).reshape(-1, c, h, w)
            frames = F.interpolate(
                frames, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
            clips = frames.view(n, self.cfg.frames, c, size, size).permute(0, 2, 1, 3, 4)
        return clips * 2.0 - 1.0


def train_video_classifier(
    clips: Any,  # uint8 [N, T, H, W, 3] or float [N, 3, T, H, W] in [0, 1]
    labels: Sequence[Mapping[str, Any]],  # one attribute dict per clip
    attributes: Mapping[str, Sequence[Any]],  # {name: its values}
    cfg: VideoClassifierConfig | None = None,
    *,
    device: torch.device | str = "cpu",
) -> VideoAttributeClassifier:
    """Train the judge on real clips; deterministic given `cfg.seed` (own generator and init)."""
    cfg = cfg or VideoClassifierConfig()
    build = partial(VideoAttributeClassifier, attributes, cfg)
    return train_judge(build, cfg, as_clip_tensor(clips), labels, attributes, device=device, noun="clips")


#: the judges' shared prompt accuracy, under the name the video family has always used
clip_accuracy = attribute_accuracy


#: generate(prompts, cfg) -> clips (uint8 [N, T, H, W, 3] or float [N, 3, T, H, W] in [0, 1])
GenerateFn = Callable[[list[str], float], Any]


def evaluate_prompt_modes(
    classifier: VideoAttributeClassifier,
    generate: GenerateFn,
    prompts: Sequence[str],
    labels: Sequence[Mapping[str, Any]],  # what each prompt asks for
    real_clips: Any,  # real held-out clips: the Fréchet distance's reference
    *,
    cfg: float,
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Prompt accuracy and Fréchet distance of the prompts generated with guidance `cfg`
    ("conditional") and with guidance 0 ("unconditional", the same noise); returns
    ({mode: {attribute accuracies, "all", "mean", "fvd"}}, {mode: the generated clips})."""
    check_prompt_labels(prompts, labels)
    real = classifier.embed(real_clips)
    generated = {"conditional": generate(list(prompts), cfg), "unconditional": generate(list(prompts), 0.0)}
    scores = {}
    for mode, clips in generated.items():
        scores[mode] = clip_accuracy(classifier, clips, labels)
        scores[mode]["fvd"] = frechet_distance(classifier.embed(clips), real)
    return scores, generated


def _frames(video: Tensor) -> Tensor:  # [B, 3, T, H, W] in [0, 1] -> [B*T, H, W, 3]
    return video.permute(0, 2, 3, 4, 1).reshape(-1, *video.shape[3:], 3)


def first_frame_fidelity(generated: Any, given: Any) -> dict[str, float]:
    """PSNR (dB, capped at 100) and SSIM of each generated clip's frame 0 against the image it was
    given: `generated` clips (as `as_clip_tensor` takes them), `given` images uint8 [N, H, W, 3] or
    float [N, H, W, 3] in [0, 1]."""
    first = as_clip_tensor(generated)[:, :, 0].permute(0, 2, 3, 1)  # [N, H, W, 3]
    target = given if isinstance(given, Tensor) else torch.as_tensor(np.asarray(given))
    target = target.float() / 255.0 if target.dtype == torch.uint8 else target.float()
    if first.shape != target.shape:
        raise ValueError(f"first frames {tuple(first.shape)} and given images {tuple(target.shape)} differ")
    return {
        "psnr": float(psnr(first, target, max_db=100.0).mean()),
        "ssim": float(ssim(first, target).mean()),
        "clips": len(first),
    }


@torch.no_grad()
def reconstruction_metrics(
    reconstruct: Callable[[Tensor], Tensor],  # video [B, 3, T, H, W] in [-1, 1] -> the same shape
    batches: Sequence[Tensor],  # held-out clips [B, 3, T, H, W] in [-1, 1]
) -> dict[str, float]:
    """Per-frame PSNR (dB, capped at 100) and SSIM of the reconstructions, averaged over frames."""
    psnrs, ssims, clips = [], [], 0
    for video in batches:
        recon = reconstruct(video).float().clamp(-1, 1)
        if recon.shape != video.shape:
            raise ValueError(f"reconstruction {tuple(recon.shape)} of clips {tuple(video.shape)}")
        a, b = _frames(recon * 0.5 + 0.5), _frames(video.float() * 0.5 + 0.5)
        psnrs.append(psnr(a, b, max_db=100.0))
        ssims.append(ssim(a, b))
        clips += len(video)
    if not clips:
        raise ValueError("no held-out clips to reconstruct")
    return {"psnr": float(torch.cat(psnrs).mean()), "ssim": float(torch.cat(ssims).mean()), "clips": clips}
