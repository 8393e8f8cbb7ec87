"""Live changes (prompt, strength, seed, smoothing...) on every surface: `run`'s terminal and --control-port,
`serve`'s POST /sessions/{id}/params and data channel. One handler (streamer.control.ParamsController)
answers them all, so the same change gets the same answer everywhere."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import free_port
from test_run_cli import http, start, stop, streamer
from test_runtime import MarkReadingSink

from pipelines.config import LiveParams
from pipelines.passthrough import PassthroughPipeline
from streamer.control.http import ControlServer
from streamer.control.params import ParamsController, TerminalControl, parse_command
from streamer.engine.runtime import Runtime
from streamer.engine.worker import GpuWorker
from streamer.observe.stats import RunStats
from streamer.sources.testsrc import TestSource
from tests.http_helpers import when_it_answers
from tests.servers import serving
from tests.test_server import run_async
from tests.webrtc_helpers import InvertingPipeline, open_browser_like


@pytest.fixture
def passthrough_worker():
    worker = GpuWorker(PassthroughPipeline())
    try:
        yield worker
    finally:
        worker.close()


def test_live_params_name_the_bad_value() -> None:
    assert LiveParams.parse({"strength": "0.6", "seed": 3, "smoothing": "off"}).changes() == {
        "strength": 0.6, "seed": 3, "smoothing": {"enabled": False}}
    for bad, word in [({"strength": 1.5}, "strength"), ({"strength": True}, "strength"),
                      ({"seed": -1}, "seed"), ({"seed": 2.5}, "seed"), ({"prompt": 3}, "prompt"),
                      ({"smoothing": "maybe"}, "smoothing"), ({"smoothing": {"input_blend": 2}}, "input_blend"),
                      ({"colour": "red"}, "colour")]:
        with pytest.raises(ValueError, match=word):
            LiveParams.parse(bad)
    assert parse_command("prompt a watercolor") == ("set", {"prompt": "a watercolor"})
    assert parse_command("steps 2") == ("set", {"num_inference_steps": 2})
    with pytest.raises(ValueError, match="unknown command"):
        parse_command("brightness 3")


def _http(method: str, url: str, body: dict | None = None) -> tuple[int, dict | str]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw, status, kind = response.read().decode(), response.status, response.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        raw, status, kind = exc.read().decode(), exc.code, exc.headers["Content-Type"]
    return status, json.loads(raw) if kind.startswith("application/json") else raw


def test_http_control_reaches_the_pipeline_while_running(tmp_path: Path) -> None:
    pipeline = PassthroughPipeline()
    worker = GpuWorker(pipeline)
    stats = RunStats()
    params = ParamsController(worker, ["default"], {"prompt": "start", "strength": 0.5, "seed": 0, "smoothing": True})
    runtime = Runtime(TestSource(160, 96, 30.0), [MarkReadingSink()], worker, stats=stats, duration=20)
    thread = threading.Thread(target=runtime.run, daemon=True)
    try:
        with ControlServer(params, 0, stats=stats) as server:
            thread.start()
            status, body = _http("POST", f"{server.url}/params",
                                 {"prompt": "a watercolor", "strength": 0.6, "seed": 3, "smoothing": False})
            assert status == 200
            assert body == {"ok": True, "params": {"prompt": "a watercolor", "strength": 0.6, "seed": 3,
                                                   "smoothing": False}}
            assert pipeline.params["default"] == {"prompt": "a watercolor", "strength": 0.6, "seed": 3,
                                                  "smoothing": {"enabled": False}}
            status, body = _http("POST", f"{server.url}/params", {"strength": 7})
            assert status == 400 and "strength" in body["error"]
            assert pipeline.params["default"]["strength"] == 0.6  # a rejected change changes nothing
            assert _http("GET", f"{server.url}/params")[1]["prompt"] == "a watercolor"
            time.sleep(0.5)
            status, snap = _http("GET", f"{server.url}/stats")
            assert status == 200 and snap["frames_in"] > 0
            status, text = _http("GET", f"{server.url}/metrics")
            assert status == 200 and "streamer_frames_received_total" in text
            assert _http("GET", f"{server.url}/nothing")[0] == 404
    finally:
        runtime.stop()
        thread.join(10)
        worker.close()
    assert not thread.is_alive()


def test_terminal_control_lines(passthrough_worker: GpuWorker) -> None:
    params = ParamsController(passthrough_worker, ["default"], {"strength": 0.5})
    control = TerminalControl(params, reply=lambda text: None)
    assert control.handle("strength 0.6") == "ok: strength=0.6"
    assert control.handle("seed x").startswith("error: seed")
    assert control.handle("") is None
    assert passthrough_worker.pipeline.params["default"] == {"strength": 0.6}


def test_reading_params_does_not_wait_for_a_change_in_progress() -> None:
    """GET /params and the terminal's ``params`` read while the worker is still applying a change."""
    from concurrent.futures import Future

    release = threading.Event()

    class SlowWorker:
        def update(self, stream_id: str, **params: object) -> Future:
            future: Future = Future()
            threading.Thread(target=lambda: (release.wait(10), future.set_result(None)), daemon=True).start()
            return future

    params = ParamsController(SlowWorker(), ["default"], {"strength": 0.5})
    changing = threading.Thread(target=params.apply, args=({"strength": 0.7},))
    changing.start()
    time.sleep(0.2)  # the change now waits on the worker
    started = time.monotonic()
    assert params.current == {"strength": 0.5}  # the old state, at once
    assert time.monotonic() - started < 2.0  # not held until the worker is done (10 s here)
    release.set()
    changing.join(10)
    assert params.current == {"strength": 0.7}




# --- `streamer run`: the control port and the terminal, as the user runs them ------------------------

def test_http_control_while_running(tmp_path: Path) -> None:
    port = free_port()
    process = start("--source", "testsrc:160x96@30", "--sink", "out.mkv", "--preset", "passthrough",
                    "--control-port", str(port), "--duration", "120", cwd=tmp_path)
    try:
        url = f"http://127.0.0.1:{port}/params"
        status, params = when_it_answers(process, lambda: http("GET", url), 60, "control endpoint")
        assert status == 200 and params["smoothing"] is True
        status, reply = http("POST", url, {"prompt": "a watercolor", "strength": 0.6, "seed": 3,
                                           "smoothing": False})
        assert status == 200 and reply["ok"] is True
        applied = reply["params"]
        assert (applied["prompt"], applied["strength"], applied["seed"], applied["smoothing"]) == \
            ("a watercolor", 0.6, 3, False)
        status, error = http("POST", url, {"strength": -1})
        assert status == 400 and "strength" in error["error"]
        assert http("GET", url)[1]["strength"] == 0.6
        status, stats = http("GET", f"http://127.0.0.1:{port}/stats")
        assert status == 200 and stats["frames_in"] > 0
    finally:
        code, err = stop(process, signal.SIGTERM)
    assert code == 143, err


def test_stdin_control_lines(tmp_path: Path) -> None:
    result = streamer("--source", "testsrc:160x96@30", "--sink", "out.mkv", "--preset", "passthrough",
                      "--duration", "2", "--control-stdin", cwd=tmp_path,
                      stdin="strength 0.6\nseed x\nsmoothing off\n")
    assert result.returncode == 0, result.stderr
    assert "ok: strength=0.6" in result.stderr
    assert "error: seed must be" in result.stderr
    assert "ok: smoothing=False" in result.stderr



# --- the same answers on both servers ------------------------------------------------------------------

class FailingPipeline(InvertingPipeline):
    """Fails to apply the prompt "fail" as a model out of memory would: not the client's fault."""

    def update(self, stream_id: str = "default", **params: Any) -> None:
        if params.get("prompt") == "fail":
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore lines of the trace")
        super().update(stream_id, **params)


INITIAL = {"prompt": "start", "strength": 1.0, "seed": 0, "smoothing": True}
CHANGES = [  # (what, content type, body, expected status)
    ("a valid change", "application/json", b'{"strength": 0.5, "seed": 3}', 200),
    ("an empty change", "application/json", b"{}", 400),
    ("a value out of range", "application/json", b'{"strength": 7}', 400),
    ("an unknown parameter", "application/json", b'{"colour": "red"}', 400),
    ("NaN", "application/json", b'{"strength": NaN}', 400),
    ("not JSON", "application/json", b'{"strength": ', 400),
    ("not an object", "application/json", b"[1]", 400),
    ("a form post", "text/plain", b'{"strength": 0.1}', 415),
    ("a change the pipeline fails to apply", "application/json", b'{"prompt": "fail"}', 503),
    ("the next valid change", "application/json", b'{"prompt": "a red painting", "smoothing": "off"}', 200),
]


def test_run_and_serve_give_the_same_answers_to_the_same_changes() -> None:
    """Status, JSON body and the state after each change, compared between `run --control-port` and
    `serve`'s session params route; then the data channel answers the same in its envelope."""
    run_pipeline, serve_pipeline = FailingPipeline(), FailingPipeline()
    run_worker = GpuWorker(run_pipeline)

    async def post(http: aiohttp.ClientSession, url: str, content_type: str, body: bytes) -> tuple[int, Any]:
        async with http.post(url, data=body, headers={"Content-Type": content_type},
                             timeout=aiohttp.ClientTimeout(total=30)) as response:
            assert response.content_type == "application/json", await response.text()
            return response.status, await response.json()

    async def scenario() -> None:
        with ControlServer(ParamsController(run_worker, ["default"], INITIAL), 0) as control:
            async with serving(serve_pipeline, defaults=INITIAL) as server:
                peer = await open_browser_like(server.url, width=96, height=64)
                try:
                    stream = f"browser-{peer.session_id}"
                    answers = []
                    async with aiohttp.ClientSession() as http:
                        for what, content_type, body, expected in CHANGES:
                            on_run = await post(http, f"{control.url}/params", content_type, body)
                            on_serve = await post(http, f"{server.url}/sessions/{peer.session_id}/params",
                                                  content_type, body)
                            assert on_run[0] == expected, (what, on_run)
                            assert on_run == on_serve, what
                            reply = on_run[1]
                            if expected == 200:
                                assert reply["ok"] is True and set(reply) == {"ok", "params"}, what
                            else:
                                assert reply["ok"] is False and set(reply) == {"ok", "error"}, what
                                assert reply["error"] and "\n" not in reply["error"], (what, reply)
                            assert run_pipeline.params.get("default") == serve_pipeline.params.get(stream), what
                            answers.append((what, body, reply))
                        final = {**INITIAL, "strength": 0.5, "seed": 3, "prompt": "a red painting", "smoothing": False}
                        async with http.get(f"{control.url}/params") as response:
                            assert await response.json() == final
                        status, missing = await post(http, f"{server.url}/sessions/nope/params", "application/json",
                                                     b'{"seed": 1}')
                        assert status == 404 and missing["ok"] is False and "nope" in missing["error"]
                    assert "out of memory" in dict((w, r) for w, _, r in answers)[CHANGES[8][0]]["error"]

                    # The data channel: the same answers in its {"type": "params"} envelope.
                    deadline = time.monotonic() + 30
                    while peer.channel.readyState != "open":
                        assert time.monotonic() < deadline, f"data channel {peer.channel.readyState}"
                        await asyncio.sleep(0.05)
                    for what, body, reply in answers:
                        if what in ("not JSON", "a form post", "not an object"):
                            continue  # no JSON object: the message reader's own one-line refusal
                        seen = len(peer.messages)
                        peer.channel.send('{"type": "params", ' + body.decode()[1:] if body != b"{}" else
                                          '{"type": "params"}')
                        deadline = time.monotonic() + 30
                        while not (got := [json.loads(m) for m in peer.messages[seen:]
                                           if json.loads(m).get("type") == "params"]):
                            assert time.monotonic() < deadline, (what, peer.messages[seen:])
                            await asyncio.sleep(0.05)
                        if reply["ok"]:  # every current parameter, which by now are the run's last ones
                            assert got[0] == {"type": "params", "ok": True, "params": final}, what
                        else:
                            assert got[0] == {"type": "params", **reply}, what
                finally:
                    await peer.close()

    try:
        run_async(scenario, timeout=120)
    finally:
        run_worker.close()


def test_terminal_gives_the_same_refusals(passthrough_worker: GpuWorker) -> None:
    """The terminal's lines go through the same handler: its errors are the HTTP answers' error lines."""
    params = ParamsController(passthrough_worker, ["default"], {"strength": 0.5})
    status, reply = params.answer({"strength": "7"})  # what the terminal reads from "strength 7"
    assert status == 400
    control = TerminalControl(params, reply=lambda text: None)
    assert control.handle("strength 7") == f"error: {reply['error']}"
    assert params.answer({}) == (400, {"ok": False, "error": "no parameters given; send some of: "
                                       + ", ".join(LiveParams.model_fields)})
    assert control.handle("strength 0.25") == "ok: strength=0.25"
    assert params.answer({"seed": 4}) == (200, {"ok": True, "params": {"strength": 0.25, "seed": 4}})
