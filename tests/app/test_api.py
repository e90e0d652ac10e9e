"""`voxforge app`'s HTTP API through gradio_client, against the app in a subprocess (conftest):
a .glb that trimesh opens, bad uploads and out-of-range parameters answered with messages
(never tracebacks), the text → image and runs endpoints, and nothing written outside --out."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from tests.app.bad_files import object_on_white, png_bomb, text_named_png

pytestmark = pytest.mark.app


def _gradio_client():  # imported by the tests, not at collection: the default run deselects them
    return pytest.importorskip("gradio_client")


def _files(*paths: Path) -> list:
    return [_gradio_client().handle_file(str(p)) for p in paths]


#: (model, seed, structure steps, structure guidance, SLat steps, SLat guidance, mode) after the images
SETTINGS = ("tiny3d", 0, 2, 3.0, 2, 3.0, "stochastic")


@pytest.fixture(scope="module")
def client(app_server, tmp_path_factory):
    return _gradio_client().Client(
        app_server.url, verbose=False, download_files=str(tmp_path_factory.mktemp("client_downloads"))
    )


def _images_to_3d(client, *paths: Path, settings=SETTINGS):
    return client.predict(_files(*paths), *settings, api_name="/image_to_3d")


def _error(client, *args, api_name: str) -> str:
    with pytest.raises(_gradio_client().exceptions.AppError) as info:
        client.predict(*args, api_name=api_name)
    message = str(info.value)
    assert "Traceback" not in message and 'File "' not in message
    return message


def test_the_api_lists_every_named_endpoint(client):
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    expected = {"/preprocess", "/image_to_3d", "/text_to_image", "/text_to_video", "/mesh_gan"}
    assert expected | {"/runs", "/run_detail"} <= set(endpoints)
    names = [p["parameter_name"] for p in endpoints["/image_to_3d"]["parameters"]]
    assert names == ["files", "model", "seed", "steps", "cfg", "slat_steps", "slat_cfg", "mode"]
    names = [p["parameter_name"] for p in endpoints["/text_to_image"]["parameters"]]
    assert names == [
        "prompt",
        "negative",
        "width",
        "height",
        "steps",
        "cfg",
        "seed",
        "sampler",
        "model",
        "lora",
    ]


def test_image_to_3d_returns_a_glb_that_trimesh_opens(client, app_server, tmp_path):
    image = object_on_white(tmp_path / "chair.png")
    processed, video, glb, downloads, record = _images_to_3d(client, image)
    assert Path(glb).suffix == ".glb"
    trimesh = pytest.importorskip("trimesh")
    mesh = trimesh.load(glb, force="mesh")
    assert len(mesh.vertices) > 0 and len(mesh.faces) > 0
    assert sorted(Path(p).suffix for p in downloads) == [".glb", ".mp4", ".ply"]
    assert Path(video).suffix == ".mp4" and Path(video).stat().st_size > 0
    assert len(processed) == 1
    assert record["images"] == ["chair.png"] and record["voxels"] > 0 and record["gaussians"] > 0
    assert record["structure_sampler"]["steps"] == 2
    # the job folder holds what was sent, and generation.json says the same
    jobs = sorted((app_server.out / "image_to_3d").iterdir())
    assert any(json.loads((job / "generation.json").read_text()) == record for job in jobs)


def test_two_views_in_multidiffusion_mode(client, tmp_path):
    front, side = object_on_white(tmp_path / "front.png"), object_on_white(tmp_path / "side.png", side=80)
    settings = (*SETTINGS[:-1], "multidiffusion")
    processed, *_, record = _images_to_3d(client, front, side, settings=settings)
    assert len(processed) == 2 and record["mode"] == "multidiffusion"
    assert record["images"] == ["front.png", "side.png"]


def test_preprocess_shows_the_background_removed(client, tmp_path):
    from PIL import Image

    gallery = client.predict(
        _files(object_on_white(tmp_path / "a.png")),
        "tiny3d",
        api_name="/preprocess",
    )
    pixels = np.asarray(Image.open(gallery[0]["image"]).convert("RGB")).astype(int)
    # premultiplied on black: the white border is gone, the red square stays
    assert pixels[0, 0].max() < 30 and (pixels[..., 0] > 150).mean() > 0.3


def test_bad_uploads_get_messages(client, tmp_path):
    fake = text_named_png(tmp_path / "fake.png")
    message = _error(client, _files(fake), *SETTINGS, api_name="/image_to_3d")
    assert "fake.png: not an image" in message
    bomb = png_bomb(tmp_path / "bomb.png")
    message = _error(client, _files(bomb), *SETTINGS, api_name="/image_to_3d")
    assert "bomb.png: the image declares more than" in message and "decompression bomb" in message
    assert str(tmp_path) not in message


def test_out_of_range_parameters_get_messages(client, tmp_path):
    image = _files(object_on_white(tmp_path / "a.png"))
    steps_zero = ("tiny3d", 0, 0, 3.0, 2, 3.0, "stochastic")
    assert "structure steps must be between 1 and 200, got 0" in _error(
        client, image, *steps_zero, api_name="/image_to_3d"
    )
    too_many = ("tiny3d", 0, 2, 3.0, 5000, 3.0, "stochastic")
    assert "SLat steps must be between 1 and 200, got 5000" in _error(
        client, image, *too_many, api_name="/image_to_3d"
    )
    bad_mode = ("tiny3d", 0, 2, 3.0, 2, 3.0, "average")
    assert "average" in _error(client, image, *bad_mode, api_name="/image_to_3d")
    bad_seed = ("tiny3d", -4, 2, 3.0, 2, 3.0, "stochastic")
    assert "seed must be between 0 and" in _error(client, image, *bad_seed, api_name="/image_to_3d")


def test_text_to_image_returns_a_png_of_the_asked_size(client):
    from PIL import Image

    image, download, record = client.predict(
        "a red circle", "", 64, 32, 2, 4.5, 3, "dpm", "sana", "none", api_name="/text_to_image"
    )
    assert Image.open(image).size == (64, 32) and Path(download).suffix == ".png"
    assert record["size"] == [64, 32] and record["seed"] == 3 and record["prompt"] == "a red circle"
    message = _error(
        client, "a red circle", "", 30, 32, 2, 4.5, 3, "dpm", "sana", "none", api_name="/text_to_image"
    )
    assert "width" in message  # 30 is not a multiple of the model's factor (4)
    message = _error(client, "x", "", 64, 32, 2, 4.5, 3, "dpm", "sana", "mystery", api_name="/text_to_image")
    assert "mystery" in message and "choices" in message  # gradio's own check of a dropdown value


def test_text_and_image_to_video_return_the_asked_frames(client, tmp_path):
    av = pytest.importorskip("av")
    mp4, gif, downloads, record = client.predict(
        "a red circle moving left",
        "",
        None,
        16,
        32,
        5,
        2,
        5.0,
        0,
        "euler",
        "video_flow",
        api_name="/text_to_video",
    )
    with av.open(mp4) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]
    assert len(frames) == 5 and frames[0].shape == (32, 16, 3)
    assert sorted(Path(p).suffix for p in downloads) == [".gif", ".mp4"] and Path(gif).suffix == ".gif"
    assert record["frames"] == 5 and record["size"] == [16, 32] and record["first_frame"] is None
    first = _files(object_on_white(tmp_path / "start.png"))[0]
    *_, record = client.predict(
        "a red circle", "", first, 16, 16, 5, 2, 5.0, 0, "euler", "video_flow", api_name="/text_to_video"
    )
    assert record["first_frame"] == "start.png"
    message = _error(
        client, "x", "", None, 16, 16, 8, 2, 5.0, 0, "euler", "video_flow", api_name="/text_to_video"
    )
    assert "frames 8: the ltx autoencoder takes 1 + k*2 frames" in message
    fake = _files(text_named_png(tmp_path / "fake.png"))[0]
    message = _error(
        client, "x", "", fake, 16, 16, 5, 2, 5.0, 0, "euler", "video_flow", api_name="/text_to_video"
    )
    assert "fake.png: not an image" in message


def test_mesh_gan_samples_a_coloured_glb_per_seed(client):
    trimesh = pytest.importorskip("trimesh")
    glb, download, record = client.predict(3, 0.7, "get3d", api_name="/mesh_gan")
    mesh = trimesh.load(glb, force="mesh")
    assert len(mesh.faces) == record["faces"] > 0 and mesh.visual.kind == "vertex"
    again = client.predict(3, 0.7, "get3d", api_name="/mesh_gan")[2]
    assert (again["vertices"], again["faces"]) == (record["vertices"], record["faces"])
    assert "truncation psi must be between 0 and 1, got 1.5" in _error(
        client, 3, 1.5, "get3d", api_name="/mesh_gan"
    )


def test_runs_lists_the_runs_and_plots_their_curves(client):
    rows, records, _ = client.predict(_runs_folder(client), None, api_name="/runs")
    names = [row[0] for row in rows["data"]]
    assert names == ["slat_flow", "slat_vae", "ss_flow", "ss_vae"]
    assert {r["stage"] for r in records} == {"ss_vae", "ss_flow", "slat_vae", "slat_flow"}
    plot, samples, record = client.predict(_runs_folder(client), "ss_vae", api_name="/run_detail")
    assert record["name"] == "ss_vae" and record["step"] == 5 and record["last_losses"]["loss"] == 0.2
    if plot is not None:  # matplotlib installed (the app extra has it)
        assert Path(plot).suffix == ".png" and Path(plot).stat().st_size > 0
    assert "run must be one of" in _error(client, _runs_folder(client), "../../etc", api_name="/run_detail")


def _runs_folder(client) -> str:
    """The runs folder the app watches, as its dropdown names it."""
    config = client.config
    for component in config["components"]:
        props = component.get("props", {})
        if props.get("label") == "Runs folder":
            return props["choices"][0][0]
    raise AssertionError("no runs folder dropdown in the page")


def test_nothing_is_written_outside_the_output_folder(client, app_server, tiny_model, tmp_path):
    _images_to_3d(client, object_on_white(tmp_path / "again.png"))
    assert sorted(p.name for p in app_server.cwd.iterdir()) == ["out"]  # the server's working directory
    assert {p.name for p in app_server.out.iterdir()} <= {
        ".gradio",
        "image_to_3d",
        "text_to_image",
        "text_to_video",
        "mesh_gan",
        "runs",
    }
    changed = [p for p in tiny_model.rglob("*") if p.stat().st_mtime > app_server.started]
    assert not changed  # the model folder (and its runs) only read


def test_it_listens_on_127_0_0_1_only(app_server):
    tcp = Path("/proc/net/tcp")
    if not tcp.is_file():
        pytest.skip("no /proc/net/tcp to read the listening address from")
    port = int(app_server.url.rsplit(":", 1)[1].strip("/"))
    listening = []
    for line in tcp.read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, local_port = local.split(":")
        if state == "0A" and int(local_port, 16) == port:  # 0A: LISTEN
            listening.append(address)
    assert listening == ["0100007F"]  # 127.0.0.1, little-endian hex


def test_progress_names_the_stage_and_the_step(client, tmp_path):
    settings = ("tiny3d", 0, 20, 3.0, 100, 3.0, "stochastic")  # 100 SLat steps: seconds to watch
    job = client.submit(_files(object_on_white(tmp_path / "a.png")), *settings, api_name="/image_to_3d")
    seen = set()
    while not job.done():
        seen |= {(p.desc, p.index, p.length) for p in (job.status().progress_data or [])}
        time.sleep(0.05)
    job.result()
    slat = [(desc, index, length) for desc, index, length in seen if desc.startswith("stage 2/2: SLat flow")]
    assert slat, f"no SLat progress among {sorted(seen, key=str)}"
    assert all(length == 100 and desc.endswith(f"step {index}/100") for desc, index, length in slat)
