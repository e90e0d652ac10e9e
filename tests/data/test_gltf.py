"""The validating glTF reader on real and hostile files: every lie is caught with a reason."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from tests.data.hostile import glb, small_png, triangle_gltf
from voxforge.data.gltf import read_gltf
from voxforge.data.safety import Limits, SourceReader
from voxforge.representations.mesh import AssetError


def reason_of(data: bytes, **kwargs) -> str:
    with pytest.raises(AssetError) as err:
        read_gltf(data, **kwargs)
    return err.value.reason


def test_valid_triangle_loads():
    mesh = read_gltf(glb(*triangle_gltf()))
    assert mesh.num_faces == 1 and mesh.num_vertices == 3


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty_file"),
        (b"glTF\x02\x00\x00\x00", "corrupt_file"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not_a_mesh"),
        (b"glTF" + b"\x01\x00\x00\x00" + b"\x00" * 20, "unsupported"),
    ],
)
def test_bad_containers(data, reason):
    assert reason_of(data) == reason


def test_lying_total_length_is_caught():
    assert reason_of(glb(*triangle_gltf(), length_delta=100)) == "corrupt_file"
    assert reason_of(glb(*triangle_gltf())[:-8]) == "corrupt_file"  # truncated


def test_lying_chunk_length_is_caught():
    assert reason_of(glb(*triangle_gltf(), json_delta=10_000)) == "corrupt_file"


def test_accessor_larger_than_its_buffer_view():
    with pytest.raises(AssetError, match="needs .* bytes") as err:
        read_gltf(glb(*triangle_gltf(count=1_000_000)))
    assert err.value.reason == "corrupt_file"


def test_buffer_view_past_buffer_end():
    document, binary = triangle_gltf()
    document["bufferViews"][1]["byteLength"] = 10_000
    assert reason_of(glb(document, binary)) == "corrupt_file"


def test_out_of_range_indices():
    with pytest.raises(AssetError) as err:
        read_gltf(glb(*triangle_gltf(indices=np.array([0, 1, 7]))))
    assert err.value.reason == "bad_indices"


def test_dangling_json_references():
    document, binary = triangle_gltf()
    document["nodes"][0]["mesh"] = 5
    assert reason_of(glb(document, binary)) == "corrupt_file"
    document, binary = triangle_gltf()
    document["accessors"][0]["componentType"] = 1234
    assert reason_of(glb(document, binary)) == "corrupt_file"
    document, binary = triangle_gltf()
    document["accessors"][0]["count"] = "3"
    assert reason_of(glb(document, binary)) == "corrupt_file"


def test_node_cycle_is_rejected():
    document, binary = triangle_gltf()
    document["nodes"] = [{"mesh": 0, "children": [1]}, {"children": [0]}]
    assert reason_of(glb(document, binary)) == "corrupt_file"


def test_exponential_instancing_is_rejected():
    document, binary = triangle_gltf()
    # 40 levels, each node lists the next one twice: 2^40 instances if walked naively
    document["nodes"] = [{"children": [i + 1, i + 1]} for i in range(40)] + [{"mesh": 0}]
    assert reason_of(glb(document, binary)) == "corrupt_file"


def test_face_limit_stops_early():
    assert reason_of(glb(*triangle_gltf()), limits=Limits(max_faces=0)) == "too_many_faces"


def test_points_only_is_a_point_cloud():
    positions = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    document, binary = triangle_gltf(positions=positions, indices=np.arange(10), mode=0)
    assert reason_of(glb(document, binary)) == "point_cloud"


def test_compressed_geometry_is_unsupported():
    document, binary = triangle_gltf(extra={"extensionsRequired": ["KHR_draco_mesh_compression"]})
    with pytest.raises(AssetError, match="Draco") as err:
        read_gltf(glb(document, binary))
    assert err.value.reason == "unsupported"


def test_sparse_accessor_is_unsupported():
    document, binary = triangle_gltf()
    document["accessors"][0]["sparse"] = {"count": 1}
    assert reason_of(glb(document, binary)) == "unsupported"


def test_node_transforms_are_applied_and_mirrors_keep_winding():
    document, binary = triangle_gltf()
    document["nodes"] = [{"children": [1], "translation": [10, 0, 0]}, {"mesh": 0, "scale": [-1, 2, 1]}]
    mesh = read_gltf(glb(document, binary))
    np.testing.assert_allclose(mesh.parts[0].vertices, [[10, 0, 0], [9, 0, 0], [10, 2, 0]])
    # the mirror flips the normal; reversed winding restores the original +z facing
    v = mesh.parts[0].vertices[mesh.parts[0].faces[0]]
    assert np.cross(v[1] - v[0], v[2] - v[0])[2] > 0


def test_external_buffer_outside_root_is_refused(tmp_path):
    (tmp_path / "secret.bin").write_bytes(b"\x00" * 64)
    src = tmp_path / "src"
    src.mkdir()
    document, binary = triangle_gltf()
    document["buffers"] = [{"uri": "../secret.bin", "byteLength": len(binary)}]
    path = src / "m.gltf"
    reader = SourceReader(src, Limits())
    with pytest.raises(AssetError) as err:
        read_gltf(b'{"asset":{"version":"2.0"}}', path=path, reader=reader)  # sanity: parses
    assert err.value.reason == "no_geometry"
    import json

    data = json.dumps(document).encode()
    assert reason_of(data, path=path, reader=reader) == "path_outside_source"
    document["buffers"] = [{"uri": "/etc/passwd", "byteLength": 4}]
    assert reason_of(json.dumps(document).encode(), path=path, reader=reader) == "path_outside_source"
    document["buffers"] = [{"uri": "missing.bin", "byteLength": 4}]
    assert reason_of(json.dumps(document).encode(), path=path, reader=reader) == "missing_buffer"


def test_gltf_with_data_uri_and_texture():
    document, binary = triangle_gltf()
    png = small_png()
    uv = np.array([[0, 0], [1, 0], [0, 1]], np.float32).tobytes()
    binary = binary + uv + png
    base = len(binary) - len(png) - len(uv)
    document["bufferViews"] += [
        {"buffer": 0, "byteOffset": base, "byteLength": len(uv)},
        {"buffer": 0, "byteOffset": base + len(uv), "byteLength": len(png)},
    ]
    document["accessors"].append({"bufferView": 2, "componentType": 5126, "count": 3, "type": "VEC2"})
    document["meshes"][0]["primitives"][0]["attributes"]["TEXCOORD_0"] = 2
    document["meshes"][0]["primitives"][0]["material"] = 0
    document["materials"] = [{"pbrMetallicRoughness": {"baseColorTexture": {"index": 0}}}]
    document["textures"] = [{"source": 0}]
    document["images"] = [{"bufferView": 3, "mimeType": "image/png"}]
    document["buffers"] = [
        {
            "byteLength": len(binary),
            "uri": "data:application/octet-stream;base64," + base64.b64encode(binary).decode(),
        }
    ]
    import json

    mesh = read_gltf(json.dumps(document).encode())
    part = mesh.parts[0]
    assert part.texture.shape == (8, 8, 4)
    np.testing.assert_array_equal(part.texture[0, 0], [0, 0, 255, 255])
    np.testing.assert_array_equal(part.uv[2], [0, 1])  # glTF convention kept as is


def test_base_color_factor_is_converted_to_srgb():
    document, binary = triangle_gltf()
    document["meshes"][0]["primitives"][0]["material"] = 0
    document["materials"] = [{"pbrMetallicRoughness": {"baseColorFactor": [0.214, 1.0, 0.0, 0.5]}}]
    mesh = read_gltf(glb(document, binary))
    np.testing.assert_allclose(mesh.parts[0].base_color, [0.5, 1.0, 0.0, 0.5], atol=2e-3)


def test_real_nested_glb_matches_trimesh(shared_meshes):
    import trimesh

    path = shared_meshes / "textured" / "nested.glb"
    mesh = read_gltf(path.read_bytes())
    reference = trimesh.load_scene(path).to_mesh()
    vertices, faces = mesh.merged()
    assert faces.shape == reference.faces.shape
    np.testing.assert_allclose(np.sort(vertices, axis=0), np.sort(reference.vertices, axis=0), atol=1e-5)


def test_khr_texture_transform_is_baked_into_uvs():
    document, binary = triangle_gltf()
    uv = np.array([[0, 0], [1, 0], [0, 1]], np.float32).tobytes()
    png = small_png()
    binary = binary + uv + png
    base = len(binary) - len(png) - len(uv)
    document["bufferViews"] += [
        {"buffer": 0, "byteOffset": base, "byteLength": len(uv)},
        {"buffer": 0, "byteOffset": base + len(uv), "byteLength": len(png)},
    ]
    document["buffers"][0]["byteLength"] = len(binary)
    document["accessors"].append({"bufferView": 2, "componentType": 5126, "count": 3, "type": "VEC2"})
    primitive = document["meshes"][0]["primitives"][0]
    primitive["attributes"]["TEXCOORD_0"] = 2
    primitive["material"] = 0
    transform = {"offset": [0.5, 0.25], "scale": [2, 3], "rotation": 0.0}
    texture_info = {"index": 0, "extensions": {"KHR_texture_transform": transform}}
    document["materials"] = [{"pbrMetallicRoughness": {"baseColorTexture": texture_info}}]
    document["textures"] = [{"source": 0}]
    document["images"] = [{"bufferView": 3, "mimeType": "image/png"}]
    part = read_gltf(glb(document, binary)).parts[0]
    np.testing.assert_allclose(part.uv, [[0.5, 0.25], [2.5, 0.25], [0.5, 3.25]])
    transform["rotation"] = np.pi / 2  # the spec's matrix turns +u into +v
    part = read_gltf(glb(document, binary)).parts[0]
    np.testing.assert_allclose(part.uv[1], [0.5, 0.25 + 2.0], atol=1e-6)


def test_embedded_decompression_bomb_and_broken_image():
    from tests.data.hostile import bomb_png

    for image, expected in ((bomb_png(), "image_too_large"), (b"\x89PNG\r\n\x1a\nnot really", "bad_image")):
        document, binary = triangle_gltf()
        uv = np.zeros((3, 2), np.float32).tobytes()
        binary = binary + uv + image
        base = len(binary) - len(image) - len(uv)
        document["bufferViews"] += [
            {"buffer": 0, "byteOffset": base, "byteLength": len(uv)},
            {"buffer": 0, "byteOffset": base + len(uv), "byteLength": len(image)},
        ]
        document["buffers"][0]["byteLength"] = len(binary)
        document["accessors"].append({"bufferView": 2, "componentType": 5126, "count": 3, "type": "VEC2"})
        document["meshes"][0]["primitives"][0]["attributes"]["TEXCOORD_0"] = 2
        document["meshes"][0]["primitives"][0]["material"] = 0
        document["materials"] = [{"pbrMetallicRoughness": {"baseColorTexture": {"index": 0}}}]
        document["textures"] = [{"source": 0}]
        document["images"] = [{"bufferView": 3, "mimeType": "image/png"}]
        assert reason_of(glb(document, binary)) == expected


def test_large_texture_is_downscaled():
    import io

    from PIL import Image

    from voxforge.data.safety import decode_image

    buffer = io.BytesIO()
    Image.new("RGB", (300, 100), (10, 20, 30)).save(buffer, format="PNG")
    texture = decode_image(buffer.getvalue(), "big.png", Limits(max_texture_size=60))
    assert texture.shape == (20, 60, 4)
    np.testing.assert_array_equal(texture[5, 5], [10, 20, 30, 255])


def test_missing_or_unknown_textures_fail_without_a_warnings_list():
    document, binary = triangle_gltf()
    document["meshes"][0]["primitives"][0]["material"] = 0
    document["materials"] = [{"pbrMetallicRoughness": {"baseColorTexture": {"index": 2}}}]
    assert reason_of(glb(document, binary)) == "unknown_texture"
    problems: list = []
    mesh = read_gltf(glb(document, binary), warnings=problems)
    assert mesh.parts[0].texture is None
    assert [reason for reason, _ in problems] == ["unknown_texture"]
