"""Live parameters: one model (LiveParams) for every surface, and a change applied whole or not at all.

Against the real things: the tiny model (random components built in-process), `streamer run` as a
subprocess with its HTTP control port and its terminal, and `serve`'s app on a real port with an aiortc peer.
"""

from __future__ import annotations

import asyncio
import json
import math
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import torch
from conftest import free_port
from test_pipeline import gradient
from test_run_cli import start, stop, streamer
from test_server import run_async

from pipelines import load_pipeline
from pipelines.config import LiveParams
from pipelines.errors import PipelineError
from pipelines.presets import build_config, read_yaml
from tests.http_helpers import when_it_answers
from tests.servers import serving
from tests.webrtc_helpers import open_browser_like

# A change no LCM schedule can run: at strength 0.1 the tiny model's 50-step schedule keeps 5 steps.
NO_SCHEDULE = {"num_inference_steps": 8, "strength": 0.1}
# Raw JSON bodies with numbers no parameter takes (NaN, Infinity, overflow to inf, huge ints, true).
BAD_BODIES = ['{"guidance_scale": NaN}', '{"strength": Infinity}', '{"strength": 1e400}',
              '{"seed": 1000000000000000000000000000000}', '{"num_inference_steps": true}',
              '{"guidance_scale": -Infinity}', '{"seed": -1}']


# --- the shared model ------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 7, 2**63 - 1, 2**63, 10**30, -1, 2.5, True, float("nan"), "12"])
def test_a_config_file_and_a_live_change_take_the_same_seeds(tmp_path: Path, seed: Any) -> None:
    """One range, two surfaces: a YAML config and a live change accept and refuse the same seed."""
    path = tmp_path / "setup.yaml"
    path.write_text(f"seed: {json.dumps(seed) if not isinstance(seed, float) or math.isfinite(seed) else '.nan'}\n")
    try:
        config_seed: Any = build_config("tiny", read_yaml(path)).seed
    except PipelineError as exc:
        assert "seed must be a whole number from 0 to 2**63-1" in str(exc)
        config_seed = None
    try:
        live_seed: Any = LiveParams.parse({"seed": seed}).seed
    except ValueError as exc:
        assert "seed must be a whole number from 0 to 2**63-1" in str(exc) and "\n" not in str(exc)
        live_seed = None
    assert config_seed == live_seed


@pytest.mark.parametrize("change", [
    {"strength": float("nan")}, {"strength": "nan"}, {"guidance_scale": float("nan")}, {"guidance_scale": "inf"},
    {"strength": float("inf")}, {"seed": 10**30}, {"seed": 10**5000}, {"num_inference_steps": 10**30},
    {"guidance_scale": 10**30}, {"strength": True}, {"num_inference_steps": True}, {"seed": False},
    {"prompt": "x" * 2001}, {"prompt": 3}, {"smoothing": {"input_blend": float("nan")}},
    {"smoothing": {"max_skip": True}}, {"smoothing": {"motion_threshold": "inf"}}, {"colour": "red"},
    {"seed": None}, ["seed", 1],
])
def test_live_params_refuse_with_one_line_naming_the_value(change: Any) -> None:
    with pytest.raises(ValueError) as info:
        LiveParams.parse(change)
    message = str(info.value)
    assert "\n" not in message and len(message) < 300
    name = next(iter(change)) if isinstance(change, dict) else "JSON object"
    assert name in message


def test_live_params_keep_what_the_surfaces_accepted() -> None:
    assert LiveParams.parse({"strength": "0.6", "seed": "3", "num_inference_steps": 2.0, "smoothing": "off",
                             "prompt": "  a watercolor "}).changes() == {
        "prompt": "a watercolor", "strength": 0.6, "num_inference_steps": 2, "seed": 3,
        "smoothing": {"enabled": False}}
    assert LiveParams.parse({"smoothing": {"input_blend": 0.2}}).changes() == {"smoothing": {"input_blend": 0.2}}
    assert LiveParams.parse({}).changes() == {}


# --- StreamPipeline.update: all or nothing -----------------------------------------------------------------

def _snapshot(state: Any) -> dict[str, Any]:
    """Every field of a stream's state, tensors copied (so a change in place would show too)."""
    out = {}
    for name, value in vars(state).items():
        if isinstance(value, torch.Tensor):
            value = value.clone()
        elif hasattr(value, "cond"):  # PromptEmbeddings
            value = (id(value), value.cond.clone())
        elif name == "smoothing":
            value = value.model_dump()
        elif name == "smoother":
            value = id(value)
        out[name] = value
    return out


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a.keys() != b.keys():
        return False
    for name in a:
        x, y = a[name], b[name]
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and torch.equal(x, y)):
                return False
        elif isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], torch.Tensor):
            if x[0] != y[0] or not torch.equal(x[1], y[1]):
                return False
        elif x != y:
            return False
    return True


def test_update_refuses_a_change_with_no_schedule_and_leaves_the_stream_as_it_was() -> None:
    pipe = load_pipeline("tiny", device="cpu")
    frame = gradient(64, 64)[None]
    before_out = pipe(frame, ["s"])
    state = pipe.streams["s"]
    before = _snapshot(state)

    with pytest.raises(ValueError, match=r"num_inference_steps 8 needs strength 0\.16 or more") as info:
        pipe.update("s", **NO_SCHEDULE)
    assert "\n" not in str(info.value)
    # Steps alone are fine at the stream's strength (0.3 keeps 15 of 50); strength alone then is not.
    pipe.update("s", num_inference_steps=8)
    pipe.update("s", num_inference_steps=1)
    after_ok = _snapshot(state)
    with pytest.raises(ValueError, match="strength"):
        pipe.update("s", num_inference_steps=8, prompt="a new prompt", seed=4, strength=0.1, guidance_scale=2.0)
    for bad in ({"guidance_scale": float("nan")}, {"strength": float("inf")}, {"seed": 10**30},
                {"num_inference_steps": True}, {"seed": 5, "colour": "red"}):
        with pytest.raises(ValueError):
            pipe.update("s", **bad)
    assert pipe.streams["s"] is state
    assert _same(_snapshot(state), after_ok)
    assert np.array_equal(pipe(frame, ["s"]), before_out)  # the same picture as before any change
    assert _same({k: v for k, v in before.items() if k != "smoother"},
                 {k: v for k, v in _snapshot(state).items() if k != "smoother"})

    # A stream a refused change would have made does not appear.
    with pytest.raises(ValueError):
        pipe.update("new", **NO_SCHEDULE)
    assert "new" not in pipe.streams

    # The next valid change applies.
    pipe.update("s", seed=9)
    assert state.seed == 9
    assert not np.array_equal(pipe(frame, ["s"]), before_out)


def test_a_change_the_model_fails_to_apply_leaves_the_stream_as_it_was() -> None:
    """The prompt encoder fails (as a GPU out of memory would) halfway through a change of seed and prompt:
    neither the new seed's noise nor anything else is kept, and the next change works."""
    pipe = load_pipeline("tiny", device="cpu")
    frame = gradient(64, 64)[None]
    before_out = pipe(frame, ["s"])
    state = pipe.streams["s"]
    before = _snapshot(state)
    prompt_pipe = pipe.components.prompt_pipe
    encode = prompt_pipe.encode_prompt

    def out_of_memory(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("CUDA out of memory")

    prompt_pipe.encode_prompt = out_of_memory
    try:
        with pytest.raises(RuntimeError, match="out of memory"):
            pipe.update("s", seed=5, strength=0.9, prompt="neon")
    finally:
        prompt_pipe.encode_prompt = encode
    assert _same(_snapshot(state), before)
    assert np.array_equal(pipe(frame, ["s"]), before_out)
    pipe.update("s", seed=5, prompt="neon")
    assert (state.seed, state.prompt) == (5, "neon")


def test_a_config_with_no_schedule_is_refused_at_load() -> None:
    with pytest.raises(PipelineError, match=r"bad setting: num_inference_steps 8 needs strength 0\.16"):
        load_pipeline("tiny", device="cpu", **NO_SCHEDULE)


def test_passthrough_takes_the_same_model() -> None:
    pipe = load_pipeline("passthrough")
    pipe.update("s", strength="0.4", smoothing="off")
    assert pipe.params["s"] == {"strength": 0.4, "smoothing": {"enabled": False}}
    with pytest.raises(ValueError, match="guidance_scale"):
        pipe.update("s", strength=0.5, guidance_scale=float("nan"))
    assert pipe.params["s"] == {"strength": 0.4, "smoothing": {"enabled": False}}


# --- streamer run: the control port and the terminal ----------------------------------------------------

def _send(method: str, url: str, body: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=None if body is None else body.encode(), method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, raw = response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read().decode()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def _error_line(body: Any) -> str:
    text = body.get("error", "") if isinstance(body, dict) else str(body)
    text = text.rstrip("\n")
    assert text and "\n" not in text, body
    return text


@pytest.mark.slow
def test_control_port_refuses_a_bad_change_whole_and_takes_the_next(tmp_path: Path) -> None:
    port = free_port()
    process = start("--source", "testsrc:128x96@15", "--sink", "out.mkv", "--preset", "tiny",
                    "--control-port", str(port), "--duration", "180", cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        status, initial = when_it_answers(process, lambda: _send("GET", f"{url}/params"), 120, "control port")
        assert status == 200 and initial["strength"] == 0.3 and initial["num_inference_steps"] == 1

        status, body = _send("POST", f"{url}/params", json.dumps(NO_SCHEDULE))
        assert status == 400, body
        assert "strength" in _error_line(body)
        assert _send("GET", f"{url}/params") == (200, initial)

        status, body = _send("POST", f"{url}/params", '{"seed": 9}')
        assert status == 200, body
        after = {**initial, "seed": 9}
        assert _send("GET", f"{url}/params") == (200, after)

        for raw in BAD_BODIES:
            status, body = _send("POST", f"{url}/params", raw)
            assert status == 400, (raw, body)
            _error_line(body)
        assert _send("GET", f"{url}/params") == (200, after)

        # The stream still runs with the change applied: frames keep coming out.
        first = _send("GET", f"{url}/stats")[1]["frames_out"]
        deadline = time.monotonic() + 60
        while _send("GET", f"{url}/stats")[1]["frames_out"] <= first:
            assert time.monotonic() < deadline, "no frame came out after the refused changes"
            time.sleep(0.3)
    finally:
        code, err = stop(process, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, err  # a stop by signal exits 128+N (streamer.engine.stop_signals)
    assert "Traceback" not in err


@pytest.mark.slow
def test_terminal_refuses_a_bad_change_whole_and_takes_the_next(tmp_path: Path) -> None:
    result = streamer("--source", "testsrc:128x96@15", "--sink", "out.mkv", "--preset", "tiny",
                      "--duration", "8", "--control-stdin", cwd=tmp_path,
                      stdin="steps 8\nstrength 0.1\nguidance nan\nseed 1e400\nseed 9\nparams\n")
    assert result.returncode == 0, result.stderr
    err = result.stderr
    assert "ok: num_inference_steps=8" in err
    assert "error: num_inference_steps 8 needs strength 0.16 or more" in err
    assert "error: guidance_scale must be a number from 0 to 50, got 'nan'" in err
    assert "error: seed must be a whole number" in err
    assert "ok: seed=9" in err
    shown = json.loads(next(line for line in err.splitlines() if line.startswith("{")))
    assert (shown["num_inference_steps"], shown["strength"], shown["seed"]) == (8, 0.3, 9)
    assert "Traceback" not in err


# --- serve: /sessions/{id}/params and the data channel -----------------------------------------------------

@pytest.mark.slow
def test_serve_refuses_a_bad_change_whole_and_takes_the_next() -> None:
    pipeline = load_pipeline("tiny", device="cpu")

    async def scenario() -> None:
        async with serving(pipeline) as server:
            base = server.url
            peer = await open_browser_like(base, width=128, height=96, fps=10)
            try:
                await peer.wait_frames(2, timeout=60)
                state = pipeline.streams[f"browser-{peer.session_id}"]
                initial = (state.strength, state.num_inference_steps, state.seed, state.guidance_scale)
                url = f"{base}/sessions/{peer.session_id}/params"
                async with aiohttp.ClientSession() as http:
                    async def post(body: str) -> tuple[int, Any]:
                        async with http.post(url, data=body, headers={"Content-Type": "application/json"},
                                             timeout=aiohttp.ClientTimeout(total=30)) as response:
                            return response.status, await response.json()  # {"ok": false, "error": ...}

                    status, text = await post(json.dumps(NO_SCHEDULE))
                    assert status == 400, text
                    assert "strength" in _error_line(text)
                    assert (state.strength, state.num_inference_steps, state.seed, state.guidance_scale) == initial
                    for raw in BAD_BODIES:
                        status, text = await post(raw)
                        assert status == 400, (raw, text)
                        _error_line(text)
                    assert (state.strength, state.num_inference_steps, state.seed, state.guidance_scale) == initial
                    status, text = await post('{"seed": 9}')
                    assert status == 200, text
                    assert state.seed == 9 and (state.strength, state.num_inference_steps) == initial[:2]

                # The data channel: the same refusal, then the next change applies (one message at a time:
                # the server answers each as soon as it is done, a refused value before a change the model
                # applies).
                async def ask(message: dict[str, Any]) -> dict[str, Any]:
                    seen = len(peer.messages)
                    peer.channel.send(json.dumps(message))
                    deadline = time.monotonic() + 30
                    while True:
                        replies = [json.loads(m) for m in peer.messages[seen:]]
                        replies = [r for r in replies if r.get("type") == "params"]
                        if replies:
                            return replies[0]
                        assert time.monotonic() < deadline, peer.messages
                        await asyncio.sleep(0.05)

                reply = await ask({"type": "params", **NO_SCHEDULE})
                assert reply["ok"] is False and "strength" in reply["error"]
                reply = await ask({"type": "params", "guidance_scale": float("nan")})
                assert reply["ok"] is False and "NaN" in reply["error"]  # refused as JSON, before the model
                reply = await ask({"type": "params", "guidance_scale": 1e6})
                assert reply["ok"] is False and "guidance_scale" in reply["error"]
                assert await ask({"type": "params", "seed": 10}) == {"type": "params", "ok": True,
                                                                     "params": {"seed": 10}}
                assert (state.strength, state.num_inference_steps, state.seed) == (*initial[:2], 10)
                frames = len(peer.frames)
                await peer.wait_frames(frames + 2, timeout=60)  # still stylizing
            finally:
                await peer.close()

    run_async(scenario, timeout=240)
