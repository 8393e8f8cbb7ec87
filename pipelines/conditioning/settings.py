"""A live ControlNet change (``LiveParams.controlnet``): checked on its own when parsed, then against the
pipeline's nets when applied to a stream's ``ControlSettings``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from pipelines.config import CONTROL_TYPES, ControlScale, ControlSettings, ControlType, explain

CONTROL_VALUES = ("on/off, true/false or a mapping of ControlNet settings (enabled, scale, type, canny_low, "
                  "canny_high)")


class _ControlChange(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool | None = None
    scale: ControlScale | list[ControlScale] | None = None
    type: ControlType | list[ControlType] | None = None
    canny_low: float | None = None
    canny_high: float | None = None


def parse_control_change(value: Any) -> dict[str, Any]:
    """on/off, or a mapping of the settings to change -> that mapping, each value checked; ValueError of one
    line otherwise."""
    if isinstance(value, bool):
        return {"enabled": value}
    if isinstance(value, str) and value.strip().lower() in ("on", "off", "true", "false"):
        return {"enabled": value.strip().lower() in ("on", "true")}
    if isinstance(value, str) and value.strip().startswith("{"):  # a terminal line: controlnet {"scale": 0.5}
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError(f"controlnet settings are not valid JSON: {value.strip()[:60]!r}") from None
    if not isinstance(value, Mapping):
        raise ValueError(f"controlnet must be {CONTROL_VALUES}")
    for key in ("type",):
        kind = value.get(key)
        for item in kind if isinstance(kind, list) else [kind]:
            if isinstance(item, str) and item not in CONTROL_TYPES:
                raise ValueError(f"controlnet.type must be one of {', '.join(CONTROL_TYPES)}, got {item!r}")
    for key in ("scale",):
        scale = value.get(key)
        for item in scale if isinstance(scale, list) else [scale]:
            if item is not None and (isinstance(item, bool) or not isinstance(item, int | float)
                                     or not 0 <= item <= 2):
                raise ValueError(f"controlnet.scale must be a number from 0 to 2 (or a list, one per "
                                 f"ControlNet), got {item!r}")
    try:
        checked = _ControlChange.model_validate(dict(value))
        ControlSettings.model_validate({k: value[k] for k in ("canny_low", "canny_high") if k in value})
    except ValidationError as exc:
        raise ValueError(explain(exc, ControlSettings, prefix="controlnet.", unknown="controlnet setting")
                         ) from None
    return {name: getattr(checked, name) for name in value}


def apply_control_change(current: ControlSettings, change: Mapping[str, Any], nets: int,
                         depth: bool = True) -> ControlSettings:
    """``current`` with ``change`` applied, for a pipeline of ``nets`` ControlNets (``depth``: with a depth
    estimator loaded); ValueError (one line) if the change does not fit them. ``current`` is not touched."""
    if nets == 0:
        raise ValueError("this pipeline has no ControlNet; start it with --controlnet ID (or a preset with one)")
    settings = current.model_dump()
    for key in ("scale", "type"):
        if key in change:
            value = change[key]
            if isinstance(value, list):
                if len(value) != nets:
                    raise ValueError(f"controlnet.{key} has {len(value)} value(s) but the pipeline has {nets} "
                                     f"ControlNet(s): give one value, or one per ControlNet")
                settings[key] = list(value)
            else:
                settings[key] = [value] * nets
    if "depth" in settings["type"] and "depth" not in current.type and not depth:
        raise ValueError("controlnet.type depth needs the depth estimator, which is loaded only when the "
                         "pipeline starts with a depth ControlNet (--controlnet ID:depth)")
    for key in ("enabled", "canny_low", "canny_high"):
        if key in change:
            settings[key] = change[key]
    if settings["canny_low"] > settings["canny_high"]:
        raise ValueError(f"controlnet.canny_low ({settings['canny_low']:g}) must not be above canny_high "
                         f"({settings['canny_high']:g})")
    return ControlSettings.model_validate(settings)


def reported_control(current: Mapping[str, Any], change: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a stream reports (GET /params) after a change the pipeline accepted."""
    settings = ControlSettings.model_validate(dict(current))
    return apply_control_change(settings, change, len(settings.scale)).model_dump()
