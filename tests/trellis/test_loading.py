"""Loading a TRELLIS folder: strict, with errors that name the file and the keys."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from voxforge.errors import UserError
from voxforge.trellis.importer import import_trellis, load_imported, load_model_folder
from voxforge.trellis.loading import TrellisLoadError, load_checkpoint, load_trellis, read_pipeline

FIXTURES = Path(__file__).resolve().parents[2] / ".." / "shared" / "golden" / "trellis"
SS_DEC = "ss_dec_conv3d_16l8_fp16"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    if not (FIXTURES / "pipeline.json").is_file():
        pytest.skip(f"{FIXTURES} not present")
    dst = tmp_path / "trellis"
    shutil.copytree(FIXTURES, dst, ignore=shutil.ignore_patterns("golden"))
    return dst


def _edit_weights(path: Path, edit) -> None:
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path))


def test_reads_pipeline_settings(folder):
    config = read_pipeline(folder)
    assert config.structure_sampler.steps == 25 and config.structure_sampler.cfg_strength == 7.5
    assert config.slat_sampler.cfg_interval == (0.5, 1.0) and config.slat_sampler.rescale_t == 3.0
    assert len(config.slat_mean) == len(config.slat_std) == 8
    assert config.checkpoint("sparse_structure_decoder").name == f"{SS_DEC}.json"


def test_pipeline_errors_name_the_file(folder):
    with pytest.raises(TrellisLoadError, match="no pipeline.json"):
        read_pipeline(folder / "ckpts")
    data = json.loads((folder / "pipeline.json").read_text())
    data["args"]["models"]["slat_flow_model"] = "../../outside"
    (folder / "pipeline.json").write_text(json.dumps(data))
    with pytest.raises(TrellisLoadError, match="points outside"):
        read_pipeline(folder)
    data["args"]["models"]["slat_flow_model"] = "ckpts/absent"
    (folder / "pipeline.json").write_text(json.dumps(data))
    with pytest.raises(TrellisLoadError, match="absent.json does not exist"):
        read_pipeline(folder)
    del data["args"]["slat_normalization"]
    (folder / "pipeline.json").write_text(json.dumps(data))
    with pytest.raises(TrellisLoadError, match="slat_normalization"):
        read_pipeline(folder)


def test_strict_loading_names_missing_and_wrong_keys(folder):
    weights = folder / "ckpts" / f"{SS_DEC}.safetensors"

    def edit(state):
        del state["out_layer.2.bias"]
        state["input_layer.bias"] = torch.zeros(7)

    _edit_weights(weights, edit)
    with pytest.raises(TrellisLoadError) as err:
        load_checkpoint(folder / "ckpts" / f"{SS_DEC}.json")
    message = str(err.value)
    assert str(weights) in message
    assert "missing (1)" in message and "wrong shape (1)" in message and "(7,)" in message


def test_unexpected_keys_are_all_named(folder):
    weights = folder / "ckpts" / f"{SS_DEC}.safetensors"
    _edit_weights(weights, lambda s: s.update({"extra.weight": torch.zeros(3), "extra.bias": torch.zeros(3)}))
    with pytest.raises(UserError, match=r"unexpected keys \(2\) 'extra.bias', 'extra.weight'"):
        load_checkpoint(folder / "ckpts" / f"{SS_DEC}.json")


def test_unknown_class_and_bad_files(folder):
    config = folder / "ckpts" / f"{SS_DEC}.json"
    data = json.loads(config.read_text())
    config.write_text(json.dumps({**data, "name": "SLatRadianceFieldDecoder"}))
    with pytest.raises(UserError, match="cannot load TRELLIS model class 'SLatRadianceFieldDecoder'"):
        load_checkpoint(config)
    config.write_text(json.dumps(data))
    (folder / "ckpts" / f"{SS_DEC}.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(TrellisLoadError, match="not a readable safetensors file"):
        load_checkpoint(config)


def test_import_roundtrip_is_exact_and_compact(folder, tmp_path):
    direct = load_trellis(folder)
    out = import_trellis(folder, tmp_path / "imported")
    record = json.loads((out / "model.json").read_text())
    assert record["defaults"]["structure_sampler"]["voxforge"]["cfg_scale"] == 8.5  # 1 + cfg_strength
    imported = load_imported(out)
    for stem, ckpt in direct.checkpoints.items():
        a, b = ckpt.module.state_dict(), imported.checkpoints[stem].module.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the fp16 blocks of the download stay fp16 in the imported weights (no size blow-up)
    size = sum(p.stat().st_size for p in (out / "weights").iterdir())
    source = sum(p.stat().st_size for p in (folder / "ckpts").glob("*.safetensors"))
    assert size < 1.1 * source
    assert load_model_folder(out).roles == direct.roles


def test_imported_folder_detects_damage_and_interrupted_import(folder, tmp_path):
    out = import_trellis(folder, tmp_path / "imported")
    weights = out / "weights" / f"{SS_DEC}.safetensors"

    def edit(state):
        key = next(iter(state))
        state[key] = state[key] + 1

    _edit_weights(weights, edit)
    with pytest.raises(UserError, match="sha256 differs"):
        load_imported(out, image_encoder=False)
    (out / "model.json").unlink()
    with pytest.raises(UserError, match="interrupted import"):
        load_imported(out)


def test_unknown_checkpoint_classes_are_listed_not_loaded(folder):
    """TRELLIS-image-large also ships a radiance-field decoder, which voxforge does not run."""
    (folder / "ckpts" / "slat_dec_rf.json").write_text(
        json.dumps({"name": "SLatRadianceFieldDecoder", "args": {}})
    )
    save_file({"x": torch.zeros(1)}, str(folder / "ckpts" / "slat_dec_rf.safetensors"))
    data = json.loads((folder / "pipeline.json").read_text())
    data["args"]["models"]["slat_decoder_rf"] = "ckpts/slat_dec_rf"
    (folder / "pipeline.json").write_text(json.dumps(data))
    models = load_trellis(
        folder, image_encoder=False, only={"SparseStructureDecoder", "SLatRadianceFieldDecoder"}
    )
    assert models.skipped == {"slat_dec_rf": "SLatRadianceFieldDecoder"}
    assert set(models.roles) == {"sparse_structure_decoder"}


def test_voxforge_pipeline_output_is_not_taken_for_a_trellis_folder(tmp_path):
    """`voxforge pipeline run` writes a pipeline.json of its own: only TRELLIS's counts."""
    from voxforge.trellis.loading import is_trellis_folder

    (tmp_path / "pipeline.json").write_text(json.dumps({"source": "", "spec": {"out": ""}}))
    assert not is_trellis_folder(tmp_path)
    (tmp_path / "pipeline.json").write_text("{not json")
    assert not is_trellis_folder(tmp_path)
    if (FIXTURES / "pipeline.json").is_file():
        assert is_trellis_folder(FIXTURES)
