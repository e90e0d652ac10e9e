from __future__ import annotations

import numpy as np
import pytest
import torch

from voxforge.errors import UserError
from voxforge.representations.gaussians import (
    SH_C0,
    GaussianPlyError,
    Gaussians,
    load_ply,
    ply_property_names,
    rgb_to_sh,
)


def make(n: int = 7, degree: int = 0, seed: int = 0) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    return Gaussians(
        means=torch.randn(n, 3, generator=gen),
        log_scales=torch.randn(n, 3, generator=gen) - 3,
        quats=torch.randn(n, 4, generator=gen),
        opacity_logits=torch.randn(n, generator=gen),
        sh_dc=torch.randn(n, 3, generator=gen),
        sh_rest=torch.randn(n, (degree + 1) ** 2 - 1, 3, generator=gen) if degree else None,
    )


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_ply_round_trip_is_exact(tmp_path, degree):
    g = make(degree=degree)
    path = g.save_ply(tmp_path / "splat.ply")
    back = load_ply(path)
    assert back.sh_degree == degree
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest"):
        a, b = getattr(g, name), getattr(back, name)
        assert (a is None and b is None) or torch.equal(a, b), name


def test_header_follows_the_inria_field_order(tmp_path):
    path = make(n=3, degree=1).save_ply(tmp_path / "a.ply")
    raw = path.read_bytes()
    header = raw[: raw.index(b"end_header\n")].decode().splitlines()
    assert header[:3] == ["ply", "format binary_little_endian 1.0", "element vertex 3"]
    names = [line.split()[2] for line in header[3:]]
    assert all(line.startswith("property float ") for line in header[3:])
    expected = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    expected += [f"f_rest_{i}" for i in range(9)] + ["opacity", "scale_0", "scale_1", "scale_2"]
    expected += ["rot_0", "rot_1", "rot_2", "rot_3"]
    assert names == expected == ply_property_names(1)
    assert len(raw) == raw.index(b"end_header\n") + len(b"end_header\n") + 3 * len(names) * 4


def test_f_rest_is_channel_major_like_the_inria_writer(tmp_path):
    g = make(n=2, degree=1)
    path = g.save_ply(tmp_path / "a.ply")
    raw = path.read_bytes()
    data = np.frombuffer(raw[raw.index(b"end_header\n") + 11 :], dtype="<f4").reshape(2, -1)
    f_rest = data[:, 9:18]
    # f_rest_0..2 are the red channel's three degree-1 coefficients
    assert np.allclose(f_rest[:, 0:3], g.sh_rest[:, :, 0].numpy())
    assert np.allclose(f_rest[:, 3:6], g.sh_rest[:, :, 1].numpy())


def test_loader_accepts_reordered_double_properties(tmp_path):
    g = make(n=4)
    names = ply_property_names(0)
    order = list(reversed(names))
    cols = {
        "x": g.means[:, 0],
        "y": g.means[:, 1],
        "z": g.means[:, 2],
        "opacity": g.opacity_logits,
        **{f"f_dc_{i}": g.sh_dc[:, i] for i in range(3)},
        **{f"scale_{i}": g.log_scales[:, i] for i in range(3)},
        **{f"rot_{i}": g.quats[:, i] for i in range(4)},
        "nx": torch.zeros(4),
        "ny": torch.zeros(4),
        "nz": torch.zeros(4),
    }
    table = np.zeros(4, dtype=[(n, "<f8") for n in order])
    for n in order:
        table[n] = cols[n].double().numpy()
    header = "ply\nformat binary_little_endian 1.0\ncomment made by a test\nelement vertex 4\n"
    header += "".join(f"property double {n}\n" for n in order) + "end_header\n"
    path = tmp_path / "b.ply"
    path.write_bytes(header.encode() + table.tobytes())
    back = load_ply(path)
    assert torch.allclose(back.means, g.means) and torch.allclose(back.quats, g.quats)


@pytest.mark.parametrize(
    "content,match",
    [
        (b"not a ply", "not a PLY"),
        (
            b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n1\n",
            "binary_little_endian",
        ),
        (
            b"ply\nformat binary_little_endian 1.0\nelement vertex 1000\nproperty float x\nend_header\n",
            "promises 1000",
        ),
        (
            b"ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty float x\nend_header\n\0\0\0\0",
            "missing",
        ),
    ],
)
def test_loader_errors_name_the_file_and_problem(tmp_path, content, match):
    path = tmp_path / "bad.ply"
    path.write_bytes(content)
    with pytest.raises(GaussianPlyError, match=match) as info:
        load_ply(path)
    assert "bad.ply" in str(info.value) and isinstance(info.value, UserError)


def test_activations_and_helpers():
    g = make(n=5, degree=2)
    assert torch.allclose(g.scales, g.log_scales.exp())
    assert torch.allclose(g.opacities, torch.sigmoid(g.opacity_logits))
    assert torch.allclose(g.rotations.norm(dim=-1), torch.ones(5))
    assert torch.allclose(g.rgb, g.sh_dc * SH_C0 + 0.5)
    assert g.sh_coeffs.shape == (5, 9, 3) and len(g) == 5
    rgb = torch.rand(5, 3)
    act = Gaussians.from_activated(g.means, g.scales, g.quats, torch.full((5,), 0.3), rgb)
    assert torch.allclose(act.rgb, rgb, atol=1e-6) and torch.allclose(act.opacities, torch.full((5,), 0.3))
    assert torch.allclose(rgb_to_sh(act.rgb), act.sh_dc, atol=1e-5)
    both = Gaussians.cat([g, g[:2]])
    assert len(both) == 7 and both.sh_rest.shape == (7, 8, 3)
    with pytest.raises(ValueError, match="same SH degree"):
        Gaussians.cat([g, make(n=1)])
    with pytest.raises(ValueError, match="quats"):
        Gaussians(g.means, g.log_scales, g.quats[:, :3], g.opacity_logits, g.sh_dc)
    with pytest.raises(ValueError, match="sh_rest"):
        Gaussians(g.means, g.log_scales, g.quats, g.opacity_logits, g.sh_dc, torch.zeros(5, 4, 3))
