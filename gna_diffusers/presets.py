"""Shipped presets (the YAML files of configs/, installed as gna_diffusers.configs) and preset lookup."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml

from .config import ConfigError, GNAConfig, load_config, parse_config


def _preset_files() -> dict[str, resources.abc.Traversable]:
    root = resources.files("gna_diffusers.configs")
    return {p.name.removesuffix(".yaml"): p for p in root.iterdir() if p.name.endswith(".yaml")}


def list_presets() -> list[str]:
    """Names of the shipped presets."""
    return sorted(_preset_files())


def preset_text(name: str) -> str:
    """The YAML text of a shipped preset (with its header comment)."""
    files = _preset_files()
    if name not in files:
        raise ConfigError(f"unknown preset {name!r}; shipped presets: {', '.join(sorted(files))}")
    return files[name].read_text()


def load_preset(name: str) -> GNAConfig:
    """A shipped preset, validated."""
    return parse_config(yaml.safe_load(preset_text(name)), f"preset {name}")


def resolve_preset(preset: str | Path | GNAConfig) -> GNAConfig:
    """A GNAConfig from a config object, a shipped preset name, or a YAML file path."""
    if isinstance(preset, GNAConfig):
        return preset
    if isinstance(preset, str) and preset in _preset_files():
        return load_preset(preset)
    path = Path(preset)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return load_config(path)
    raise ConfigError(
        f"unknown preset {str(preset)!r}: not a shipped preset ({', '.join(list_presets())}) and not a YAML file"
    )
