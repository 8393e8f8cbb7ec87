"""Named presets (pipelines/preset_files/*.yaml, shipped as package data) -> PipelineConfig -> a ready pipeline."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pipelines.config import PipelineConfig
from pipelines.errors import PipelineError
from pipelines.frames import FramePipeline

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


def _field(loc: tuple) -> Any:
    """The pydantic field at ``loc`` (e.g. ('smoothing', 'input_blend')), or None."""
    model: Any = PipelineConfig
    field = None
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if not isinstance(part, str) or not fields or part not in fields:
            return None
        field = fields[part]
        model = field.annotation
    return field


def allowed_range(loc: tuple) -> str | None:
    """What a numeric setting accepts, in words: '1-8', 'more than 0 and at most 1', 'at least 0'."""
    field = _field(loc)
    if field is None:
        return None
    bounds = {name: getattr(m, name) for m in field.metadata for name in ("ge", "gt", "le", "lt")
              if getattr(m, name, None) is not None}
    if not bounds:
        return None
    if "ge" in bounds and "le" in bounds and field.annotation is int:
        return f"{bounds['ge']}-{bounds['le']}"
    words = {"ge": "at least", "gt": "more than", "le": "at most", "lt": "less than"}
    return " and ".join(f"{words[name]} {value:g}" for name, value in bounds.items())


def _setting_error(err: dict, labels: dict[str, str]) -> str:
    loc = tuple(err["loc"])
    where = ".".join(str(p) for p in loc)
    given = f", got {err['input']!r}" if not isinstance(err.get("input"), dict | list) else ""
    if err["type"] == "extra_forbidden":
        field = _field(loc[:-1]) if len(loc) > 1 else None
        known = list((field.annotation if field else PipelineConfig).model_fields)
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"; did you mean {close[0]}?" if close else f"; known: {', '.join(known)}"
        return f"unknown setting {where!r}{hint}"
    allowed = allowed_range(loc) if err["type"] in RANGE_ERRORS else None
    message = f"must be {allowed}{given}" if allowed else err["msg"].removeprefix("Value error, ")
    if where in labels:
        return f"{labels[where]} {message}"
    return f"bad setting{' ' + where if where else ''}: {message}"


RANGE_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


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
        raise PipelineError(_setting_error(exc.errors()[0], labels or {})) from None


def load_pipeline(config: PipelineConfig | str | None = None, **overrides: Any) -> FramePipeline:
    """A preset name or a config -> a pipeline ready to take frames."""
    if config is None or isinstance(config, str):
        config = build_config(config, overrides)
    elif overrides:
        config = config.model_copy(update=overrides)
    if config.family == "passthrough":
        from pipelines.passthrough import PassthroughPipeline

        return PassthroughPipeline()
    from pipelines.lcm_img2img import StreamPipeline

    return StreamPipeline.from_config(config)
