"""What the offline judges of the image and video families share: a small CNN with one softmax
head per attribute, its seeded training, prompt accuracy, chance levels and the distances (FID,
KID) in its penultimate features.

A family's judge (`eval.image_attributes.AttributeClassifier`, 2-D convolutions over images;
`eval.video_attributes.VideoAttributeClassifier`, 3-D convolutions over clips) subclasses
`AttributeJudge` and supplies only what differs: the convolution (and its stride), how its input
layouts become one float tensor (`as_tensor`), and how that tensor is resampled to the size the
network takes (`_prepare`). Everything after is the same: the body's output is mean- and
max-pooled over its last two (spatial) axes, whatever axes precede them (a clip's time) are kept
in order and flattened into the features, and every head reads those features.

- FID (Heusel et al. 2017) is the Fréchet distance of Gaussians fitted to two feature sets, taken
  in float64; an FVD-style distance is the same number over clip features.
- KID (Bińkowski et al. 2018) is the unbiased MMD² with the cubic polynomial kernel
  k(x, y) = (x.y / d + 1)^3, averaged over random subsets; it has no small-sample bias, which
  matters at the few hundred samples of a CPU demo.

Both compare only between runs judged by the same classifier (its seed and data fixed), as any
FID compares only within one feature extractor.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "AttributeJudge",
    "JudgeConfig",
    "attribute_accuracy",
    "chance_accuracy",
    "check_prompt_labels",
    "encode_labels",
    "frechet_distance",
    "kernel_distance",
    "train_judge",
]

Judge = TypeVar("Judge", bound="AttributeJudge")


def encode_labels(
    labels: Sequence[Mapping[str, Any]], attributes: Mapping[str, Sequence[Any]]
) -> dict[str, Tensor]:  # {name: [N] long}
    """Attribute dicts (one per input) → class indices per attribute; an unknown value is an error."""
    out = {}
    for name, values in attributes.items():
        index = {v: i for i, v in enumerate(values)}
        try:
            out[name] = torch.tensor([index[row[name]] for row in labels], dtype=torch.long)
        except KeyError as err:
            raise ValueError(f"attribute '{name}': value {err} is not one of {list(values)}") from None
    return out


class JudgeConfig(Protocol):
    """The settings every judge's config carries: its network's size and its training."""

    width: int  # channels of the first convolution (doubled per level)
    levels: int  # levels halving the spatial side
    feature_dim: int  # penultimate features (the FID / KID space)
    steps: int
    batch_size: int
    lr: float  # peak of the one-cycle schedule
    seed: int


class AttributeJudge(nn.Module, ABC):
    """A small CNN with one softmax head per attribute over shared penultimate features.

    The body is a stem convolution, then `cfg.levels` levels of a strided convolution (channels
    doubled), GroupNorm and a plain convolution; `pooled_positions` is how many positions the
    pooled output keeps ahead of its two spatial axes (1 for an image, the frames for a clip)."""

    #: inputs per forward pass in `embed` and `predict` unless the call says otherwise
    eval_batch_size: int = 256

    def __init__(
        self,
        attributes: Mapping[str, Sequence[Any]],  # {name: its values}
        cfg: JudgeConfig,
        *,
        conv: type[nn.Conv2d] | type[nn.Conv3d],
        stride: int | tuple[int, ...],  # of the convolution opening each level
        pooled_positions: int = 1,
    ):
        super().__init__()
        self.cfg = cfg
        self.attributes = {name: list(values) for name, values in attributes.items()}
        if not self.attributes or any(len(v) < 2 for v in self.attributes.values()):
            raise ValueError("every attribute needs at least two values")
        layers: list[nn.Module] = [conv(3, cfg.width, 3, padding=1), nn.SiLU()]
        channels = cfg.width
        for level in range(cfg.levels):
            out = cfg.width * 2 ** (level + 1)
            layers += [
                conv(channels, out, 3, stride=stride, padding=1),
                nn.GroupNorm(min(8, out), out),
                nn.SiLU(),
                conv(out, out, 3, padding=1),
                nn.SiLU(),
            ]
            channels = out
        self.body = nn.Sequential(*layers)
        self.to_features = nn.Linear(2 * channels * pooled_positions, cfg.feature_dim)  # mean and max pooled
        self.heads = nn.ModuleDict(
            {name: nn.Linear(cfg.feature_dim, len(v)) for name, v in self.attributes.items()}
        )

    @staticmethod
    @abstractmethod
    def as_tensor(inputs: Any) -> Tensor:  # the family's layouts -> float [N, 3, ...] in [0, 1]
        """The family's accepted input layouts as the one float layout `features` takes."""

    @abstractmethod
    def _prepare(self, inputs: Tensor) -> Tensor:  # float [N, 3, ...] in [0, 1] -> the body's size, [-1, 1]
        """Resample to the size the network was built for and shift to [-1, 1]."""

    def features(self, inputs: Tensor) -> Tensor:  # float [N, 3, ...] in [0, 1] -> [N, feature_dim]
        x = self.body(self._prepare(inputs))  # [N, C, ..., h, w]
        spatial = (x.ndim - 2, x.ndim - 1)
        pooled = torch.cat([x.mean(dim=spatial), x.amax(dim=spatial)], dim=1)  # max: a small shape's colour
        return F.silu(self.to_features(pooled.flatten(1)))

    def forward(self, inputs: Tensor) -> dict[str, Tensor]:  # {name: logits [N, K]}
        feats = self.features(inputs)
        return {name: head(feats) for name, head in self.heads.items()}

    @torch.no_grad()
    def _batched(self, inputs: Any, batch_size: int | None, fn: Callable[[Tensor], Any]) -> list[Any]:
        tensor = self.as_tensor(inputs)
        size = self.eval_batch_size if batch_size is None else batch_size
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        out = [fn(tensor[i : i + size].to(device)) for i in range(0, len(tensor), size)]
        self.train(was_training)
        return out

    def embed(self, inputs: Any, batch_size: int | None = None) -> Tensor:  # -> [N, feature_dim] float64
        """Penultimate features in eval mode, on the CPU: the FID / KID space."""
        return torch.cat(self._batched(inputs, batch_size, lambda x: self.features(x).double().cpu()))

    def predict(self, inputs: Any, batch_size: int | None = None) -> dict[str, Tensor]:  # {name: [N] long}
        """The most likely value index per attribute, in eval mode."""
        chunks = self._batched(inputs, batch_size, self)
        return {name: torch.cat([c[name].argmax(dim=1).cpu() for c in chunks]) for name in self.attributes}


def train_judge(
    build: Callable[[], Judge],  # the untrained judge; called under `cfg.seed`
    cfg: JudgeConfig,
    inputs: Tensor,  # float [N, 3, ...] in [0, 1], the judge's `as_tensor` layout
    labels: Sequence[Mapping[str, Any]],  # one attribute dict per input
    attributes: Mapping[str, Sequence[Any]],  # {name: its values}
    *,
    device: torch.device | str = "cpu",
    augment: Callable[[Tensor, torch.Generator], Tensor] | None = None,  # (batch, generator) -> batch
    noun: str = "images",  # what an input is called in errors
) -> Judge:
    """Train a judge on real inputs with AdamW and a one-cycle schedule; deterministic given
    `cfg.seed` (the init under a forked global seed, batches and `augment` from an own generator)."""
    if len(inputs) != len(labels):
        raise ValueError(f"{len(inputs)} {noun} but {len(labels)} label rows")
    targets = encode_labels(labels, attributes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build().to(device)
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1
    )
    model.train()
    for _ in range(cfg.steps):
        index = torch.randint(len(inputs), (min(cfg.batch_size, len(inputs)),), generator=generator)
        batch = inputs[index]
        if augment is not None:
            batch = augment(batch, generator)
        logits = model(batch.to(device))
        loss = sum(F.cross_entropy(logits[name], targets[name][index].to(device)) for name in attributes)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


def attribute_accuracy(
    classifier: AttributeJudge, inputs: Any, labels: Sequence[Mapping[str, Any]]
) -> dict[str, float]:
    """{attribute: accuracy, "all": every attribute right, "mean": mean over attributes}."""
    predicted = classifier.predict(inputs)
    targets = encode_labels(labels, classifier.attributes)
    correct = {name: predicted[name] == targets[name] for name in classifier.attributes}
    result = {name: float(hit.float().mean()) for name, hit in correct.items()}
    result["all"] = float(torch.stack(list(correct.values())).all(dim=0).float().mean())
    result["mean"] = float(np.mean([result[name] for name in classifier.attributes]))
    return result


def chance_accuracy(labels: Sequence[Mapping[str, Any]], attributes: Sequence[str]) -> dict[str, float]:
    """Accuracy of a judge that ignores the image but knows the label frequencies (sum of p²)."""
    out = {}
    for name in attributes:
        _, counts = np.unique([str(row[name]) for row in labels], return_counts=True)
        p = counts / counts.sum()
        out[name] = float((p**2).sum())
    out["mean"] = float(np.mean(list(out.values()))) if out else math.nan
    return out


def check_prompt_labels(prompts: Sequence[str], labels: Sequence[Mapping[str, Any]]) -> None:
    """A prompt evaluation needs one label row per prompt and at least two prompts."""
    if len(prompts) != len(labels):
        raise ValueError(f"{len(prompts)} prompts but {len(labels)} label rows")
    if len(prompts) < 2:
        raise ValueError("the evaluation needs at least two prompts")


def _statistics(features: Tensor) -> tuple[Tensor, Tensor]:
    x = features.double()
    mean = x.mean(dim=0)
    centred = x - mean
    return mean, centred.T @ centred / max(len(x) - 1, 1)


def _sqrt_psd(matrix: Tensor) -> Tensor:
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def frechet_distance(features_a: Tensor, features_b: Tensor) -> float:  # [N, D], [M, D]
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2), in float64.

    The trace of the matrix square root of S_a S_b is taken as that of the symmetric
    S_a^1/2 S_b S_a^1/2 (same eigenvalues), which needs no complex arithmetic."""
    if features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"feature widths differ: {features_a.shape[1]} and {features_b.shape[1]}")
    if len(features_a) < 2 or len(features_b) < 2:
        raise ValueError("FID needs at least two samples on each side")
    mean_a, cov_a = _statistics(features_a)
    mean_b, cov_b = _statistics(features_b)
    root_a = _sqrt_psd(cov_a)
    middle = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    value = (mean_a - mean_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * middle
    return float(value.clamp_min(0))


def kernel_distance(
    features_a: Tensor,  # [N, D]
    features_b: Tensor,  # [M, D]
    *,
    subsets: int = 50,
    subset_size: int = 100,
    seed: int = 0,
) -> tuple[float, float]:  # (KID mean, std over subsets)
    """Unbiased MMD² with the kernel (x.y / D + 1)^3 over random subsets of both sets."""
    if features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"feature widths differ: {features_a.shape[1]} and {features_b.shape[1]}")
    size = min(subset_size, len(features_a), len(features_b))
    if size < 2:
        raise ValueError("KID needs at least two samples on each side")
    a, b = features_a.double(), features_b.double()
    dim = a.shape[1]
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        x = a[torch.randperm(len(a), generator=generator)[:size]]
        y = b[torch.randperm(len(b), generator=generator)[:size]]
        k_xx = (x @ x.T / dim + 1) ** 3
        k_yy = (y @ y.T / dim + 1) ** 3
        k_xy = (x @ y.T / dim + 1) ** 3
        off = size * (size - 1)
        mmd = (k_xx.sum() - k_xx.diagonal().sum()) / off + (k_yy.sum() - k_yy.diagonal().sum()) / off
        values.append(float(mmd - 2 * k_xy.mean()))
    return float(np.mean(values)), float(np.std(values))
