"""Ingest: every real mesh loads (scene graphs, textures, vertex colours); every bad input fails
with its reason, never reads outside the source folder, and never crashes."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest

from tests.data.hostile import CUBE_OBJ, bomb_png, small_png
from voxforge.data.ingest import ingest_file
from voxforge.data.safety import Limits
from voxforge.representations.mesh import AssetError

REAL = [
    "plain/ballA.off",
    "plain/bunny.ply",
    "plain/fandisk.obj",
    "plain/featuretype.STL",
    "plain/suzanne.obj",
    "plain/teapot.obj",
    "plain/torus.STL",
    "textured/BoxTextured.glb",
    "textured/Duck.glb",
    "textured/nested.glb",
    "textured/pins.glb",
    "textured/simple_pole.glb",
    "textured/fuze/fuze.obj",
    "textured/spot/spot.obj",
    "vertexcolor/cubevc.glb",
    "vertexcolor/cycloidal.ply",
]
TEXTURED = {
    "textured/BoxTextured.glb",
    "textured/Duck.glb",
    "textured/fuze/fuze.obj",
    "textured/spot/spot.obj",
}
VERTEX_COLORED = {"vertexcolor/cubevc.glb", "vertexcolor/cycloidal.ply"}


def ingest(path, root=None, **kwargs):
    return ingest_file(path, root or path.parent, **kwargs)


def reason(path, root=None, **kwargs) -> str:
    with pytest.raises(AssetError) as err:
        ingest(path, root, **kwargs)
    return err.value.reason


@pytest.mark.parametrize("name", REAL)
def test_real_meshes_ingest_normalized(shared_meshes, name):
    path = shared_meshes / name
    result = ingest(path)
    vertices, faces = result.mesh.merged()
    assert len(faces) > 0 and np.isfinite(vertices).all()
    lo, hi = vertices.min(0), vertices.max(0)
    np.testing.assert_allclose((lo + hi) / 2, 0, atol=1e-5)
    assert (hi - lo).max() == pytest.approx(1.0, abs=1e-5)
    assert result.stats["textured"] == (name in TEXTURED)
    assert result.stats["vertex_colors"] == (name in VERTEX_COLORED)
    for part in result.mesh.parts:
        part.check()


def test_scene_graph_is_flattened_with_transforms(shared_meshes):
    result = ingest(shared_meshes / "textured" / "nested.glb")
    assert result.stats["parts"] == 3
    centres = np.array([p.vertices.mean(0) for p in result.mesh.parts])
    assert np.ptp(centres, axis=0).max() > 0.3  # the instances sit at different places


def test_obj_texture_is_flipped_into_gltf_convention(shared_meshes):
    """spot.obj and a GLB of the same mesh must sample the same colours at the vertices."""
    import trimesh

    from voxforge.representations.mesh import vertex_rgba

    path = shared_meshes / "textured" / "spot" / "spot.obj"
    ours = vertex_rgba(ingest(path).mesh.parts[0])
    reference = trimesh.load(path, process=False)
    expected = reference.visual.to_color().vertex_colors[:, :3] / 255.0
    # same vertex order (process=False) -> nearest-texel vs trimesh's bilinear lookup
    assert np.abs(ours[:, :3] - expected).mean() < 0.03


def test_broken_shared_files(shared_meshes):
    broken = shared_meshes / "broken"
    assert reason(broken / "empty.obj") == "no_geometry"
    assert reason(broken / "empty.stl") == "no_geometry"
    assert reason(broken / "empty_nodes.glb") == "no_geometry"
    assert reason(broken / "points_emptyface.ply") == "point_cloud"
    # its surface.mtl is not there: loaded with the default material and a warning
    loose = ingest(broken / "notenoughindices.obj")
    assert loose.mesh.num_faces == 1 and loose.warning_reasons == ["missing_material"]
    assert ingest(broken / "noimg.obj").stats["textured"] is False
    assert ingest(broken / "soup.stl").mesh.num_faces == 100
    nancolor = ingest(broken / "nancolor.obj").mesh
    assert np.isfinite(nancolor.parts[0].vertex_colors).all()


@pytest.fixture
def src(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    return folder


def write(folder, name, data):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def test_empty_and_whitespace_files(src):
    for name in ("a.obj", "b.ply", "c.stl", "d.off", "e.glb", "f.gltf"):
        assert reason(write(src, name, b"")) == "empty_file"
    assert reason(write(src, "g.obj", b"   \n\n")) == "empty_file"


def test_non_mesh_bytes_with_mesh_extension(src):
    junk = bytes(range(256)) * 8
    assert reason(write(src, "a.obj", junk)) == "not_a_mesh"
    assert reason(write(src, "b.glb", junk)) == "not_a_mesh"
    assert reason(write(src, "c.ply", junk)) == "not_a_mesh"
    assert reason(write(src, "d.off", junk)) == "not_a_mesh"
    assert reason(write(src, "e.stl", junk)) in ("corrupt_file", "not_a_mesh")
    assert reason(write(src, "f.gltf", b"{not json")) == "corrupt_file"
    assert reason(write(src, "g.obj", "hello world\nthis is text")) == "no_geometry"
    assert reason(write(src, "h.xyz", "1 2 3")) == "unsupported"


def test_nan_and_inf_coordinates(src):
    obj = CUBE_OBJ.replace("v 1 1 1", "v nan 1 1")
    assert reason(write(src, "a.obj", obj)) == "non_finite"
    obj = CUBE_OBJ.replace("v 1 1 1", "v inf 1 1")
    assert reason(write(src, "b.obj", obj)) == "non_finite"
    # a NaN vertex that no face uses is simply dropped
    result = ingest(write(src, "c.obj", CUBE_OBJ + "v nan nan nan\n"))
    assert result.mesh.num_vertices == 8


def test_out_of_range_indices(src):
    assert reason(write(src, "a.obj", CUBE_OBJ + "f 1 2 99\n")) == "bad_indices"
    ply = "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
    ply += (
        "element face 1\nproperty list uchar int vertex_indices\nend_header\n0 0 0\n1 0 0\n0 1 0\n3 0 1 7\n"
    )
    assert reason(write(src, "b.ply", ply)) == "bad_indices"
    off = "OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 5\n"
    assert reason(write(src, "c.off", off)) in ("bad_indices", "corrupt_file")


def test_degenerate_only_mesh(src):
    obj = "v 0 0 0\nv 1 0 0\nv 2 0 0\nv 0 1 0\nf 1 2 3\nf 1 1 4\n"  # collinear + repeated index
    assert reason(write(src, "a.obj", obj)) == "degenerate"
    stl = b"\x00" * 80 + struct.pack("<I", 2) + (b"\x00" * 48 + b"\x00\x00") * 2
    assert reason(write(src, "b.stl", stl)) == "degenerate"


def test_degenerate_faces_are_dropped_with_a_warning(src):
    result = ingest(write(src, "a.obj", CUBE_OBJ + "f 1 1 2\n"))
    assert result.mesh.num_faces == 12
    assert any("degenerate" in w for w in result.warnings)
    assert result.warning_reasons == ["degenerate_faces"]


def test_binary_stl_with_lying_count(src):
    stl = b"\x00" * 80 + struct.pack("<I", 1_000_000) + b"\x00" * 50
    assert reason(write(src, "a.stl", stl)) == "corrupt_file"


def test_face_limit(src):
    path = write(src, "a.obj", CUBE_OBJ)
    assert reason(path, limits=Limits(max_faces=11)) == "too_many_faces"
    assert ingest(path, limits=Limits(max_faces=12)).mesh.num_faces == 12


def test_file_size_limit(src):
    path = write(src, "a.obj", CUBE_OBJ)
    assert reason(path, limits=Limits(max_file_bytes=10)) == "too_large"


def textured_obj(src, mtl_name="m.mtl", texture_name="t.png", mtl_path=None, kd="1 1 1"):
    obj = f"mtllib {mtl_name}\nusemtl mat\n" + CUBE_OBJ.replace("f ", "vt 0 0\nf ", 1)
    lines = [
        line
        if not line.startswith("f ")
        else " ".join([line.split()[0]] + [f"{i}/1" for i in line.split()[1:]])
        for line in obj.splitlines()
    ]
    path = write(src, "a.obj", "\n".join(lines) + "\n")
    write(src, mtl_path or mtl_name, f"newmtl mat\nKd {kd}\nmap_Kd {texture_name}\n")
    return path


def test_textured_obj_loads(src):
    (src / "t.png").write_bytes(small_png())
    assert ingest(textured_obj(src)).stats["textured"] is True


def test_missing_texture_keeps_the_material_without_it(src):
    path = textured_obj(src, kd="1 0 0")
    for allow in (False, True):
        result = ingest(path, allow_missing_textures=allow)
        assert result.stats["textured"] is False
        np.testing.assert_allclose(result.mesh.parts[0].base_color, [1, 0, 0, 1])  # Kd kept
        assert result.warning_reasons == ["missing_texture"]
        assert "'t.png'" in result.warnings[0] and "not found" in result.warnings[0]


def uv_cube_obj(header: str) -> str:
    lines = [
        line
        if not line.startswith("f ")
        else " ".join([line.split()[0]] + [f"{i}/1" for i in line.split()[1:]])
        for line in CUBE_OBJ.splitlines()
    ]
    return header + "vt 0 0\nvt 1 0\nvt 0 1\n" + "\n".join(lines) + "\n"


# the three public meshes that were refused: chair_model.obj -> model.mtl,
# beetle.obj -> VWBugMesh002.mtl, quadknot.obj -> ./quadknot.obj.mtl, none of them there
LOOSE_MTL = [
    ("chair_model.obj", "model.mtl"),
    ("beetle.obj", "VWBugMesh002.mtl"),
    ("quadknot.obj", "./quadknot.obj.mtl"),
]


@pytest.mark.parametrize(("name", "mtl"), LOOSE_MTL)
def test_missing_mtl_loads_with_the_default_material(src, name, mtl):
    path = write(src, name, uv_cube_obj(f"mtllib {mtl}\nusemtl Material_1\n"))
    result = ingest(path)
    assert result.mesh.num_faces == 12 and result.stats["textured"] is False
    assert len(result.mesh.parts) == 1
    np.testing.assert_array_equal(result.mesh.parts[0].base_color, [1, 1, 1, 1])  # white, like no mtllib
    assert result.warning_reasons == ["missing_material"]
    assert repr(mtl) in result.warnings[0] and "default material" in result.warnings[0]


def test_usemtl_of_an_undefined_material_gets_the_default_material(src):
    write(src, "m.mtl", "newmtl red\nKd 1 0 0\n")
    path = write(src, "a.obj", uv_cube_obj("mtllib m.mtl\nusemtl blue\n"))
    result = ingest(path)
    np.testing.assert_array_equal(result.mesh.parts[0].base_color, [1, 1, 1, 1])
    assert result.warning_reasons == ["unknown_material"] and "'blue'" in result.warnings[0]
    defined = ingest(write(src, "b.obj", uv_cube_obj("mtllib m.mtl\nusemtl red\n")))
    np.testing.assert_allclose(defined.mesh.parts[0].base_color, [1, 0, 0, 1])
    assert defined.warnings == []


def test_hostile_files_stay_failures_even_when_the_mtl_is_missing(tmp_path, src):
    nan = uv_cube_obj("mtllib gone.mtl\n").replace("v 1 1 1", "v nan 1 1")
    assert reason(write(src, "nan.obj", nan)) == "non_finite"
    (tmp_path / "secret.mtl").write_text("newmtl mat\nKd 1 0 0\n")
    outside = uv_cube_obj("mtllib ../secret.mtl\nusemtl mat\n")
    assert reason(write(src, "out.obj", outside), allow_missing_textures=True) == "path_outside_source"


def test_decompression_bomb_texture(src):
    (src / "t.png").write_bytes(bomb_png())
    assert reason(textured_obj(src)) == "image_too_large"
    assert reason(textured_obj(src), allow_missing_textures=True) == "image_too_large"


def test_corrupt_texture_fails_unless_allowed(src):
    (src / "t.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    assert reason(textured_obj(src)) == "bad_image"
    result = ingest(textured_obj(src), allow_missing_textures=True)
    assert result.stats["textured"] is False and result.warning_reasons == ["bad_image"]


def test_material_and_texture_paths_outside_source(tmp_path, src):
    secret = tmp_path / "secret.mtl"
    secret.write_text("newmtl mat\nKd 1 0 0\n")
    assert reason(textured_obj(src, mtl_name="../secret.mtl", mtl_path="unused.mtl")) == "path_outside_source"
    (tmp_path / "secret.png").write_bytes(small_png())
    assert reason(textured_obj(src, texture_name="../secret.png")) == "path_outside_source"
    assert reason(textured_obj(src, texture_name=str(tmp_path / "secret.png"))) == "path_outside_source"


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlinked_texture_leaving_source_is_refused(tmp_path, src):
    (tmp_path / "secret.png").write_bytes(small_png())
    os.symlink(tmp_path / "secret.png", src / "t.png")
    assert reason(textured_obj(src)) == "path_outside_source"


def test_root_bounds_the_lookup(tmp_path):
    """The root is the prepare SRC, so a texture one folder up from the OBJ but inside SRC is fine."""
    root = tmp_path / "src"
    (root / "sub").mkdir(parents=True)
    (root / "t.png").write_bytes(small_png())
    path = textured_obj(root / "sub", texture_name="../t.png")
    assert ingest(path, root=root).stats["textured"] is True
    assert reason(path, root=root / "sub") == "path_outside_source"


def test_vertex_and_face_colours_from_ply(src):
    header = "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
    vertex = header + "property uchar red\nproperty uchar green\nproperty uchar blue\n"
    vertex += "element face 1\nproperty list uchar int vertex_indices\nend_header\n"
    vertex += "0 0 0 255 0 0\n1 0 0 0 255 0\n0 1 0 0 0 255\n3 0 1 2\n"
    part = ingest(write(src, "a.ply", vertex)).mesh.parts[0]
    np.testing.assert_allclose(part.vertex_colors[:, :3], np.eye(3), atol=1e-6)
    face = header + "element face 1\nproperty list uchar int vertex_indices\n"
    face += "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    face += "0 0 0\n1 0 0\n0 1 0\n3 0 1 2 10 200 30\n"
    part = ingest(write(src, "b.ply", face)).mesh.parts[0]
    np.testing.assert_allclose(part.vertex_colors[:, :3], np.tile([10, 200, 30], (3, 1)) / 255, atol=1e-6)


def test_glb_with_nan_positions(src):
    from tests.data.hostile import glb, triangle_gltf

    positions = np.array([[0, 0, 0], [1, 0, 0], [np.nan, 1, 0]], np.float32)
    assert reason(write(src, "a.glb", glb(*triangle_gltf(positions=positions)))) == "non_finite"
    positions = np.array([[0, 0, 0], [1, 0, 0], [np.inf, 1, 0]], np.float32)
    assert reason(write(src, "b.glb", glb(*triangle_gltf(positions=positions)))) == "non_finite"


def textured_gltf(src, name="a.gltf", *, image_uri="t.png", texture_index=0, images=True):
    """A .gltf triangle with UVs and a material whose base colour texture is an external image."""
    import json

    from tests.data.hostile import triangle_gltf

    document, binary = triangle_gltf()
    uv = np.array([[0, 0], [1, 0], [0, 1]], np.float32).tobytes()
    document["bufferViews"].append({"buffer": 0, "byteOffset": len(binary), "byteLength": len(uv)})
    binary += uv
    document["accessors"].append({"bufferView": 2, "componentType": 5126, "count": 3, "type": "VEC2"})
    primitive = document["meshes"][0]["primitives"][0]
    primitive["attributes"]["TEXCOORD_0"] = 2
    primitive["material"] = 0
    factor = [1.0, 0.0, 0.0, 1.0]
    document["materials"] = [
        {"pbrMetallicRoughness": {"baseColorFactor": factor, "baseColorTexture": {"index": texture_index}}}
    ]
    document["textures"] = [{"source": 0}]
    if images:
        document["images"] = [{"uri": image_uri}]
    document["buffers"] = [{"uri": name + ".bin", "byteLength": len(binary)}]
    write(src, name + ".bin", binary)
    return write(src, name, json.dumps(document))


def test_gltf_texture_problems_are_warnings(src):
    (src / "t.png").write_bytes(small_png())
    assert ingest(textured_gltf(src)).stats["textured"] is True
    cases = {
        "missing_texture": textured_gltf(src, "b.gltf", image_uri="gone.png"),
        "unknown_texture": textured_gltf(src, "c.gltf", texture_index=4),
        "unknown_texture ": textured_gltf(src, "d.gltf", images=False),  # texture names images[0]
    }
    for expected, path in cases.items():
        result = ingest(path)
        assert result.mesh.num_faces == 1 and result.stats["textured"] is False
        np.testing.assert_allclose(result.mesh.parts[0].base_color, [1, 0, 0, 1])  # factor kept
        assert result.warning_reasons == [expected.strip()], path.name


def test_gltf_hostile_textures_stay_failures(tmp_path, src):
    (tmp_path / "secret.png").write_bytes(small_png())
    assert reason(textured_gltf(src, image_uri="../secret.png")) == "path_outside_source"
    (src / "bomb.png").write_bytes(bomb_png())
    assert reason(textured_gltf(src, "b.gltf", image_uri="bomb.png"), allow_missing_textures=True) == (
        "image_too_large"
    )
    (src / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    assert reason(textured_gltf(src, "c.gltf", image_uri="junk.png")) == "bad_image"
    allowed = ingest(src / "c.gltf", allow_missing_textures=True)
    assert allowed.warning_reasons == ["bad_image"]
    path = textured_gltf(src, "d.gltf")
    (src / "d.gltf.bin").unlink()
    assert reason(path) == "missing_buffer"  # no geometry without its buffer
