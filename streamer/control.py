"""Change prompt, strength, seed and smoothing while a stream runs: checks, terminal lines (HTTP: control_http).

``validate_params`` is the one place live parameters are checked (the WebRTC server uses it too); every
change reaches the model through ``GpuWorker.update`` on the worker thread.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TextIO

from pydantic import ValidationError

from pipelines.config import PipelineConfig, SmoothingConfig
from pipelines.frames import LIVE_PARAMS

log = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 2000
UPDATE_TIMEOUT_S = 30.0

COMMAND_HELP = ("commands: prompt TEXT | negative_prompt TEXT | strength 0-1 | seed N | steps N | "
                "guidance X | smoothing on|off | params | help")
_ALIASES = {"steps": "num_inference_steps", "guidance": "guidance_scale", "negative": "negative_prompt",
            "negative-prompt": "negative_prompt"}


def _number(name: str, value: Any, *, integer: bool = False) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        number = int(value) if integer and not isinstance(value, float) else float(value)
    except ValueError:
        raise ValueError(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}") from None
    if integer and number != int(number):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(number) if integer else number


def _smoothing(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"enabled": value}
    if isinstance(value, str) and value.strip().lower() in ("on", "off", "true", "false"):
        return {"enabled": value.strip().lower() in ("on", "true")}
    if isinstance(value, Mapping):
        try:
            SmoothingConfig(**value)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "smoothing"
            raise ValueError(f"smoothing.{where}: {err['msg']}") from None
        return dict(value)
    raise ValueError(f"smoothing must be on/off, true/false or a mapping of smoothing settings, got {value!r}")


def validate_params(data: Mapping[str, Any]) -> dict[str, Any]:
    """Check live parameter changes; return keyword arguments for ``update``. ValueError names the bad one."""
    if not isinstance(data, Mapping):
        raise ValueError(f"parameters must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(LIVE_PARAMS))
    if unknown:
        raise ValueError(f"unknown parameter {unknown[0]!r}; live parameters are: {', '.join(LIVE_PARAMS)}")
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("prompt", "negative_prompt"):
            if not isinstance(value, str):
                raise ValueError(f"{key} must be text, got {value!r}")
            if len(value) > MAX_PROMPT_CHARS:
                raise ValueError(f"{key} is {len(value)} characters; keep it under {MAX_PROMPT_CHARS}")
            out[key] = value.strip()
        elif key == "strength":
            strength = _number(key, value)
            if not 0.0 < strength <= 1.0:
                raise ValueError(f"strength must be above 0 and at most 1, got {value!r}")
            out[key] = strength
        elif key == "seed":
            seed = _number(key, value, integer=True)
            if not 0 <= seed < 2**63:
                raise ValueError(f"seed must be a whole number from 0 to 2**63-1, got {value!r}")
            out[key] = seed
        elif key == "num_inference_steps":
            steps = _number(key, value, integer=True)
            if not 1 <= steps <= 8:
                raise ValueError(f"num_inference_steps must be 1 to 8 (1 or 2 for real time), got {value!r}")
            out[key] = steps
        elif key == "guidance_scale":
            guidance = _number(key, value)
            if guidance < 0:
                raise ValueError(f"guidance_scale must be 0 or more, got {value!r}")
            out[key] = guidance
        elif key == "smoothing":
            out[key] = _smoothing(value)
    return out


def parse_command(line: str) -> tuple[str, dict[str, Any]]:
    """A terminal line -> ("set", params) | ("params", {}) | ("help", {}) | ("none", {}). ValueError if bad.

    Examples: ``prompt a watercolor``, ``strength 0.6``, ``seed 3``, ``smoothing off``.
    """
    text = line.strip()
    if not text:
        return "none", {}
    word, _, rest = text.partition(" ")
    word = _ALIASES.get(word.lower(), word.lower())
    rest = rest.strip()
    if word in ("help", "?"):
        return "help", {}
    if word in ("params", "show"):
        return "params", {}
    if word not in LIVE_PARAMS:
        raise ValueError(f"unknown command {word!r}; {COMMAND_HELP}")
    if not rest and word not in ("prompt", "negative_prompt"):
        raise ValueError(f"{word} needs a value, e.g. '{word} {'off' if word == 'smoothing' else '1'}'")
    return "set", validate_params({word: rest})


def initial_params(config: PipelineConfig) -> dict[str, Any]:
    """The live parameters a pipeline starts with, in the shape GET /params reports."""
    return {
        "prompt": config.prompt,
        "negative_prompt": config.negative_prompt,
        "strength": config.strength,
        "seed": config.seed,
        "num_inference_steps": config.num_inference_steps,
        "guidance_scale": config.guidance_scale,
        "smoothing": config.smoothing.enabled,
    }


class LiveParams:
    """The current parameters of some streams; ``apply`` checks a change and sends it to the worker."""

    def __init__(self, worker: Any, stream_ids: Iterable[str], initial: Mapping[str, Any] | None = None) -> None:
        self.worker = worker
        self.stream_ids = list(stream_ids)
        self._current = dict(initial or {})
        self._lock = threading.Lock()  # guards _current: held for a moment, never across the worker
        self._changing = threading.Lock()  # one change at a time, so the reported state matches the model

    @property
    def current(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._current)

    def apply(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Validate, update every stream, return all current parameters. ValueError if a value is bad."""
        params = validate_params(changes)
        if not params:
            return self.current
        with self._changing:
            for stream_id in self.stream_ids:
                self.worker.update(stream_id, **params).result(timeout=UPDATE_TIMEOUT_S)
            with self._lock:  # GET /params reads while a change waits for the worker: it sees the old state
                for key, value in params.items():
                    if key == "smoothing":
                        self._current["smoothing"] = value.get("enabled", self._current.get("smoothing", True))
                    else:
                        self._current[key] = value
                return dict(self._current)


class TerminalControl:
    """Reads commands typed on stdin (``prompt a watercolor``, ``strength 0.6``...) on a daemon thread."""

    def __init__(self, params: LiveParams, stream: TextIO | None = None,
                 reply: Callable[[str], None] | None = None) -> None:
        self.params = params
        self.stream = stream or sys.stdin
        self.reply = reply or (lambda text: print(text, file=sys.stderr, flush=True))
        self._thread = threading.Thread(target=self._run, name="control-stdin", daemon=True)

    def start(self) -> TerminalControl:
        self._thread.start()
        return self

    def handle(self, line: str) -> str | None:
        """Apply one line; return the reply to show (None for an empty line)."""
        try:
            kind, params = parse_command(line)
            if kind == "none":
                return None
            if kind == "help":
                return COMMAND_HELP
            if kind == "params":
                return json.dumps(self.params.current)
            current = self.params.apply(params)
            return "ok: " + ", ".join(f"{k}={current.get(k)!r}" for k in params)
        except ValueError as exc:
            return f"error: {exc}"
        except Exception as exc:  # noqa: BLE001 - keep the control loop alive whatever the pipeline says
            return f"error: the pipeline refused the change: {exc}"

    def _run(self) -> None:
        for line in self.stream:
            answer = self.handle(line)
            if answer:
                self.reply(answer)
