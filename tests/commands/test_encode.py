import json

import numpy as np
import pytest

from tests.stages.ss_helpers import stage1_artefacts
from voxforge.cli import main


@pytest.fixture(scope="session")
def artefacts(tmp_path_factory):
    return stage1_artefacts(tmp_path_factory.getbasetemp() / "stage1")


def test_encode_writes_latents_and_skips_them_on_rerun(artefacts, tmp_path, capsys):
    out = tmp_path / "latents"
    argv = [
        "encode",
        "--model",
        str(artefacts["vae_run"]),
        "--data",
        str(artefacts["prepared"]),
        "--out",
        str(out),
    ]
    assert main(argv + ["--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["encoded"] == first["total"] == 10 and first["kept"] == 0
    manifest = json.loads((out / "latents.json").read_text())
    assert manifest["kind"] == "ss" and manifest["latent_resolution"] == 4 and len(manifest["ids"]) == 10
    latent = np.load(out / "latents" / f"{manifest['ids'][0]}.npz")["latent"]
    assert latent.shape == (4, 4, 4, 4) and latent.dtype == np.float32
    assert np.all(np.asarray(manifest["std"]) > 0)
    # the same checkpoint: nothing to do; identical to the session's encode
    assert main(argv + ["--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["encoded"] == 0 and again["kept"] == 10
    reference = np.load(artefacts["latents"] / "latents" / f"{manifest['ids'][0]}.npz")["latent"]
    np.testing.assert_allclose(latent, reference, rtol=1e-5, atol=1e-6)


def test_encode_refuses_runs_without_an_encoder(artefacts, tmp_path, capsys):
    argv = [
        "encode",
        "--model",
        str(artefacts["flow_run"]),
        "--data",
        str(artefacts["prepared"]),
        "--out",
        str(tmp_path),
    ]
    assert main(argv) == 2
    assert "has no encoder" in capsys.readouterr().err
    assert main(["encode", "--model", str(tmp_path), "--data", ".", "--out", str(tmp_path)]) == 2
    assert "not a training run" in capsys.readouterr().err
