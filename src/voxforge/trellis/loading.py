"""Read a TRELLIS-image-large folder: `pipeline.json`, `ckpts/NAME.{json,safetensors}`.

TRELLIS's `from_pretrained` reads `NAME.json` (`{"name": class, "args": {...}}`) and the
weights beside it; its pipeline file names which checkpoint plays which role
(`sparse_structure_flow_model`, `slat_decoder_gs`, ...) and holds the sampler settings and
the latent statistics. This module does the same with voxforge's modules:

- `read_pipeline(src)` parses `pipeline.json` into a `TrellisPipelineConfig` with clear
  errors for a missing file, missing keys or a role whose checkpoint is absent;
- `load_checkpoint(json_path)` builds the module of the class (`registry.spec_for`),
  reads the safetensors (never pickle), upcasts fp16 blocks to fp32, converts the keys, and
  loads strictly: before `load_state_dict`, the converted keys and shapes are compared with
  the module's, and a mismatch raises a `TrellisLoadError` that lists the missing,
  unexpected and wrongly shaped keys (in TRELLIS's names where the conversion is a rename);
- `load_trellis(src, dinov2=...)` loads every checkpoint of the folder (the roles of
  `pipeline.json` and any other `ckpts/*.json` of a known class, e.g. the encoders that
  TRELLIS releases beside the pipeline) plus the image encoder, as `TrellisModels`. A
  checkpoint of a class voxforge has no module for (TRELLIS-image-large's radiance-field
  decoder, `SLatRadianceFieldDecoder`) is listed in `TrellisModels.skipped`, not loaded:
  nothing voxforge writes needs it. `load_checkpoint` on it is an error naming the class.

Sampler settings become voxforge's: TRELLIS's `cfg_strength` s guides with
`(1 + s)·cond − s·uncond`, which is voxforge's guidance scale `1 + s` (see `flows.py`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from voxforge.errors import UserError
from voxforge.nn.state import state_mismatch
from voxforge.trellis.registry import spec_for

__all__ = [
    "PIPELINE_FILE",
    "LoadedCheckpoint",
    "TrellisLoadError",
    "TrellisModels",
    "TrellisPipelineConfig",
    "check_state_dict",
    "is_trellis_folder",
    "load_checkpoint",
    "load_trellis",
    "parse_pipeline",
    "read_pipeline",
]

PIPELINE_FILE = "pipeline.json"
#: the roles of a TRELLIS-image-large `pipeline.json` (its `args.models`)
ROLES = (
    "sparse_structure_decoder",
    "sparse_structure_flow_model",
    "slat_decoder_gs",
    "slat_decoder_mesh",
    "slat_flow_model",
)


class TrellisLoadError(UserError):
    """A TRELLIS folder or checkpoint that cannot be loaded; the message names the file."""


def is_trellis_folder(path: str | Path) -> bool:
    """A folder with TRELLIS's `pipeline.json` (`{"name": ..., "args": {"models": ...}}`).

    The content is checked, not only the name: `voxforge pipeline run` writes a
    `pipeline.json` of its own into its output folder.
    """
    file = Path(path) / PIPELINE_FILE
    if not file.is_file() or file.stat().st_size > 1 << 20:
        return False
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    args = data.get("args") if isinstance(data, dict) else None
    return isinstance(args, dict) and isinstance(args.get("models"), dict)


@dataclass(frozen=True)
class SamplerSettings:
    """One `*_sampler` entry of `pipeline.json` (TRELLIS's names and meaning)."""

    name: str
    steps: int
    cfg_strength: float
    cfg_interval: tuple[float, float]
    rescale_t: float
    sigma_min: float

    def as_params(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "cfg_strength": self.cfg_strength,
            "cfg_interval": self.cfg_interval,
            "rescale_t": self.rescale_t,
        }


@dataclass(frozen=True)
class TrellisPipelineConfig:
    root: Path
    models: dict[str, str]  # role -> checkpoint path relative to root, without extension
    structure_sampler: SamplerSettings
    slat_sampler: SamplerSettings
    slat_mean: tuple[float, ...]
    slat_std: tuple[float, ...]
    image_cond_model: str
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # the parsed JSON

    def checkpoint(self, role: str) -> Path:  # -> ckpts/NAME.json
        return self.root / f"{self.models[role]}.json"


def _get(data: Mapping[str, Any], key: str, where: str) -> Any:
    if not isinstance(data, Mapping) or key not in data:
        raise TrellisLoadError(f"{where}: missing key '{key}'")
    return data[key]


def _sampler(data: Mapping[str, Any], where: str) -> SamplerSettings:
    params = _get(data, "params", where)
    try:
        interval = tuple(float(v) for v in params.get("cfg_interval", (0.0, 1.0)))
        settings = SamplerSettings(
            name=str(data.get("name", "FlowEulerGuidanceIntervalSampler")),
            steps=int(_get(params, "steps", f"{where}.params")),
            cfg_strength=float(params.get("cfg_strength", 0.0)),
            cfg_interval=(interval[0], interval[1]),
            rescale_t=float(params.get("rescale_t", 1.0)),
            sigma_min=float(data.get("args", {}).get("sigma_min", 1e-5)),
        )
    except (TypeError, ValueError, IndexError) as err:
        raise TrellisLoadError(f"{where}: {err}") from None
    if settings.name not in ("FlowEulerSampler", "FlowEulerCfgSampler", "FlowEulerGuidanceIntervalSampler"):
        raise TrellisLoadError(f"{where}.name: unknown sampler '{settings.name}'")
    if settings.steps < 1:
        raise TrellisLoadError(f"{where}.params.steps: must be >= 1, got {settings.steps}")
    return settings


def read_pipeline(src: str | Path) -> TrellisPipelineConfig:
    """Parse `src/pipeline.json`; every role's checkpoint must exist."""
    root = Path(src)
    path = root / PIPELINE_FILE
    if not path.is_file():
        raise TrellisLoadError(f"{root}: no {PIPELINE_FILE} (not a TRELLIS model folder)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TrellisLoadError(f"{path}: not valid JSON ({err})") from None
    config = parse_pipeline(data, root, str(path))
    for role, rel in config.models.items():
        _inside(root, rel, f"{path}: args.models.{role}")
        for ext in (".json", ".safetensors"):
            if not (root / f"{rel}{ext}").is_file():
                raise TrellisLoadError(f"{path}: args.models.{role}: {root / (rel + ext)} does not exist")
    return config


def parse_pipeline(data: Mapping[str, Any], root: Path, where: str) -> TrellisPipelineConfig:
    """The content of a `pipeline.json` (also kept inside an imported model folder)."""
    args = _get(data, "args", where)
    models = _get(args, "models", f"{where}: args")
    for role in ROLES:
        if role not in models:
            raise TrellisLoadError(f"{where}: args.models has no '{role}'")
    norm = _get(args, "slat_normalization", f"{where}: args")
    mean = _get(norm, "mean", f"{where}: slat_normalization")
    std = _get(norm, "std", f"{where}: slat_normalization")
    if len(mean) != len(std) or not all(float(s) > 0 for s in std):
        raise TrellisLoadError(f"{where}: slat_normalization needs mean and std of equal length, std > 0")
    return TrellisPipelineConfig(
        root=root,
        models={role: str(models[role]) for role in models},
        structure_sampler=_sampler(
            _get(args, "sparse_structure_sampler", f"{where}: args"), f"{where}: sparse_structure_sampler"
        ),
        slat_sampler=_sampler(_get(args, "slat_sampler", f"{where}: args"), f"{where}: slat_sampler"),
        slat_mean=tuple(float(v) for v in mean),
        slat_std=tuple(float(v) for v in std),
        image_cond_model=str(args.get("image_cond_model", "dinov2_vitl14_reg")),
        raw=dict(data),
    )


def _inside(root: Path, rel: str, where: str) -> None:
    """Paths named by a data file stay inside its folder."""
    target = (root / rel).resolve()
    if not target.is_relative_to(root.resolve()):
        raise TrellisLoadError(f"{where}: '{rel}' points outside {root}")


def check_state_dict(module: nn.Module, state: Mapping[str, Tensor], where: str) -> None:
    """Raise a TrellisLoadError naming missing, unexpected and wrongly shaped keys."""
    problems = state_mismatch(module, state)
    if problems:
        raise TrellisLoadError(f"{where}: the weights do not match the model built from its config{problems}")


@dataclass
class LoadedCheckpoint:
    name: str  # file stem, e.g. "ss_flow_img_dit_L_16l8_fp16"
    trellis_class: str
    args: dict[str, Any]
    module: nn.Module


def read_checkpoint_json(json_path: Path) -> tuple[str, dict[str, Any]]:
    try:
        data = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TrellisLoadError(f"{json_path}: cannot read the model config ({err})") from None
    name, args = _get(data, "name", str(json_path)), _get(data, "args", str(json_path))
    if not isinstance(args, dict):
        raise TrellisLoadError(f"{json_path}: 'args' must be an object")
    return str(name), args


def read_weights(path: Path) -> dict[str, Tensor]:
    """A safetensors file as fp32 tensors (TRELLIS stores transformer blocks in fp16)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise TrellisLoadError(f"{path}: missing (weights of {path.with_suffix('.json').name})")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise TrellisLoadError(f"{path}: not a readable safetensors file ({err})") from None
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def convert_state(
    trellis_class: str, args: Mapping[str, Any], state: Mapping[str, Tensor], where: str
) -> dict[str, Tensor]:
    spec = spec_for(trellis_class, where)
    dropped = [re.compile(p) for p in spec.dropped]
    kept = {k: v for k, v in state.items() if not any(p.fullmatch(k) for p in dropped)}
    try:
        return spec.convert(args, kept)
    except KeyError as err:
        raise TrellisLoadError(f"{where}: key {err} is missing from the weights") from None


def load_checkpoint(json_path: str | Path, device: torch.device | str = "cpu") -> LoadedCheckpoint:
    """Build, convert and strictly load one `ckpts/NAME.json` + `NAME.safetensors`."""
    json_path = Path(json_path)
    trellis_class, args = read_checkpoint_json(json_path)
    spec = spec_for(trellis_class, str(json_path))
    weights = json_path.with_suffix(".safetensors")
    try:
        module = spec.build(args)
    except (TypeError, ValueError, UserError) as err:
        raise TrellisLoadError(f"{json_path}: cannot build {trellis_class} from its args ({err})") from None
    state = convert_state(trellis_class, args, read_weights(weights), str(weights))
    check_state_dict(module, state, str(weights))
    module.load_state_dict(state, strict=True)
    return LoadedCheckpoint(json_path.stem, trellis_class, args, module.to(device).eval())


@dataclass
class TrellisModels:
    """Every model of a TRELLIS folder, as voxforge modules (fp32, eval mode)."""

    config: TrellisPipelineConfig
    checkpoints: dict[str, LoadedCheckpoint]  # by file stem
    roles: dict[str, str]  # role -> file stem
    image_encoder: nn.Module | None = None
    image_encoder_path: Path | None = None
    #: file stem -> TRELLIS class of checkpoints voxforge has no module for (not loaded)
    skipped: dict[str, str] = field(default_factory=dict)

    def role(self, role: str) -> nn.Module:
        return self.checkpoints[self.roles[role]].module

    def by_class(self) -> dict[str, Any]:
        """Modules by TRELLIS class name (a pipeline role wins over other files of a class)."""
        found: dict[str, Any] = {}
        for stem, ckpt in self.checkpoints.items():
            if stem not in self.roles.values():
                found.setdefault(ckpt.trellis_class, ckpt.module)
        for stem in self.roles.values():
            ckpt = self.checkpoints[stem]
            found[ckpt.trellis_class] = ckpt.module
        if self.image_encoder is not None:
            found["DINOv2"] = self.image_encoder
        found["pipeline"] = self.config
        return found


def load_trellis(
    src: str | Path,
    *,
    dinov2: str | Path | None = None,
    device: torch.device | str = "cpu",
    image_encoder: bool = True,
    only: set[str] | None = None,
) -> TrellisModels:
    """Load a TRELLIS-image-large folder (see the module docstring).

    `only` restricts loading to checkpoints of those TRELLIS classes (the verify command
    loads what a golden file needs); `image_encoder=False` skips DINOv2.
    """
    from voxforge.trellis.registry import find_image_encoder

    config = read_pipeline(src)
    root = config.root
    stems: dict[str, Path] = {}
    for rel in config.models.values():
        stems[Path(rel).name] = root / f"{rel}.json"
    ckpt_dir = root / "ckpts"
    if ckpt_dir.is_dir():  # checkpoints TRELLIS releases beside the pipeline (the encoders)
        for path in sorted(ckpt_dir.glob("*.json")):
            if path.with_suffix(".safetensors").is_file():
                stems.setdefault(path.stem, path)
    from voxforge.trellis.registry import all_specs

    loaded: dict[str, LoadedCheckpoint] = {}
    skipped: dict[str, str] = {}
    for stem, path in stems.items():
        trellis_class, _ = read_checkpoint_json(path)
        if only is not None and trellis_class not in only:
            continue
        if trellis_class not in all_specs():
            # e.g. the radiance-field decoder of TRELLIS-image-large: nothing voxforge writes needs it
            skipped[stem] = trellis_class
            continue
        loaded[stem] = load_checkpoint(path, device)
    roles = {role: Path(rel).name for role, rel in config.models.items() if Path(rel).name in loaded}
    models = TrellisModels(config=config, checkpoints=loaded, roles=roles, skipped=skipped)
    if image_encoder and (only is None or "DINOv2" in only):
        models.image_encoder, models.image_encoder_path = find_image_encoder(root, dinov2, device)
    return models
