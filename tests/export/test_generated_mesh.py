"""Baking a texture field into a UV texture: .glb and .obj open in trimesh with the texture."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from voxforge.errors import UserError
from voxforge.export.generated_mesh import bake_texture_field, write_textured

pytest.importorskip("xatlas")


def _field(points: torch.Tensor) -> torch.Tensor:  # colour = position: checks where texels land
    return (points + 0.5).clamp(0, 1)


def _lookup(image: np.ndarray, uv: np.ndarray, v_up: bool) -> np.ndarray:  # bilinear-free nearest texel
    h, w = image.shape[:2]
    v = 1.0 - uv[:, 1] if v_up else uv[:, 1]
    x = np.clip((uv[:, 0] * w).astype(int), 0, w - 1)
    y = np.clip((v * h).astype(int), 0, h - 1)
    return image[y, x, :3].astype(np.float64) / 255.0


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    sphere = trimesh.creation.icosphere(2, radius=0.3)
    mesh = bake_texture_field(sphere.vertices, sphere.faces, _field, texture_size=128)
    return write_textured(mesh, tmp_path_factory.mktemp("exported"), "shape")


def test_files_are_written(exported):
    assert {k: p.suffix for k, p in exported.items()} == {
        "glb": ".glb",
        "obj": ".obj",
        "mtl": ".mtl",
        "png": ".png",
    }
    assert all(p.is_file() and p.stat().st_size > 0 for p in exported.values())
    assert f"map_Kd {exported['png'].name}" in exported["mtl"].read_text()


@pytest.mark.parametrize("kind", ["glb", "obj"])
def test_trimesh_opens_it_with_the_baked_texture(exported, kind):
    loaded = trimesh.load(exported[kind], force="mesh")
    assert isinstance(loaded.visual, trimesh.visual.TextureVisuals)
    material = loaded.visual.material
    image = getattr(material, "baseColorTexture", None) if kind == "glb" else material.image
    assert image is not None
    # the texel under every vertex's uv holds the field at that vertex (colour = position + 0.5)
    colours = _lookup(np.asarray(image), np.asarray(loaded.visual.uv), v_up=True)
    expected = np.clip(np.asarray(loaded.vertices) + 0.5, 0, 1)
    assert np.abs(colours - expected).mean() < 0.03
    assert len(loaded.faces) == 320


def test_an_empty_mesh_is_refused():
    with pytest.raises(UserError, match="no faces"):
        bake_texture_field(np.zeros((0, 3)), np.zeros((0, 3), np.int64), _field)
