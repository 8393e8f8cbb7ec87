"""Named presets (pipelines/preset_files/*.yaml, shipped as package data) -> PipelineConfig.

A config becomes a pipeline in pipelines/factory.py (``load_pipeline``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pipelines.config import PipelineConfig, explain
from pipelines.errors import PipelineError

PRESETS_DIR = Path(__file__).resolve().parent / "preset_files"
DEFAULT_PRESET = "lcm-dreamshaper"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise PipelineError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PipelineError(f"config file {path} must hold a mapping of settings, got {type(data).__name__}")
    return data


def preset_settings(name: str) -> dict[str, Any]:
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise PipelineError(f"unknown preset {name!r}; choose one of: {', '.join(preset_names())}")
    return read_yaml(path)


def build_config(preset: str | None = None, overrides: dict[str, Any] | None = None,
                 labels: dict[str, str] | None = None) -> PipelineConfig:
    """A preset's settings with ``overrides`` on top (nested dicts merge, e.g. smoothing). ``labels`` names
    settings in the caller's terms for its messages, e.g. {'num_inference_steps': '--steps'}."""
    settings = preset_settings(preset or DEFAULT_PRESET)
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(settings.get(key), dict):
            settings[key] = {**settings[key], **value}
        else:
            settings[key] = value
    try:
        return PipelineConfig(**settings)
    except ValidationError as exc:
        message = explain(exc, PipelineConfig, labels=labels)
        labelled = ".".join(str(p) for p in exc.errors()[0]["loc"]) in (labels or {})
        raise PipelineError(message if labelled or message.startswith("unknown") else f"bad setting: {message}") \
            from None
