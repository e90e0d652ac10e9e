"""`voxforge import trellis SRC --out MODEL_DIR`: a TRELLIS folder → a voxforge model folder.

The model folder holds the converted weights under voxforge's key names, so loading it
needs no conversion and no TRELLIS names:

    MODEL_DIR/
      model.json                  format, source, TRELLIS's pipeline.json (kept verbatim),
                                  each checkpoint's class + args + weights file + sha256,
                                  the sampler defaults in voxforge's terms
      weights/<stem>.safetensors  voxforge state dict of each checkpoint
      <image encoder>             the DINOv2 weights (+ config) it was imported with

Tensors keep the precision of the download: a converted tensor whose values are all exact
in fp16 (TRELLIS's fp16 blocks, renamed) is stored in fp16 and upcast at load, so the
folder is no larger than the download and loads bit-identically. `model.json` is written
last, through a temporary name: a folder without it is an interrupted import, which
`load_imported` refuses with a message, and a re-run overwrites.

`load_model_folder(path)` opens either kind of folder: a TRELLIS download (recognised by
its `pipeline.json`) or an imported one (its `model.json` with the voxforge format).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from voxforge.errors import UserError
from voxforge.trellis.loading import (
    LoadedCheckpoint,
    TrellisLoadError,
    TrellisModels,
    check_state_dict,
    is_trellis_folder,
    load_trellis,
    parse_pipeline,
)
from voxforge.trellis.registry import find_image_encoder, spec_for

__all__ = [
    "FORMAT",
    "MODEL_FILE",
    "import_trellis",
    "is_imported_folder",
    "load_imported",
    "load_model_folder",
]

FORMAT = "voxforge-trellis-image/1"
MODEL_FILE = "model.json"


def is_imported_folder(path: str | Path) -> bool:
    file = Path(path) / MODEL_FILE
    if not file.is_file():
        return False
    try:
        return json.loads(file.read_text()).get("format") == FORMAT
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False


def _compact(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """fp32 tensors whose values are exact in fp16 are stored in fp16 (lossless)."""
    out = {}
    for key, value in state.items():
        value = value.detach().cpu().contiguous()
        if value.dtype == torch.float32:
            half = value.half()
            if torch.isfinite(half).all() and torch.equal(half.float(), value):
                value = half
        out[key] = value
    return out


def _write_safetensors(state: dict[str, Tensor], path: Path) -> str:
    """Write atomically; returns the sha256 of the bytes written (no second read of the file)."""
    from safetensors.torch import save

    data = save(state)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return hashlib.sha256(data).hexdigest()


def _copy_image_encoder(path: Path, out: Path) -> str:
    """Copy the DINOv2 weights (file + same-stem .json, or a transformers folder) into `out`."""
    if path.is_dir():
        target = out / "dinov2"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(path, target)
        return target.name
    if path.suffix == ".pth":  # hub cache: re-save as safetensors, never keep a pickle
        state = torch.load(path, map_location="cpu", weights_only=True)
        name = path.stem + ".safetensors"
        _write_safetensors({k: v.contiguous() for k, v in state.items()}, out / name)
    else:
        name = path.name
        shutil.copyfile(path, out / name)
    config = path.with_suffix(".json")
    if config.is_file():
        shutil.copyfile(config, out / Path(name).with_suffix(".json").name)
    return name


def sampler_defaults(models: TrellisModels) -> dict[str, Any]:
    from voxforge.trellis.flows import sampler_config

    defaults = {}
    for key, settings in (
        ("structure_sampler", models.config.structure_sampler),
        ("slat_sampler", models.config.slat_sampler),
    ):
        cfg = sampler_config(settings.as_params())  # sigma_min is kept with the TRELLIS settings
        defaults[key] = {"trellis": asdict(settings), "voxforge": asdict(cfg)}
    return defaults


def import_trellis(src: str | Path, out: str | Path, *, dinov2: str | Path | None = None) -> Path:
    """Convert the TRELLIS folder `src` into the voxforge model folder `out`."""
    src, out = Path(src), Path(out)
    if out.resolve() == src.resolve():
        raise UserError(f"--out {out}: must differ from the source folder")
    models = load_trellis(src, dinov2=dinov2)
    (out / "weights").mkdir(parents=True, exist_ok=True)
    stale = out / MODEL_FILE
    if stale.exists():
        stale.unlink()  # an earlier import is replaced; until model.json is back, the folder is incomplete
    checkpoints = {}
    for stem, ckpt in models.checkpoints.items():
        path = out / "weights" / f"{stem}.safetensors"
        digest = _write_safetensors(_compact(ckpt.module.state_dict()), path)
        checkpoints[stem] = {
            "class": ckpt.trellis_class,
            "args": ckpt.args,
            "weights": f"weights/{path.name}",
            "sha256": digest,
        }
    record = {
        "format": FORMAT,
        "source": str(src.resolve()),
        "pipeline": models.config.raw,
        "roles": models.roles,
        "checkpoints": checkpoints,
        "skipped": models.skipped,
        "image_encoder": _copy_image_encoder(models.image_encoder_path, out)
        if models.image_encoder_path
        else None,
        "defaults": sampler_defaults(models),
    }
    tmp = out / (MODEL_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(out / MODEL_FILE)
    return out


def load_imported(
    path: str | Path, *, device: torch.device | str = "cpu", image_encoder: bool = True
) -> TrellisModels:
    """Open a folder written by `import_trellis` (checks each weight file's sha256)."""
    from safetensors.torch import load

    root = Path(path)
    file = root / MODEL_FILE
    if not file.is_file():
        raise UserError(
            f"{root}: no {MODEL_FILE} (not an imported model folder, or an interrupted import: re-run it)"
        )
    try:
        record = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{file}: not valid JSON ({err})") from None
    if record.get("format") != FORMAT:
        raise UserError(f"{file}: format {record.get('format')!r} is not {FORMAT!r}")
    config = parse_pipeline(record["pipeline"], root, f"{file}: pipeline")
    loaded = {}
    for stem, entry in record["checkpoints"].items():
        weights = (root / entry["weights"]).resolve()
        if not weights.is_relative_to(root.resolve()) or not weights.is_file():
            raise UserError(
                f"{file}: checkpoints.{stem}.weights: {entry['weights']} is missing or outside {root}"
            )
        data = weights.read_bytes()  # hashed from the bytes that are parsed: the file is read once
        if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            raise UserError(f"{weights}: sha256 differs from {file} (damaged or replaced); re-run the import")
        spec = spec_for(entry["class"], f"{file}: checkpoints.{stem}")
        module = spec.build(entry["args"])
        state = {k: v.float() if v.is_floating_point() else v for k, v in load(data).items()}
        check_state_dict(module, state, str(weights))
        module.load_state_dict(state, strict=True)
        loaded[stem] = LoadedCheckpoint(stem, entry["class"], entry["args"], module.to(device).eval())
    models = TrellisModels(config=config, checkpoints=loaded, roles=dict(record["roles"]))
    if image_encoder:
        if not record.get("image_encoder"):
            raise UserError(
                f"{file}: was imported without an image encoder; re-run the import with --dinov2 PATH"
            )
        models.image_encoder, models.image_encoder_path = find_image_encoder(
            root, root / record["image_encoder"], device
        )
    return models


def load_model_folder(
    path: str | Path, *, dinov2: str | Path | None = None, device: torch.device | str = "cpu"
) -> TrellisModels:
    """A TRELLIS download or an imported folder, whichever `path` is."""
    if is_trellis_folder(path):
        return load_trellis(path, dinov2=dinov2, device=device)
    if is_imported_folder(path):
        return load_imported(path, device=device)
    raise TrellisLoadError(
        f"{path}: neither a TRELLIS folder (pipeline.json) nor an imported one ({MODEL_FILE})"
    )
