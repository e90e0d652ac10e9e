"""TRELLIS's released models in the image → 3D tab.

The default tests check, without gradio and without loading a model, that a TRELLIS
download (by its pipeline.json's content) and an imported folder belong to the tab, and that
a TRELLIS request's guidance is checked as `voxforge generate` checks it. The `app` tests
serve the tiny TRELLIS-layout folder of ../shared/golden/trellis (random weights, real
shapes) and call `/image_to_3d` through gradio_client.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.app.conftest import REPO, serve_app

FIXTURES = REPO / ".." / "shared" / "golden" / "trellis"


def _trellis_dir() -> Path:
    if not (FIXTURES / "pipeline.json").is_file():
        pytest.skip(f"{FIXTURES} not present")
    return FIXTURES.resolve()


def _disc(path: Path) -> Path:
    """An RGBA disc on a transparent background (TRELLIS crops around the alpha)."""
    yy, xx = np.mgrid[:120, :150]
    alpha = (((yy - 60) ** 2 + (xx - 70) ** 2) < 45**2).astype(np.uint8) * 255
    rgb = np.stack([xx * 255 // 150, yy * 255 // 120, np.full_like(xx, 90)], -1).astype(np.uint8)
    Image.fromarray(np.dstack([rgb, alpha])).save(path)
    return path


def test_trellis_folders_belong_to_the_image_to_3d_tab(tmp_path):
    from voxforge.app.image_to_3d import FAMILY, discover, is_model_folder
    from voxforge.app.image_to_3d_trellis import is_trellis_model
    from voxforge.trellis.importer import FORMAT, MODEL_FILE

    trellis = _trellis_dir()
    assert is_model_folder(trellis) and is_trellis_model(trellis) and FAMILY.claims(trellis)
    models = tmp_path / "models"
    download = models / "TRELLIS-image-large"
    download.mkdir(parents=True)
    (download / "pipeline.json").write_text((trellis / "pipeline.json").read_text())
    imported = models / "imported"
    imported.mkdir()
    (imported / MODEL_FILE).write_text(json.dumps({"format": FORMAT}))
    own = models / "voxforge_output"  # `voxforge pipeline run` writes a pipeline.json of its own
    own.mkdir()
    (own / "pipeline.json").write_text(json.dumps({"stages": ["ss_vae"], "args": "none"}))
    (models / "empty").mkdir()
    assert discover(models) == [download, imported]  # sorted by name
    assert is_trellis_model(imported) and not is_model_folder(own) and not is_model_folder(models / "empty")


def test_a_trellis_request_checks_its_guidance_before_loading(tmp_path):
    from voxforge.app.image_to_3d import ImageTo3DService
    from voxforge.app.registry import AppContext
    from voxforge.app.requests import JobFolders
    from voxforge.errors import UserError

    service = ImageTo3DService([_trellis_dir()], AppContext(jobs=JobFolders(tmp_path / "out")))
    assert service.labels == ["trellis"] and service.is_trellis("trellis")
    with pytest.raises(UserError, match=r"structure guidance must be >= 1 for TRELLIS models"):
        service.generate([str(_disc(tmp_path / "a.png"))], cfg=0.5)
    assert not service._pipelines  # nothing loaded for a bad request


@pytest.mark.app
def test_trellis_and_voxforge_models_share_the_image_to_3d_tab(tiny_model):
    pytest.importorskip("gradio")
    from voxforge.app.server import assign_models

    trellis = _trellis_dir()
    found = assign_models([trellis, tiny_model], [])
    assert found["image_to_3d"] == [trellis, tiny_model]
    assert not any(found[name] for name in found if name != "image_to_3d")


# ------------------------------------------------------------------------------ the served app


@pytest.fixture(scope="module")
def trellis_server(tmp_path_factory):
    pytest.importorskip("gradio")
    model = _trellis_dir()
    cwd = tmp_path_factory.mktemp("trellis_app")
    log = cwd / "server.log"
    command = ["--model", str(model), "--out", "out", "--frames", "2", "--size", "32", "--device", "cpu"]
    command += ["--texture-size", "64", "--bake-views", "2"]
    with serve_app(command, cwd, log) as url:
        yield url, cwd / "out"


@pytest.fixture(scope="module")
def trellis_client(trellis_server, tmp_path_factory):
    client_module = pytest.importorskip("gradio_client")
    return client_module.Client(
        trellis_server[0], verbose=False, download_files=str(tmp_path_factory.mktemp("trellis_downloads"))
    )


@pytest.mark.app
def test_trellis_model_returns_a_textured_glb_with_progress(trellis_client, trellis_server, tmp_path):
    import trimesh
    from gradio_client import handle_file

    from voxforge.representations.gaussians import load_ply

    # the fields start at the folder's pipeline.json settings (guidance as w = cfg_strength + 1)
    assert trellis_client.predict("trellis", api_name="/model_defaults") == (25, 8.5, 25, 4.0)
    settings = ("trellis", 5, 1, 8.5, 2, 2.0, "stochastic")
    job = trellis_client.submit(
        [handle_file(str(_disc(tmp_path / "disc.png")))], *settings, api_name="/image_to_3d"
    )
    seen = set()
    while not job.done():
        seen |= {(p.desc, p.index, p.length) for p in (job.status().progress_data or [])}
        time.sleep(0.05)
    processed, mp4, glb, files, record = job.result()
    assert record["kind"] == "trellis" and record["glb"] == "flexicubes_textured"
    assert record["structure_sampler"]["steps"] == 1 and record["structure_sampler"]["cfg_strength"] == 7.5
    assert record["slat_sampler"]["steps"] == 2 and record["slat_sampler"]["cfg_strength"] == 1.0
    assert record["voxels"] > 0 and record["gaussians"] > 0 and record["resolution"] == 64
    assert {Path(f).suffix for f in files} == {".glb", ".ply", ".mp4"}
    scene = trimesh.load(glb)
    (mesh,) = scene.geometry.values()
    assert len(mesh.faces) > 0 and mesh.visual.kind == "texture"
    ply = next(Path(f) for f in files if f.endswith(".ply"))
    assert 0 < len(load_ply(ply)) <= record["gaussians"]  # the .ply leaves out non-finite splats
    assert np.asarray(Image.open(processed[0]["image"])).shape[:2] == (518, 518)
    slat = [s for s in seen if s[0].startswith("stage 2/2: SLat flow")]
    assert slat and all(length == 2 and desc.endswith(f"step {index}/2") for desc, index, length in slat)
    (folder,) = (trellis_server[1] / "image_to_3d").iterdir()
    assert json.loads((folder / "generation.json").read_text()) == record
    print("trellis app request seconds:", record["seconds"])


@pytest.mark.app
def test_trellis_model_answers_bad_requests_with_messages(trellis_client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    images = [handle_file(str(_disc(tmp_path / f"{k}.png"))) for k in range(2)]
    for uploads, settings, expected in (
        (images, ("trellis", 0, 1, 8.5, 1, 4.0, "stochastic"), "TRELLIS models take one image per request"),
        (images[:1], ("trellis", 0, 1, 0.5, 1, 4.0, "stochastic"), "must be >= 1 for TRELLIS models"),
    ):
        with pytest.raises(AppError, match=expected) as info:
            trellis_client.predict(uploads, *settings, api_name="/image_to_3d")
        assert "Traceback" not in str(info.value)
