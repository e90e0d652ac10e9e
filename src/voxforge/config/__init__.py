"""Typed configs, YAML recipes (safe_load only) and dotted key=value overrides."""

from voxforge.config.core import (
    ConfigError,
    ConfigValueError,
    apply_overrides,
    dump_yaml,
    from_dict,
    load_yaml,
    option,
    to_dict,
)

__all__ = [
    "ConfigError",
    "ConfigValueError",
    "apply_overrides",
    "dump_yaml",
    "from_dict",
    "load_yaml",
    "option",
    "to_dict",
]
