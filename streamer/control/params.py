"""Change prompt, strength, seed and smoothing while a stream runs: the one handler of live changes
(``ParamsController``) and the terminal's lines (HTTP: control_http).

Every surface (`run`'s terminal and --control-port, `serve`'s POST /sessions/{id}/params and its data
channel) hands a change to ``ParamsController.answer``, so all give the same answers: 200 with
``{"ok": true, "params": {every current parameter}}``; a change refused (a value, an empty change, or steps
and strength that make no schedule) 400 with ``{"ok": false, "error": "one line"}`` and nothing changed; a
pipeline that fails to apply a valid change (not the client's fault) 503, same shape. Every change is read by
``pipelines.config.LiveParams`` (the one check of live parameters) and reaches the model through
``GpuWorker.update`` on the worker thread.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TextIO

from pipelines.conditioning.settings import reported_control
from pipelines.config import LiveParams, PipelineConfig
from pipelines.frames import LIVE_PARAMS

log = logging.getLogger(__name__)

UPDATE_TIMEOUT_S = 30.0


class ChangeFailed(RuntimeError):
    """The pipeline failed to apply a change that was valid (out of memory, a stopped worker, a timeout):
    not the client's fault (HTTP 503)."""

COMMAND_HELP = ("commands: prompt TEXT | negative_prompt TEXT | strength 0-1 | seed N | steps N | "
                "guidance X | smoothing on|off | controlnet on|off|{\"scale\": 0.5, ...} | style FILE|off | "
                "style_scale 0-2 | params | help")
_ALIASES = {"steps": "num_inference_steps", "guidance": "guidance_scale", "negative": "negative_prompt",
            "negative-prompt": "negative_prompt", "style": "style_image", "style-image": "style_image",
            "style-scale": "style_scale"}


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
        example = {"smoothing": "off", "style_image": "painting.png"}.get(word, "1")
        raise ValueError(f"{word} needs a value, e.g. '{word} {example}'")
    if word == "style_image" and rest.lower() not in ("off", "none"):  # the terminal's user names a file
        from pipelines.conditioning.style_image import read_style_file

        return "set", LiveParams.parse({word: read_style_file(rest, "style")}).changes()
    return "set", LiveParams.parse({word: rest}).changes()


def reported(name: str, value: Any) -> Any:
    """A parameter as GET /params shows it: a style image by its size and digest, never its pixels."""
    if name == "style_image" and value is not None:
        return value.label
    return value


def initial_params(config: PipelineConfig) -> dict[str, Any]:
    """The live parameters a pipeline starts with, in the shape GET /params reports."""
    params = {name: getattr(config, name) for name in LIVE_PARAMS if name in PipelineConfig.model_fields}
    params["smoothing"] = config.smoothing.enabled
    params["controlnet"] = config.control_settings().model_dump() if config.controlnets else None
    if config.ip_adapter is None:  # no style image to change (the page hides its style controls)
        params.pop("style_image", None)
        params.pop("style_scale", None)
    elif config.style_image:
        from pipelines.conditioning.style_image import read_style_file

        params["style_image"] = read_style_file(config.style_image, "style_image").label
    return params


class ParamsController:
    """The current parameters of some streams; ``apply`` checks a change and sends it to the worker.

    The streams share their parameters, so a change one of them accepts (each value, and the schedule its
    steps and strength make) every one accepts.
    """

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
        """Check the whole change, update every stream, return all current parameters. ValueError if the
        change is refused (a value, an empty change, or steps and strength together); the parameters are then
        as before. ChangeFailed if the pipeline could not apply a valid change."""
        params = LiveParams.parse(changes).changes()
        if not params:
            raise ValueError(f"no parameters given; send some of: {', '.join(LIVE_PARAMS)}")
        with self._changing:
            for stream_id in self.stream_ids:
                try:
                    self.worker.update(stream_id, **params).result(timeout=UPDATE_TIMEOUT_S)
                except ValueError:
                    raise
                except TimeoutError:
                    raise ChangeFailed(f"the pipeline did not apply the change within {UPDATE_TIMEOUT_S:g} s; "
                                       "try again") from None
                except Exception as exc:  # noqa: BLE001 - the model's failure, reported as one line
                    raise ChangeFailed(f"the pipeline could not apply the change: {_one_line(exc)}") from exc
            with self._lock:  # GET /params reads while a change waits for the worker: it sees the old state
                for key, value in params.items():
                    if key == "smoothing":
                        self._current["smoothing"] = value.get("enabled", self._current.get("smoothing", True))
                    elif key == "controlnet" and isinstance(self._current.get("controlnet"), dict):
                        self._current["controlnet"] = reported_control(self._current["controlnet"], value)
                    else:
                        self._current[key] = reported(key, value)
                return dict(self._current)

    def answer(self, changes: Any) -> tuple[int, dict[str, Any]]:
        """The answer every surface gives to a change: (HTTP status, JSON body). Blocks until the worker has
        applied it: call it off an event loop."""
        try:
            return 200, {"ok": True, "params": self.apply(changes)}
        except ValueError as exc:
            return 400, {"ok": False, "error": _one_line(exc)}
        except ChangeFailed as exc:
            log.warning("live change failed: %s", exc)
            return 503, {"ok": False, "error": str(exc)}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class TerminalControl:
    """Reads commands typed on stdin (``prompt a watercolor``, ``strength 0.6``...) on a daemon thread."""

    def __init__(self, params: ParamsController, stream: TextIO | None = None,
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
        except ValueError as exc:
            return f"error: {exc}"
        _, reply = self.params.answer(params)
        if not reply["ok"]:
            return f"error: {reply['error']}"
        return "ok: " + ", ".join(f"{k}={reply['params'].get(k)!r}" for k in params)

    def _run(self) -> None:
        for line in self.stream:
            answer = self.handle(line)
            if answer:
                self.reply(answer)
