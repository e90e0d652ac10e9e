"""`toy_flow`: a class-conditional rectified flow on a 2-D Gaussian mixture, in seconds on a CPU.

It exercises every piece a real flow stage uses — the flow path and timestep density,
condition dropout, guided Heun/Euler sampling, EMA, sample hooks and metrics — on data whose
density is known, so "did training work" is a number, not a judgement:

- data: `components` Gaussians of standard deviation `std` evenly spaced on a circle of
  `radius`; item i belongs to component i mod K (balanced classes) and its position is
  drawn from a table generated per epoch from (seed, epoch) alone, so workers and resumed
  runs see the same points (see `stages.base`);
- model: a residual MLP on (x, t, class). Time goes through the shared sinusoidal
  `TimestepEmbedder`; the class through an embedding with one extra row, the *null* class
  that condition dropout substitutes, so one network gives conditional and unconditional
  velocities for guidance. The output layer starts at zero (an untrained model returns its
  noise unchanged), which makes "untrained" a well-defined baseline;
- metrics (on fixed noise so steps are comparable): mean distance of a sample to its nearest
  mode, class accuracy (nearest mode == requested class), biased multi-scale RBF MMD² against
  fresh data, NLL under the true mixture, and for unconditional samples the fraction of modes
  that received at least a quarter of their share (mode collapse shows here first);
- `on_sample` also writes `samples.png`: target points in grey, samples coloured by class,
  guided samples left and unconditional right (Pillow only).
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from voxforge.config.core import option
from voxforge.flow import (
    FlowConfig,
    SamplerConfig,
    drop_conditions,
    flow_matching_loss,
    make_noise,
    sample_from_config,
)
from voxforge.nn.embeddings import TimestepEmbedder
from voxforge.stages.base import EpochAware, Stage

__all__ = [
    "ToyModelConfig",
    "ToyDataConfig",
    "GaussianRing",
    "ToyVelocityNet",
    "ToyFlowStage",
    "mixture_metrics",
]


@dataclass
class ToyModelConfig:
    width: int = option(64, ge=8, help="hidden width of the MLP")
    depth: int = option(3, ge=1, help="residual blocks")
    frequency_dim: int = option(64, ge=2, help="size of the sinusoidal time features")


@dataclass
class ToyDataConfig:
    size: int = option(8192, ge=1, help="samples per epoch")
    components: int = option(8, ge=1, help="Gaussians on the ring (= classes)")
    radius: float = option(2.0, gt=0.0, help="radius of the ring of modes")
    std: float = option(0.1, gt=0.0, help="standard deviation of each Gaussian")
    conditional: bool = option(True, help="condition on the component (false: unconditional)")
    eval_samples: int = option(512, ge=8, help="samples drawn by the sample hook and final metrics")


class GaussianRing(EpochAware, torch.utils.data.Dataset):
    """Item i: {"x": [2] position, "label": component i mod K}; positions redrawn per epoch."""

    def __init__(self, cfg: ToyDataConfig, seed: int):
        self.cfg, self.seed = cfg, seed
        self.centers = ring_centers(cfg.components, cfg.radius)  # [K, 2]
        self.labels = torch.arange(cfg.size) % cfg.components  # [size]
        self._table: tuple[int, Tensor] | None = None

    def __len__(self) -> int:
        return self.cfg.size

    def points(self, epoch: int) -> Tensor:  # [size, 2]
        if self._table is None or self._table[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + 17)
            offsets = self.cfg.std * torch.randn(self.cfg.size, 2, generator=gen)
            self._table = (epoch, self.centers[self.labels] + offsets)
        return self._table[1]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"x": self.points(self.epoch)[index], "label": self.labels[index]}


def ring_centers(components: int, radius: float) -> Tensor:  # [K, 2]
    angles = 2 * math.pi * torch.arange(components, dtype=torch.float64) / components
    return (radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)).float()


class _ResidualBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.cond = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h: Tensor, c: Tensor) -> Tensor:  # h, c: [B, width]
        return h + self.fc2(nn.functional.silu(self.fc1(self.norm(h)) + self.cond(c)))


class ToyVelocityNet(nn.Module):
    """v(x_t, t, label): x [B, dim], t [B] in [0, 1], label [B] long in [0, K] (K = null)."""

    def __init__(self, cfg: ToyModelConfig, num_classes: int, dim: int = 2):
        super().__init__()
        self.num_classes = num_classes
        self.time = TimestepEmbedder(cfg.width, cfg.frequency_dim)
        self.label = nn.Embedding(num_classes + 1, cfg.width)
        self.input = nn.Linear(dim, cfg.width)
        self.blocks = nn.ModuleList(_ResidualBlock(cfg.width) for _ in range(cfg.depth))
        self.out_norm = nn.LayerNorm(cfg.width)
        self.output = nn.Linear(cfg.width, dim)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    @property
    def null_class(self) -> int:
        return self.num_classes

    def forward(self, x: Tensor, t: Tensor, label: Tensor) -> Tensor:  # -> [B, dim]
        c = nn.functional.silu(self.time(t) + self.label(label))
        h = self.input(x)
        for block in self.blocks:
            h = block(h, c)
        return self.output(nn.functional.silu(self.out_norm(h)))


def mixture_log_prob(x: Tensor, centers: Tensor, std: float) -> Tensor:  # x [N, 2] -> [N]
    """log p(x) under the equal-weight isotropic mixture."""
    sq = torch.cdist(x.double(), centers.double()).pow(2)  # [N, K]
    log_comp = -sq / (2 * std**2) - math.log(2 * math.pi * std**2)
    return (torch.logsumexp(log_comp, dim=1) - math.log(centers.shape[0])).float()


def rbf_mmd2(a: Tensor, b: Tensor, bandwidths: tuple[float, ...]) -> float:  # a [N, d], b [M, d]
    """Biased (V-statistic, >= 0) squared MMD with a sum of Gaussian kernels."""
    a, b = a.double(), b.double()

    def kernel(x: Tensor, y: Tensor) -> Tensor:
        sq = torch.cdist(x, y).pow(2)
        return sum(torch.exp(-sq / (2 * h**2)) for h in bandwidths)

    return float(kernel(a, a).mean() + kernel(b, b).mean() - 2 * kernel(a, b).mean())


def mixture_metrics(
    samples: Tensor,  # [N, 2]
    labels: Tensor | None,  # [N] requested classes, or None for unconditional samples
    reference: Tensor,  # [M, 2] fresh data
    centers: Tensor,  # [K, 2]
    std: float,
    radius: float,
) -> dict[str, float]:
    samples = samples.float().cpu()
    dist = torch.cdist(samples, centers)  # [N, K]
    nearest_dist, nearest = dist.min(dim=1)
    metrics = {
        "mode_dist": float(nearest_dist.mean()),
        "mmd": rbf_mmd2(samples, reference, (std, 4 * std, radius)),
        "nll": float(-mixture_log_prob(samples, centers, std).mean()),
    }
    if labels is not None:
        metrics["class_acc"] = float((nearest == labels.cpu()).float().mean())
    else:
        counts = torch.bincount(nearest, minlength=centers.shape[0]).float()
        share = samples.shape[0] / centers.shape[0]
        metrics["modes_covered"] = float((counts >= 0.25 * share).float().mean())
    return metrics


@dataclass
class ToySamples:
    metrics: dict[str, float]
    guided: Tensor | None  # [N, 2] conditional samples with the recipe's sampler (None if unconditional)
    unconditional: Tensor  # [N, 2]
    labels: Tensor  # [N] requested classes of the guided samples
    reference: Tensor  # [N, 2] fresh data


class ToyFlowStage(Stage):
    name = "toy_flow"
    sections = {"model": ToyModelConfig, "data": ToyDataConfig, "flow": FlowConfig, "sampler": SamplerConfig}

    def build_model(self) -> nn.Module:
        return ToyVelocityNet(self.recipe.model, self.recipe.data.components)

    def build_dataset(self) -> torch.utils.data.Dataset:
        return GaussianRing(self.recipe.data, self.recipe.train.seed)

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        labels = batch["label"]
        null = torch.tensor(self.recipe.data.components, device=labels.device)
        if self.recipe.data.conditional:
            labels, _ = drop_conditions(labels, self.recipe.flow.p_uncond, null)
        else:
            labels = null.expand_as(labels)
        return flow_matching_loss(model, batch["x"], labels, self.recipe.flow)

    # --- evaluation -------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> ToySamples:
        """Sample from fixed noise (seeded from train.seed) and score against the mixture."""
        data, seed = self.recipe.data, self.recipe.train.seed
        device = next(model.parameters()).device
        n, k = data.eval_samples, data.components
        labels = (torch.arange(n) % k).to(device)
        null = torch.full_like(labels, k)
        noise = make_noise((n, 2), seed=seed + 1, device=device)
        gen = torch.Generator().manual_seed(seed + 2)
        centers = ring_centers(k, data.radius)
        reference = centers[torch.arange(n) % k] + data.std * torch.randn(n, 2, generator=gen)
        sigma_min = self.recipe.flow.sigma_min
        with torch.autocast(device.type, enabled=False):
            unconditional = sample_from_config(
                model, noise, null, None, replace(self.recipe.sampler, cfg_scale=1.0), sigma_min=sigma_min
            ).cpu()
            guided = None
            if data.conditional:
                guided = sample_from_config(
                    model, noise, labels, null, self.recipe.sampler, sigma_min=sigma_min
                )
                guided = guided.cpu()
        args = (reference, centers, data.std, data.radius)
        if guided is not None:
            metrics = mixture_metrics(guided, labels, *args)
            metrics.update(
                {f"uncond_{key}": v for key, v in mixture_metrics(unconditional, None, *args).items()}
            )
        else:
            metrics = mixture_metrics(unconditional, None, *args)
        return ToySamples(metrics, guided, unconditional, labels.cpu(), reference)

    def on_sample(self, model: nn.Module, step: int, out_dir: Path) -> dict[str, float]:
        result = self.evaluate(model)
        data = self.recipe.data
        panels = [(f"unconditional, step {step}", result.unconditional, None)]
        if result.guided is not None:
            title = f"guided cfg={self.recipe.sampler.cfg_scale:g}, step {step}"
            panels.insert(0, (title, result.guided, result.labels))
        plot_samples(
            Path(out_dir) / "samples.png",
            panels,
            result.reference,
            ring_centers(data.components, data.radius),
        )
        return result.metrics

    def on_train_end(self, model: nn.Module, step: int) -> dict[str, float]:
        return self.evaluate(model).metrics


def plot_samples(
    path: Path,
    panels: list[tuple[str, Tensor, Tensor | None]],  # (title, samples [N, 2], labels [N] or None)
    reference: Tensor,  # [M, 2]
    centers: Tensor,  # [K, 2]
    size: int = 400,
) -> None:
    """Scatter plots side by side: reference in grey, samples coloured by class, modes circled."""
    from PIL import Image, ImageDraw

    extent = max(3.0, 1.5 * float(centers.norm(dim=1).max()))  # noise (|x| < 3) stays visible
    k = centers.shape[0]
    palette = [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / k, 0.85, 0.8)) for i in range(k)]
    image = Image.new("RGB", (size * len(panels), size), "white")
    draw = ImageDraw.Draw(image)

    def to_px(points: Tensor, offset: int) -> list[tuple[float, float] | None]:  # None: off the plot
        pts = points.float().cpu()
        keep = (pts.abs() <= extent).all(dim=1)
        u = (pts[:, 0] / extent + 1) * 0.5 * (size - 1) + offset
        v = (1 - pts[:, 1] / extent) * 0.5 * (size - 1)
        return [(float(a), float(b)) if ok else None for a, b, ok in zip(u, v, keep)]

    for p, (title, samples, labels) in enumerate(panels):
        offset = p * size
        for point in to_px(reference, offset):
            if point is not None:
                draw.rectangle([point[0] - 1, point[1] - 1, point[0] + 1, point[1] + 1], fill=(200, 200, 200))
        for i, point in enumerate(to_px(samples, offset)):
            if point is not None:
                color = palette[int(labels[i]) % k] if labels is not None else (40, 40, 40)
                draw.ellipse([point[0] - 2, point[1] - 2, point[0] + 2, point[1] + 2], fill=color)
        for center in to_px(centers, offset):
            draw.ellipse([center[0] - 6, center[1] - 6, center[0] + 6, center[1] + 6], outline=(0, 0, 0))
        draw.text((offset + 6, 4), title, fill=(0, 0, 0))
        if p:
            draw.line([(offset, 0), (offset, size)], fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
