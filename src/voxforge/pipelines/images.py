"""Condition images from the user's files, prepared exactly like the training condition views.

`load_condition_image`: an image file → the `[3, S, S]` condition tensor the flows trained on
(the data toolkit's `condition_image`: alpha-box crop ×1.2, premultiplied on black). The file
is size-checked before decoding (`MAX_IMAGE_BYTES`, `MAX_IMAGE_PIXELS`). Images without alpha
(or fully opaque) get their background removed when it is a plain colour
(`remove_plain_background`): the border's median colour is the background if ≥ 90 % of the
border lies within a tolerance of it, and the regions of near-background colour connected
to the border become transparent (then the outline moves in by one pixel, dropping
anti-aliased edge pixels). Otherwise the user is told to provide an RGBA image with a
transparent background. Enclosed background-coloured regions (the hole of a ring seen
head-on) stay opaque: telling them apart from a white object part needs a segmentation model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from voxforge.data.dataset import condition_image
from voxforge.data.image_io import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, read_image
from voxforge.errors import UserError

__all__ = ["MAX_IMAGE_BYTES", "MAX_IMAGE_PIXELS", "load_condition_image", "remove_plain_background"]


def remove_plain_background(rgb: np.ndarray, tolerance: int = 24, name: str = "image") -> np.ndarray:
    """rgb [H, W, 3] uint8 -> alpha [H, W] uint8: 0 on the border-connected plain background."""
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).astype(np.int16)  # [P, 3]
    background = np.median(border, axis=0)
    near_border = np.abs(border - background).max(axis=1) <= tolerance
    if near_border.mean() < 0.9:
        raise UserError(
            f"{name}: the image has no transparency and its border is not one plain colour, so the object "
            "cannot be separated from the background; provide an RGBA PNG with a transparent background "
            "(any background-removal tool works), or a photo of the object on a plain backdrop"
        )
    near = np.abs(rgb.astype(np.int16) - background).max(axis=2) <= tolerance
    labels, _ = ndimage.label(near)
    touching = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    touching = touching[touching > 0]
    foreground = ~np.isin(labels, touching)
    if foreground.mean() < 1e-3:
        raise UserError(f"{name}: no object found in front of the plain background")
    # one pixel in from the outline: anti-aliased edge pixels are part background colour
    eroded = ndimage.binary_erosion(foreground)
    if eroded.sum() >= 0.5 * foreground.sum():
        foreground = eroded
    return np.where(foreground, 255, 0).astype(np.uint8)


def load_condition_image(path: str | Path, size: int, *, tolerance: int = 24) -> Tensor:  # -> [3, S, S]
    """Read an image file and prepare it exactly like the training condition views."""
    path = Path(path)
    loaded = read_image(path, max_pixels=MAX_IMAGE_PIXELS, max_bytes=MAX_IMAGE_BYTES)  # size-checked first
    rgba, has_alpha = loaded.rgba, loaded.has_alpha
    if not has_alpha or bool((rgba[..., 3] == 255).all()):
        rgba = rgba.copy()
        rgba[..., 3] = remove_plain_background(rgba[..., :3], tolerance, name=str(path))
    elif not (rgba[..., 3] > 0).any():
        raise UserError(f"{path}: the image is fully transparent")
    return torch.from_numpy(condition_image(rgba, size))
