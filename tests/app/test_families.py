"""Which tab gets which folder: the families' `claims` / `discover`, LoRA runs as the LoRA
choice, and the errors for folders no tab serves (no server started; imports gradio)."""

from __future__ import annotations

from pathlib import Path

import pytest

from voxforge.config.core import dump_yaml
from voxforge.errors import UserError

pytestmark = pytest.mark.app


def _image_flow_run(folder: Path, finetune: str) -> Path:
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text(dump_yaml({"stage": "image_flow", "model": {"finetune": finetune}}))
    return folder


def test_models_go_to_their_tabs_and_runs_folders_add_theirs(tiny_model, tmp_path):
    pytest.importorskip("gradio")
    from voxforge.app.server import assign_models
    from voxforge.app.text_to_image import is_lora_run

    runs = tmp_path / "runs"
    full = _image_flow_run(runs / "sana_full", "full")
    lora = _image_flow_run(runs / "sana_lora", "lora")
    found = assign_models([tiny_model], [runs, tiny_model / "runs"])
    assert found["image_to_3d"][0] == tiny_model
    assert sorted(p.name for p in found["text_to_image"]) == ["sana_full", "sana_lora"]
    assert is_lora_run(lora) and not is_lora_run(full)
    assert assign_models([full], [])["text_to_image"] == [full]


def test_folders_no_tab_serves_are_errors(tmp_path, monkeypatch):
    pytest.importorskip("gradio")
    from voxforge.app.server import AppConfig, assign_models, build_app

    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a model folder of any tab"):
        assign_models([tmp_path / "empty"], [])
    with pytest.raises(UserError, match="--model .*missing: not found"):
        assign_models([tmp_path / "missing"], [])
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "cache"))  # build_app sets it: restored after
    with pytest.raises(UserError, match="no model to serve"):
        build_app(AppConfig(out=tmp_path / "out"))


def test_a_model_folder_and_its_runs_folder_are_one_model(tiny_model, tmp_path):
    pytest.importorskip("gradio")
    from voxforge.app.image_to_3d import ImageTo3DService
    from voxforge.app.registry import AppContext
    from voxforge.app.requests import JobFolders

    service = ImageTo3DService([tiny_model, tiny_model / "runs"], AppContext(jobs=JobFolders(tmp_path)))
    assert service.labels == ["tiny3d"]
