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

What differs from the video judge lives here: the 2-D network's input (`as_image_tensor`, the
resize to `image_size`), random flips and the three prompt modes. The network's shared structure,
its training, prompt accuracy, chance levels, FID and KID are `voxforge.eval.attribute_judge`'s,
re-exported here under the names this module has always had.

Standard FID and CLIP score, from Inception or CLIP weights the user points at, are in
`voxforge.eval.standard_image`.
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
    encode_labels,
    frechet_distance,
    kernel_distance,
    train_judge,
)

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


class AttributeClassifier(AttributeJudge):
    """The image judge: 2-D convolutions (stride 2 per level) over images resized to `cfg.image_size`."""

    cfg: AttributeClassifierConfig
    eval_batch_size = 256
    as_tensor = staticmethod(as_image_tensor)

    def __init__(self, attributes: Mapping[str, Sequence[Any]], cfg: AttributeClassifierConfig | None = None):
        super().__init__(attributes, cfg or AttributeClassifierConfig(), conv=nn.Conv2d, stride=2)

    def _prepare(self, images: Tensor) -> Tensor:  # [N, 3, H, W] in [0, 1] -> [N, 3, s, s] in [-1, 1]
        size = self.cfg.image_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(
                images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        return images * 2.0 - 1.0


def _random_flip(images: Tensor, generator: torch.Generator) -> Tensor:  # [B, 3, H, W] -> the same
    flip = torch.rand(len(images), generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


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
    return train_judge(
        partial(AttributeClassifier, attributes, cfg),
        cfg,
        as_image_tensor(images),
        labels,
        attributes,
        device=device,
        augment=_random_flip if cfg.flip else None,
    )


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
    check_prompt_labels(prompts, labels)
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
