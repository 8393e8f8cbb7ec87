"""The style image (IP-Adapter) through every surface: `serve`'s POST /sessions/{id}/params and `run`'s
--control-port (real servers on 127.0.0.1), the terminal, and the CLI's --style-image. A picture too large,
not a picture or of bad dimensions gets a one-line 4xx and leaves everything as it was."""

from __future__ import annotations

import base64
import io
import json
import signal
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import yaml
from conftest import free_port
from PIL import Image
from test_run_cli import http, one_error_line, start, stop, streamer

from pipelines.conditioning.style_image import MAX_STYLE_BODY_BYTES
from pipelines.conditioning.tiny_ip_adapter import save_tiny_ip_adapter, tiny_ip_adapter_config
from pipelines.factory import load_pipeline
from pipelines.tiny import tiny_components
from streamer.control.params import ParamsController, TerminalControl
from streamer.engine.worker import GpuWorker
from tests.http_helpers import when_it_answers
from tests.servers import serving
from tests.test_server import run_async
from tests.webrtc_helpers import open_browser_like


def picture(seed: int, size: tuple[int, int] = (48, 40), kind: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, kind)
    return buf.getvalue()


def data_url(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


@pytest.fixture(scope="module")
def ip_adapter(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("ipa")
    return tiny_ip_adapter_config(save_tiny_ip_adapter(folder, tiny_components("lcm")["unet"], seed=4))


def styled_pipeline(ip_adapter: dict):
    return load_pipeline("tiny", ip_adapter=ip_adapter, smoothing={"enabled": False}, device="cpu")


# What each refusal looks like, whichever surface: (what, body, status, words in the one line).
REFUSALS = [
    ("not an image", {"style_image": data_url(b"hello, not a picture")}, 400, "not an image"),
    ("text, not a data URL", {"style_image": "C:/pictures/painting.png"}, 400, "neither base64"),
    ("too small", {"style_image": data_url(picture(1, (8, 8)))}, 400, "8x8 pixels"),
    ("too wide", {"style_image": data_url(picture(1, (5000, 16)))}, 400, "5000x16 pixels"),
    ("a bad scale", {"style_image": data_url(picture(2)), "style_scale": 9}, 400, "style_scale"),
]


def test_style_image_over_serve_params_reaches_the_session(ip_adapter):
    """POST /sessions/{id}/params with a style image: the session's stream gets it (a picture larger than
    the server's 256 kB body limit for other routes is fine here); refusals are one line and change nothing;
    a body beyond the style limit is a 413."""
    pipeline = styled_pipeline(ip_adapter)
    big = picture(3, (600, 400))  # noise: about 700 kB as PNG, over the app's 256 kB for other routes
    assert 256 * 1024 < len(big) and len(data_url(big)) < MAX_STYLE_BODY_BYTES

    async def scenario() -> None:
        async with serving(pipeline) as server:
            peer = await open_browser_like(server.url, width=96, height=64)
            try:
                url = f"{server.url}/sessions/{peer.session_id}/params"
                stream = f"browser-{peer.session_id}"
                async with aiohttp.ClientSession() as client:
                    async def post(body: bytes) -> tuple[int, dict]:
                        async with client.post(url, data=body, headers={"Content-Type": "application/json"},
                                               timeout=aiohttp.ClientTimeout(total=60)) as response:
                            assert response.content_type == "application/json", await response.text()
                            return response.status, await response.json()

                    status, reply = await post(json.dumps({"style_image": data_url(big),
                                                           "style_scale": 0.9}).encode())
                    assert status == 200, reply
                    label = reply["params"]["style_image"]
                    assert label.startswith("600x400 sha256:") and reply["params"]["style_scale"] == 0.9
                    state = pipeline.streams[stream]
                    assert state.style_image.label == label and state.style_scale == 0.9
                    for what, body, expected, words in REFUSALS:
                        status, reply = await post(json.dumps(body).encode())
                        assert status == expected and reply["ok"] is False, (what, reply)
                        assert words in reply["error"] and "\n" not in reply["error"], (what, reply)
                        assert state.style_image.label == label and state.style_scale == 0.9, what
                    huge = b'{"style_image": "' + b"A" * MAX_STYLE_BODY_BYTES + b'"}'
                    status, reply = await post(huge)
                    assert status == 413 and "\n" not in reply["error"], reply
                    assert state.style_image.label == label
                    status, reply = await post(b'{"style_image": ""}')  # cleared
                    assert status == 200 and reply["params"]["style_image"] is None
                    assert state.style_image is None and state.style_row.item() == 0.0
                await peer.wait_frames(1, timeout=60)
            finally:
                await peer.close()

    run_async(scenario, timeout=240)


def test_terminal_style_reads_a_file(ip_adapter, tmp_path):
    worker = GpuWorker(styled_pipeline(ip_adapter))
    try:
        control = TerminalControl(ParamsController(worker, ["default"], {}), reply=lambda text: None)
        (tmp_path / "style.jpg").write_bytes(picture(5, (64, 64), "JPEG"))
        (tmp_path / "notes.txt").write_text("not a picture")
        answer = control.handle(f"style {tmp_path / 'style.jpg'}")
        assert answer.startswith("ok: style_image='64x64 sha256:"), answer
        assert control.handle(f"style {tmp_path / 'notes.txt'}").startswith("error: style ")
        assert "not an image" in control.handle(f"style {tmp_path / 'notes.txt'}")
        assert control.handle("style_scale 0.3") == "ok: style_scale=0.3"
        assert control.handle("style off") == "ok: style_image=None"
    finally:
        worker.close()


def _setup(tmp_path: Path, ip_adapter: dict) -> Path:
    config = tmp_path / "styled.yaml"
    config.write_text(yaml.safe_dump({"pipeline": {"preset": "tiny", "ip_adapter": ip_adapter,
                                                   "smoothing": {"enabled": False}}}))
    return config


def test_run_control_port_style_image(ip_adapter, tmp_path):
    """`streamer run --style-image` starts with the picture; --control-port changes it live (and refuses
    bad pictures with one line, changing nothing)."""
    (tmp_path / "start.png").write_bytes(picture(6))
    port = free_port()
    process = start("--config", str(_setup(tmp_path, ip_adapter)), "--style-image", "start.png",
                    "--style-scale", "0.7", "--source", "testsrc:64x64@10", "--sink", "out.mkv",
                    "--control-port", str(port), "--duration", "300", cwd=tmp_path)
    try:
        url = f"http://127.0.0.1:{port}/params"
        status, params = when_it_answers(process, lambda: http("GET", url), 120, "control endpoint")
        assert status == 200 and params["style_image"].startswith("48x40 sha256:")
        assert params["style_scale"] == 0.7
        status, reply = http("POST", url, {"style_image": data_url(picture(7, (32, 32), "JPEG"), "image/jpeg"),
                                           "style_scale": 1.1})
        assert status == 200 and reply["params"]["style_image"].startswith("32x32 sha256:"), reply
        for what, body, expected, words in REFUSALS:
            status, error = http("POST", url, body)
            assert status == expected and words in error["error"] and "\n" not in error["error"], (what, error)
        after = http("GET", url)[1]
        assert after["style_image"] == reply["params"]["style_image"] and after["style_scale"] == 1.1
    finally:
        code, err = stop(process, signal.SIGTERM)
    assert code == 143, err


@pytest.mark.parametrize("make,words", [
    (lambda d: d / "missing.png", "--style-image {d}/missing.png does not exist"),
    (lambda d: (d / "notes.txt").write_text("hello") and d / "notes.txt", "is not an image"),
    (lambda d: d, "is a folder"),
])
def test_style_image_flag_errors_are_one_line(tmp_path, make, words):
    path = make(tmp_path)
    result = streamer("--preset", "tiny", "--style-image", str(path), "--source", "testsrc:64x64@10",
                      "--sink", "out.mkv", "--duration", "1", cwd=tmp_path)
    assert result.returncode == 2
    assert words.format(d=tmp_path) in one_error_line(result.stderr)


def test_style_image_needs_an_ip_adapter(tmp_path):
    (tmp_path / "s.png").write_bytes(picture(1))
    result = streamer("--preset", "tiny", "--style-image", "s.png", "--source", "testsrc:64x64@10",
                      "--sink", "out.mkv", "--duration", "1", cwd=tmp_path)
    assert result.returncode == 2 and "needs an IP-Adapter" in one_error_line(result.stderr)
