"""Recipe loading: typed checks, error messages that name key, type/range and file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest
import yaml

from voxforge.cli import main
from voxforge.config.core import ConfigValueError, apply_overrides, from_dict, option
from voxforge.errors import ConfigError
from voxforge.recipe import load_recipe


@dataclass
class Inner:
    size: int = option(4, ge=1)
    mode: Literal["a", "b"] = "a"


@dataclass
class Outer:
    lr: float = option(1e-3, gt=0.0)
    rates: list[float] = option(default_factory=list, gt=0.0, lt=1.0)
    inner: Inner = option(default_factory=Inner)
    name: str | None = None

    def __post_init__(self):
        if self.name == "forbidden":
            raise ConfigValueError("name", "this name is reserved")


def test_valid_and_defaults():
    cfg = from_dict(Outer, {"lr": 1, "rates": [0.9, 0.99], "inner": {"mode": "b"}})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.rates == [0.9, 0.99] and cfg.inner == Inner(4, "b")


@pytest.mark.parametrize(
    "data, fragments",
    [
        ({"lrr": 1.0}, ["key 'lrr'", "unknown key", "did you mean 'lr'"]),
        ({"inner": {"sise": 2}}, ["key 'inner.sise'", "did you mean 'size'"]),
        ({"lr": "fast"}, ["key 'lr'", "expected float", "'fast'"]),
        ({"inner": {"size": 2.5}}, ["key 'inner.size'", "expected int"]),
        ({"inner": {"size": True}}, ["key 'inner.size'", "expected int"]),
        ({"lr": -1.0}, ["key 'lr'", "> 0.0", "-1.0"]),
        ({"rates": [0.5, 1.5]}, ["key 'rates'", "< 1.0"]),
        ({"inner": {"mode": "c"}}, ["key 'inner.mode'", "'a'", "'b'"]),
        ({"inner": 3}, ["key 'inner'", "mapping"]),
        ({"name": "forbidden"}, ["key 'name'", "reserved"]),
    ],
)
def test_errors_name_key_and_expectation(data, fragments):
    with pytest.raises(ConfigError) as info:
        from_dict(Outer, data, source="recipe.yaml")
    message = str(info.value)
    assert message.startswith("recipe.yaml: ")
    for fragment in fragments:
        assert fragment in message, message


def test_overrides_are_yaml_typed():
    data = apply_overrides(
        {"optim": {"lr": 1.0}}, ["optim.lr=3e-4", "train.ema_rates=[0.9,0.99]", "train.time_limit=null"]
    )
    assert data["optim"]["lr"] == pytest.approx(3e-4)
    assert data["train"] == {"ema_rates": [0.9, 0.99], "time_limit": None}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides({}, ["optim.lr"])
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"optim": {"lr": 1.0}}, ["optim.lr.x=1"])


def _write(tmp_path, data):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_recipe_errors_name_the_file(tmp_path):
    path = _write(tmp_path, {"stage": "debug_regression", "optim": {"lr": "abc"}})
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    assert str(path) in str(info.value) and "optim.lr" in str(info.value)
    path = _write(tmp_path, {"stage": "no_such_stage"})
    with pytest.raises(ConfigError, match="unknown stage 'no_such_stage'"):
        load_recipe(path)
    path = _write(tmp_path, {"stage": "debug_regression", "train": {"precision": "fp8"}})
    with pytest.raises(ConfigError, match="train.precision.*'fp32'"):
        load_recipe(path)
    with pytest.raises(ConfigError, match="command-line overrides"):
        load_recipe(_write(tmp_path, {"stage": "debug_regression"}), ["train.max_steps=0"])


def test_unsafe_yaml_is_rejected(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("stage: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(path)


def test_config_show_cli(capsys):
    assert main(["config", "show", "debug_regression", "optim.lr=0.5", "train.max_steps=7"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["optim"]["lr"] == 0.5 and shown["train"]["max_steps"] == 7
    assert shown["train"]["precision"] == "fp32"  # defaults filled in
    assert main(["config", "show", "debug_regression", "optim.lrr=0.5"]) == 2
    assert "did you mean 'lr'" in capsys.readouterr().err
