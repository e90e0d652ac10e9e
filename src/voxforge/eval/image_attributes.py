"""Offline metrics of a text-to-image model: prompt accuracy by an attribute classifier, and
FID / KID in that classifier's feature space.

No download: the judge is a small CNN trained here on *real* held-out images whose attributes
are known (the built-in synthetic dataset names each image's shape, colour, count, position,
size and background; `data.synth_images.parse_caption` reads them back from a caption). A
generated image is then judged against the attributes its prompt asked for:

- prompt accuracy: per attribute, the fraction of generated images the classifier labels as
  the prompt said, and the fraction with every attribute right. Comparing prompts given as
  they are (conditional), no prompt (unconditional: the empty text or cfg 0) and prompts
  shuffled across images (judged against the shuffled-away prompt, so a model that ignores
  text and a model that follows it score alike only by chance) says how much the text is
  followed; `evaluate_prompt_modes` runs the three.
- FID (Heusel et al. 2017) and KID (Bińkowski et al. 2018) between generated and real images,
  in the classifier's penultimate features instead of Inception's. They are comparable only
  between runs judged by the same classifier (its seed and data fixed), as any FID is only
  comparable within one feature extractor. KID is the unbiased MMD² with the cubic polynomial
  kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets; it has no small-sample bias,
  which matters at the few hundred images of a CPU demo.

Standard FID and CLIP score, from Inception or CLIP weights the user points at, are in
`voxforge.eval.standard_image`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voxforge.config.core import option

__all__ = [
    "AttributeClassifier",
    "AttributeClassifierConfig",
    "as_image_tensor",
    "attribute_accuracy",
    "chance_accuracy",
    "encode_labels",
    "evaluate_prompt_modes",
    "frechet_distance",
    "kernel_distance",
    "train_attribute_classifier",
]


@dataclass
class AttributeClassifierConfig:
    image_size: int = option(32, ge=8, help="images are resized to this side before the classifier")
    width: int = option(32, ge=4, help="channels of the first convolution (doubled per level)")
    levels: int = option(3, ge=1, help="stride-2 levels")
    feature_dim: int = option(64, ge=4, help="penultimate features (the FID/KID space)")
    steps: int = option(300, ge=1, help="training steps")
    batch_size: int = option(64, ge=1)
    lr: float = option(1e-2, gt=0.0, help="peak of the one-cycle schedule")
    flip: bool = option(False, help="random horizontal flips (off: positions left/right are attributes)")
    seed: int = option(0, ge=0)


def as_image_tensor(
    images: Any,
) -> Tensor:  # uint8 [N, H, W, 3] or float [N, 3, H, W] -> float [N, 3, H, W] in [0, 1]
    """Images as the classifier takes them: uint8 HWC arrays (the pipeline's output) or float CHW in [0, 1]."""
    tensor = torch.as_tensor(np.asarray(images)) if not isinstance(images, Tensor) else images
    if tensor.ndim != 4:
        raise ValueError(
            f"expected a batch of images [N, H, W, 3] or [N, 3, H, W], got shape {tuple(tensor.shape)}"
        )
    if tensor.dtype == torch.uint8:
        return tensor.permute(0, 3, 1, 2).float() / 255.0 if tensor.shape[-1] == 3 else tensor.float() / 255.0
    if tensor.shape[1] != 3 and tensor.shape[-1] == 3:
        tensor = tensor.permute(0, 3, 1, 2)
    return tensor.float()


def encode_labels(
    labels: Sequence[Mapping[str, Any]], attributes: Mapping[str, Sequence[Any]]
) -> dict[str, Tensor]:  # {name: [N] long}
    """Attribute dicts (one per image) → class indices per attribute; an unknown value is an error."""
    out = {}
    for name, values in attributes.items():
        index = {v: i for i, v in enumerate(values)}
        try:
            out[name] = torch.tensor([index[row[name]] for row in labels], dtype=torch.long)
        except KeyError as err:
            raise ValueError(f"attribute '{name}': value {err} is not one of {list(values)}") from None
    return out


class AttributeClassifier(nn.Module):
    """A small CNN with one softmax head per attribute over shared penultimate features."""

    def __init__(self, attributes: Mapping[str, Sequence[Any]], cfg: AttributeClassifierConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or AttributeClassifierConfig()
        self.attributes = {name: list(values) for name, values in attributes.items()}
        if not self.attributes or any(len(v) < 2 for v in self.attributes.values()):
            raise ValueError("every attribute needs at least two values")
        layers: list[nn.Module] = [nn.Conv2d(3, cfg.width, 3, padding=1), nn.SiLU()]
        channels = cfg.width
        for level in range(cfg.levels):
            out = cfg.width * 2 ** (level + 1)
            layers += [
                nn.Conv2d(channels, out, 3, stride=2, padding=1),
                nn.GroupNorm(min(8, out), out),
                nn.SiLU(),
                nn.Conv2d(out, out, 3, padding=1),
                nn.SiLU(),
            ]
            channels = out
        self.body = nn.Sequential(*layers)
        self.to_features = nn.Linear(2 * channels, cfg.feature_dim)  # mean and max pooled
        self.heads = nn.ModuleDict(
            {name: nn.Linear(cfg.feature_dim, len(v)) for name, v in self.attributes.items()}
        )

    def _prepare(self, images: Tensor) -> Tensor:  # [N, 3, H, W] in [0, 1] -> [N, 3, s, s] in [-1, 1]
        size = self.cfg.image_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(
                images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        return images * 2.0 - 1.0

    def features(self, images: Tensor) -> Tensor:  # [N, 3, H, W] in [0, 1] -> [N, feature_dim]
        x = self.body(self._prepare(images))
        pooled = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)  # max: a small shape's colour
        return F.silu(self.to_features(pooled))

    def forward(self, images: Tensor) -> dict[str, Tensor]:  # {name: logits [N, K]}
        feats = self.features(images)
        return {name: head(feats) for name, head in self.heads.items()}

    @torch.no_grad()
    def embed(self, images: Any, batch_size: int = 256) -> Tensor:  # -> [N, feature_dim] float64
        images = as_image_tensor(images)
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        out = [
            self.features(images[i : i + batch_size].to(device)).double().cpu()
            for i in range(0, len(images), batch_size)
        ]
        self.train(was_training)
        return torch.cat(out)

    @torch.no_grad()
    def predict(self, images: Any, batch_size: int = 256) -> dict[str, Tensor]:  # {name: [N] long}
        images = as_image_tensor(images)
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        chunks = [self(images[i : i + batch_size].to(device)) for i in range(0, len(images), batch_size)]
        self.train(was_training)
        return {name: torch.cat([c[name].argmax(dim=1).cpu() for c in chunks]) for name in self.attributes}


def train_attribute_classifier(
    images: Any,  # uint8 [N, H, W, 3] or float [N, 3, H, W] in [0, 1]
    labels: Sequence[Mapping[str, Any]],  # one attribute dict per image
    attributes: Mapping[str, Sequence[Any]],  # {name: its values}
    cfg: AttributeClassifierConfig | None = None,
    *,
    device: torch.device | str = "cpu",
) -> AttributeClassifier:
    """Train the judge on real images; deterministic given `cfg.seed` (own generator and init)."""
    cfg = cfg or AttributeClassifierConfig()
    images = as_image_tensor(images)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} label rows")
    targets = encode_labels(labels, attributes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = AttributeClassifier(attributes, cfg).to(device)
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1
    )
    model.train()
    for _ in range(cfg.steps):
        index = torch.randint(len(images), (min(cfg.batch_size, len(images)),), generator=generator)
        batch = images[index]
        if cfg.flip:
            flip = torch.rand(len(batch), generator=generator) < 0.5
            batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
        logits = model(batch.to(device))
        loss = sum(F.cross_entropy(logits[name], targets[name][index].to(device)) for name in attributes)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


def attribute_accuracy(
    classifier: AttributeClassifier, images: Any, labels: Sequence[Mapping[str, Any]]
) -> dict[str, float]:
    """{attribute: accuracy, "all": every attribute right, "mean": mean over attributes}."""
    predicted = classifier.predict(images)
    targets = encode_labels(labels, classifier.attributes)
    correct = {name: predicted[name] == targets[name] for name in classifier.attributes}
    result = {name: float(hit.float().mean()) for name, hit in correct.items()}
    result["all"] = float(torch.stack(list(correct.values())).all(dim=0).float().mean())
    result["mean"] = float(np.mean([result[name] for name in classifier.attributes]))
    return result


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


#: generate(prompts) -> images (uint8 [N, H, W, 3] or float [N, 3, H, W] in [0, 1])
GenerateFn = Callable[[list[str]], Any]


def evaluate_prompt_modes(
    classifier: AttributeClassifier,
    generate: GenerateFn,
    prompts: Sequence[str],
    labels: Sequence[Mapping[str, Any]],  # what each prompt asks for
    real_images: Any,  # real held-out images: the FID / KID reference
    *,
    generate_unconditional: GenerateFn | None = None,  # default: generate(["" ...])
    seed: int = 0,
    kid_subset_size: int = 100,
) -> dict[str, dict[str, float]]:
    """Prompt accuracy, FID and KID of generations for `prompts` as given, unconditional and
    shuffled (a derangement of the prompts; each image is judged against the prompt it did not
    get). Returns {"conditional" | "unconditional" | "shuffled": {attribute accuracies, "all",
    "mean", "fid", "kid", "kid_std"}}; chance levels follow from the label frequencies."""
    if len(prompts) != len(labels):
        raise ValueError(f"{len(prompts)} prompts but {len(labels)} label rows")
    if len(prompts) < 2:
        raise ValueError("the evaluation needs at least two prompts")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(prompts))
    shift = np.roll(order, 1)
    derangement = np.empty(len(prompts), dtype=np.int64)
    derangement[order] = shift  # i -> another index, never itself
    real_features = classifier.embed(real_images)
    uncond = generate_unconditional or (lambda p: generate([""] * len(p)))
    modes = {
        "conditional": generate(list(prompts)),
        "unconditional": uncond(list(prompts)),
        "shuffled": generate([prompts[j] for j in derangement]),
    }
    results = {}
    for mode, images in modes.items():
        scores = attribute_accuracy(classifier, images, labels)
        features = classifier.embed(images)
        scores["fid"] = frechet_distance(features, real_features)
        scores["kid"], scores["kid_std"] = kernel_distance(
            features, real_features, subset_size=kid_subset_size, seed=seed
        )
        results[mode] = scores
    return results


def chance_accuracy(labels: Sequence[Mapping[str, Any]], attributes: Sequence[str]) -> dict[str, float]:
    """Accuracy of a judge that ignores the image but knows the label frequencies (sum of p²)."""
    out = {}
    for name in attributes:
        _, counts = np.unique([str(row[name]) for row in labels], return_counts=True)
        p = counts / counts.sum()
        out[name] = float((p**2).sum())
    out["mean"] = float(np.mean(list(out.values()))) if out else math.nan
    return out
