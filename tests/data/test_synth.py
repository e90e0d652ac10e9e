"""Built-in dataset: deterministic by seed, labelled, every class present, ingestible."""

from __future__ import annotations

import json

import numpy as np

from voxforge.data.gltf import load_glb
from voxforge.data.ingest import ingest_file
from voxforge.data.synth import CLASSES, SynthConfig, make_object, procedural_texture, write_dataset


def test_same_seed_same_bytes_and_labels(tmp_path):
    a = write_dataset(tmp_path / "a", SynthConfig(num=12, seed=3))
    b = write_dataset(tmp_path / "b", SynthConfig(num=12, seed=3))
    assert a == b
    for name in a["items"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    labels = json.loads((tmp_path / "a" / "labels.json").read_text())
    assert labels["classes"] == list(CLASSES)
    assert len(labels["items"]) == 12


def test_different_seed_differs():
    _, a = make_object(0, 5)
    _, b = make_object(1, 5)
    assert not np.array_equal(a.merged()[0], b.merged()[0])


def test_prefix_stable_and_balanced(tmp_path):
    small = write_dataset(tmp_path / "s", SynthConfig(num=len(CLASSES), seed=0))
    big = write_dataset(tmp_path / "b", SynthConfig(num=2 * len(CLASSES), seed=0))
    for name in small["items"]:
        assert (tmp_path / "s" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    counts = {}
    for item in big["items"].values():
        counts[item["class"]] = counts.get(item["class"], 0) + 1
    assert counts == {name: 2 for name in CLASSES}


def test_objects_are_normalized_coloured_and_labelled(tmp_path):
    write_dataset(tmp_path, SynthConfig(num=len(CLASSES) * 2, seed=7))
    styles = set()
    for path in sorted(tmp_path.glob("*.glb")):
        mesh = load_glb(path)
        label = mesh.extras["voxforge_synth"]["class"]
        assert label in path.name
        lo, hi = mesh.bounds()
        assert np.isclose((hi - lo).max(), 1.0, atol=1e-5)
        for part in mesh.parts:
            styles.add(
                "texture"
                if part.texture is not None
                else "vertex"
                if part.vertex_colors is not None
                else "plain"
            )
        result = ingest_file(path, tmp_path)
        assert not result.warnings  # no degenerate triangles, nothing to repair
        assert result.mesh.extras["voxforge_synth"]["class"] == label
    assert styles == {"texture", "vertex", "plain"}


def test_classes_differ_in_shape():
    """Occupancy silhouettes of different classes differ: shape carries the label."""
    from voxforge.data.voxelize import voxelize

    grids = {}
    for index, name in enumerate(CLASSES):
        _, mesh = make_object(0, index)
        grid = np.zeros((16, 16, 16), bool)
        coords = voxelize(*mesh.merged(), 16)
        grid[tuple(coords.T)] = True
        grids[name] = grid
    names = list(CLASSES)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            iou = (grids[a] & grids[b]).sum() / (grids[a] | grids[b]).sum()
            assert iou < 0.9, (a, b, iou)


def test_procedural_texture_is_rgba_and_varied():
    texture = procedural_texture(np.random.default_rng(0))
    assert texture.shape == (128, 128, 4) and texture.dtype == np.uint8
    assert (texture[..., 3] == 255).all()
    assert len(np.unique(texture.reshape(-1, 4), axis=0)) >= 2
