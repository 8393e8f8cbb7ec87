"""`streamer serve`: real aiortc peers over 127.0.0.1 against the real aiohttp app (in-process on a real
port, or the `streamer serve` command as a subprocess)."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from streamer.observe.prometheus import exposition
from streamer.observe.stats import RunStats
from tests.servers import ROOT, serving, start_streamer
from tests.webrtc_helpers import (
    BRIGHT,
    DARK,
    InvertingPipeline,
    Peer,
    loopback_ice,
    open_browser_like,
    sent_pts,
    whep_play,
    whip_publish,
)

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def run_async(scenario: Callable[[], Awaitable[None]], timeout: float = 60.0) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(scenario(), timeout)

    with loopback_ice():
        asyncio.run(bounded())


def is_inverted(frame) -> bool:
    """Input left is bright, right dark: inverted output has them the other way round."""
    return frame.left.mean() < 255 - BRIGHT + 30 and frame.right.mean() > 255 - DARK - 30


async def get_json(url: str, headers: dict | None = None) -> dict:
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
            assert response.status == 200, await response.text()
            return await response.json()


async def wait_sessions(base: str, expected: int, timeout: float, headers: dict | None = None) -> float:
    start = time.monotonic()
    while True:
        counts = (await get_json(f"{base}/sessions", headers))["counts"]
        if sum(counts.values()) == expected:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"sessions {counts}, wanted {expected} in total")
        await asyncio.sleep(0.1)


def assert_pts_kept(received: list[int]) -> None:
    """Each frame came back with the pts it was sent with: the received ones follow the sent pattern
    (irregular spacing) from some frame on, up to the receiver's origin and aiortc's VP8 encoder, which
    rounds each timestamp by a tick or two."""
    sent = np.array([sent_pts(i) for i in range(3000)])
    for first in range(120):
        shifted = np.array(received) + sent[first]
        nearest = np.abs(shifted[:, None] - sent[None, :]).min(axis=1)
        if (nearest <= 4).all():
            return
    raise AssertionError(f"pts not kept: received {received[:12]}, sent {sent[:12].tolist()}")


def test_offer_stylizes_keeps_timestamps_and_takes_live_params() -> None:
    pipeline = InvertingPipeline()

    async def scenario() -> None:
        async with serving(pipeline) as server:
            base = server.url
            peer = await open_browser_like(base)
            try:
                await peer.wait_frames(10)
                # Stylized, not passed through.
                assert all(is_inverted(f) for f in peer.frames[2:10]), peer.frames[:10]
                assert_pts_kept([f.pts for f in peer.frames])

                # Over POST: prompt "red" drops green and blue.
                async with aiohttp.ClientSession() as http:
                    async with http.post(f"{base}/sessions/{peer.session_id}/params",
                                         json={"prompt": "a red painting"}) as response:
                        assert response.status == 200, await response.text()
                        assert (await response.json())["params"] == {"prompt": "a red painting"}
                    async with http.post(f"{base}/sessions/{peer.session_id}/params",
                                         json={"strength": 7}) as response:
                        assert response.status == 400
                        assert "strength" in await response.text()
                changed = await peer.wait_until(lambda f: f.right[1] < 60 and f.right[0] > 150, timeout=5)
                assert changed.left[0] < 100

                # Over the data channel: strength 0.5 turns everything mid grey (red channel only).
                peer.channel.send(json.dumps({"type": "params", "strength": 0.5}))
                await peer.wait_until(lambda f: abs(f.left[0] - 128) < 25 and abs(f.right[0] - 128) < 25, 5)
                replies = [json.loads(m) for m in peer.messages]
                assert {"type": "params", "ok": True, "params": {"prompt": "a red painting", "strength": 0.5}} \
                    in replies  # every current parameter, as POST answers (and `run --control-port`)
                peer.channel.send(json.dumps({"type": "params", "seed": "x"}))
                for _ in range(50):
                    if any(json.loads(m).get("ok") is False for m in peer.messages):
                        break
                    await asyncio.sleep(0.05)
                errors = [json.loads(m)["error"] for m in peer.messages if json.loads(m).get("ok") is False]
                assert errors and "seed" in errors[0]
                stream_id = next(iter(pipeline.params))
            finally:
                await peer.close()
            # The peer hung up: the session and its stream state go within seconds.
            await wait_sessions(base, 0, timeout=5)
            for _ in range(20):
                if stream_id in pipeline.removed:
                    break
                await asyncio.sleep(0.1)
            assert stream_id in pipeline.removed

    run_async(scenario)


def test_whip_publish_whep_play_and_delete() -> None:
    async def scenario() -> None:
        async with serving(InvertingPipeline()) as server:
            base = server.url
            publisher = await whip_publish(base, width=160, height=120)
            viewer = None
            try:
                assert re.fullmatch(r"/whip/[\w-]+", publisher.location)
                viewer = await whep_play(base)
                assert re.fullmatch(r"/whep/[\w-]+", viewer.location)
                await viewer.wait_frames(8)
                assert all(is_inverted(f) for f in viewer.frames[3:8]), viewer.frames[:8]
                assert (await get_json(f"{base}/sessions"))["counts"] == {"browser": 0, "whip": 1, "whep": 1}
                async with aiohttp.ClientSession() as http:
                    async with http.delete(f"{base}{publisher.location}") as response:
                        assert response.status == 200
                    # Ending the ingest ends its viewers too.
                    await wait_sessions(base, 0, timeout=5)
                    async with http.delete(f"{base}{publisher.location}") as response:
                        assert response.status == 404
                    async with http.post(f"{base}/whep", data=b"v=0\r\nm=video 9 UDP 0\r\n",
                                         headers={"Content-Type": "application/sdp"}) as response:
                        assert response.status == 404, "nothing to watch once the publisher left"
            finally:
                await publisher.close()
                if viewer is not None:
                    await viewer.close()

    run_async(scenario)


def test_token_limits_and_bad_requests() -> None:
    async def scenario() -> None:
        async with serving(InvertingPipeline(), token=TOKEN, max_sessions=1, max_body=64 * 1024) as server:
            base = server.url
            async with aiohttp.ClientSession() as http:
                # The page itself is public; it sends the token it got from ?token=.
                async with http.get(f"{base}/?token=x") as response:
                    assert response.status == 200 and "client.js" in await response.text()
                for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                    for method, path in (("POST", "/offer"), ("POST", "/whip"), ("POST", "/whep"),
                                         ("GET", "/metrics"), ("GET", "/sessions"), ("GET", "/config"),
                                         ("POST", "/sessions/abc/params"), ("DELETE", "/whip/abc")):
                        async with http.request(method, f"{base}{path}", headers=headers, data=b"{}") as response:
                            assert response.status == 401, (method, path, headers)
                async with http.post(f"{base}/offer", headers=AUTH, json={"sdp": "hello", "type": "offer"}) as response:
                    assert response.status == 400
                    assert "malformed SDP" in await response.text()
                bad_sdp = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\nm=video nonsense\r\n"
                async with http.post(f"{base}/whip", headers={**AUTH, "Content-Type": "application/sdp"},
                                     data=bad_sdp) as response:
                    assert response.status == 400
                    assert "malformed SDP" in await response.text()
                async with http.post(f"{base}/whip", headers={**AUTH, "Content-Type": "text/plain"},
                                     data="v=0") as response:
                    assert response.status == 415
                async with http.post(f"{base}/offer", headers={**AUTH, "Content-Type": "application/json"},
                                     data=b"x" * 100_000) as response:
                    assert response.status == 413
                async with http.post(f"{base}/offer", headers={**AUTH, "Content-Type": "application/json"},
                                     data=b"{not json") as response:
                    assert response.status == 400
                async with http.get(f"{base}/metrics", headers=AUTH) as response:
                    assert response.status == 200
                    assert 'streamer_sessions{kind="browser"} 0' in await response.text()

            peer = await open_browser_like(base, headers=AUTH, width=160, height=120)
            try:
                await peer.wait_frames(3)
                with pytest.raises(RuntimeError, match="503.*limit of 1 sessions"):
                    await open_browser_like(base, headers=AUTH, width=160, height=120)
                async with aiohttp.ClientSession(headers=AUTH) as http:
                    async with http.post(f"{base}/sessions/{peer.session_id}/params",
                                         json={"colour": "blue"}) as response:
                        assert response.status == 400 and "unknown parameter 'colour'" in await response.text()
            finally:
                await peer.close()

    run_async(scenario)


def test_vanished_client_is_cleaned_up_within_seconds() -> None:
    """A peer killed mid-stream (no goodbye): its session closes after the idle timeout."""

    async def scenario() -> None:
        async with serving(InvertingPipeline(), idle_timeout=1.5) as server:
            base = server.url
            client = await asyncio.create_subprocess_exec(
                sys.executable, str(ROOT / "tests" / "webrtc_helpers.py"), "client", base,
                stdout=asyncio.subprocess.PIPE, cwd=ROOT, start_new_session=True)
            try:
                line = await asyncio.wait_for(client.stdout.readline(), 20)
                assert line.startswith(b"session "), line
                session_id = line.split()[1].decode()
                for _ in range(100):
                    sessions = (await get_json(f"{base}/sessions"))["sessions"]
                    if any(s["id"] == session_id and s["frames"] > 3 for s in sessions):
                        break
                    await asyncio.sleep(0.1)
                else:
                    raise AssertionError(f"the client's frames never came through: {sessions}")
            finally:
                client.kill()
                await asyncio.wait_for(client.wait(), 10)
            took = await wait_sessions(base, 0, timeout=8)
            print(f"vanished peer cleaned up after {took:.1f} s")

    run_async(scenario)


async def eight_sessions(pipeline, timeout: float, while_open=None) -> dict[str, str]:
    """8 browser-like peers at once; every one must receive frames. ``while_open()`` runs before they
    hang up. Returns the /metrics values."""
    async with serving(pipeline, max_sessions=8) as server:
        base = server.url
        peers: list[Peer] = []
        try:
            for _ in range(8):
                peers.append(await open_browser_like(base, width=96, height=64, fps=15, channel=False))
            await asyncio.gather(*(p.wait_frames(5, timeout=timeout) for p in peers))
            assert all(len(p.frames) >= 5 for p in peers)
            if while_open is not None:
                while_open()
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{base}/metrics") as response:
                    text = await response.text()
            return dict(re.findall(r"^(streamer_\S+) (\S+)$", text, re.M))
        finally:
            await asyncio.gather(*(p.close() for p in peers))


def assert_batched(values: dict[str, str], label: str) -> None:
    calls = float(values["streamer_batch_size_count"])
    frames = float(values["streamer_batch_size_sum"])
    print(f"{label}: {calls:.0f} calls, {frames:.0f} frames, {frames / calls:.2f} frames a call")
    assert values['streamer_sessions{kind="browser"}'] == "8"
    assert calls > float(values['streamer_batch_size_bucket{le="1"}']), "no model call carried more than one frame"


def test_eight_sessions_share_batches() -> None:
    """8 peers on a pipeline that takes 50 ms a call: every one gets stylized frames, and calls carry several."""
    pipeline = InvertingPipeline(delay=0.05)

    async def scenario() -> None:
        assert_batched(await eight_sessions(pipeline, timeout=30), "8 sessions")
        assert max(pipeline.batch_sizes) > 1

    run_async(scenario, timeout=80)


@pytest.mark.slow
def test_eight_sessions_with_the_tiny_model_batch() -> None:
    """The same with the real (tiny) diffusion model; each session keeps its own stream state."""
    from pipelines import load_pipeline

    pipeline = load_pipeline("tiny", device="cpu")

    def own_state_per_session() -> None:  # prompt, noise and smoothing state for each of the 8
        assert len(pipeline.streams) >= 8

    async def scenario() -> None:
        values = await eight_sessions(pipeline, timeout=60, while_open=own_state_per_session)
        assert_batched(values, "8 tiny sessions")

    run_async(scenario, timeout=120)


# ---- the `streamer serve` command ------------------------------------------------------------------------

def streamer(*args: str) -> list[str]:
    return [sys.executable, "-m", "streamer", "serve", *args]


def test_serve_refuses_a_public_address_without_token() -> None:
    result = subprocess.run(streamer("--host", "0.0.0.0", "--preset", "passthrough"), capture_output=True,
                            text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--token" in lines[0] and "--insecure" in lines[0], result.stderr


@pytest.mark.slow
def test_serve_command_with_tiny_model(tmp_path: Path) -> None:
    """The real command: tiny preset, token, HTTPS off; frames come back changed; SIGTERM stops it cleanly."""
    served = start_streamer(["serve", "--port", "0", "--token", TOKEN, "--preset", "tiny", "--strength", "0.4",
                             "--ice-address", "127.0.0.1"], tmp_path / "serve.log",
                            r"serving on (http://127\.0\.0\.1:\d+)/")
    log, base = served.log, served.url
    try:

        async def scenario() -> None:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{base}/metrics") as response:
                    assert response.status == 401
            peer = await open_browser_like(base, headers=AUTH, width=128, height=96)
            try:
                await peer.wait_frames(5, timeout=30)
                frame = peer.frames[-1]
                changed = max(np.abs(frame.left - BRIGHT).mean(), np.abs(frame.right - DARK).mean())
                assert changed > 20, f"the tiny model's output looks like its input: {frame}"
                config = await get_json(f"{base}/config", AUTH)
                assert config["iceServers"] == [] and config["defaults"]["strength"] == 0.4
            finally:
                await peer.close()

        run_async(scenario)
        assert served.stop() == 0, log.read_text()
        assert "shutting down" in log.read_text()
    finally:
        served.stop(signal.SIGKILL)


def test_watch_relays_one_stylized_source_to_many_viewers() -> None:
    """--source: stylized once on the worker, relayed to every viewer of /whep?stream=source (/watch)."""
    from streamer.sources import open_source

    pipeline = InvertingPipeline()

    async def scenario() -> None:
        source = open_source("testsrc:160x120@15")
        source.open()
        viewers: list[Peer] = []
        async with serving(pipeline, source=source) as server:
            base = server.url
            try:
                async with aiohttp.ClientSession() as http:
                    async with http.get(f"{base}/watch") as response:
                        assert response.status == 200 and "/whep" in await response.text()
                assert (await get_json(f"{base}/config"))["streams"] == ["source"]
                viewers = [await whep_play(base, stream="source") for _ in range(3)]
                await asyncio.gather(*(v.wait_frames(10, timeout=20) for v in viewers))
                model_frames = sum(pipeline.batch_sizes)
                per_viewer = max(len(v.frames) for v in viewers)
                assert model_frames < 1.5 * per_viewer + 10, (model_frames, per_viewer)
                with pytest.raises(RuntimeError, match="404"):
                    await whep_play(base, stream="nope")
            finally:
                await asyncio.gather(*(v.close() for v in viewers))
        assert not any(t.name == "source:testsrc" for t in threading.enumerate())  # the reader stopped

    run_async(scenario)


@pytest.mark.slow
def test_serve_over_https_with_a_certificate(tmp_path: Path) -> None:
    """--cert/--key: the page and the signalling answer over TLS (a self-signed certificate made here)."""
    import ssl

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out",
                    str(cert)], check=True, capture_output=True,
                   timeout=60)
    served = start_streamer(["serve", "--port", "0", "--token", TOKEN, "--preset", "passthrough", "--cert",
                             str(cert), "--key", str(key), "--ice-address", "127.0.0.1"], tmp_path / "serve.log",
                            r"serving on (https://127\.0\.0\.1:\d+)/")
    base = served.url
    try:
        context = ssl.create_default_context(cafile=str(cert))  # trusts exactly this certificate

        async def scenario() -> None:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{base}/", ssl=context) as response:
                    assert response.status == 200 and "<video" in await response.text()
                async with http.get(f"{base}/metrics", ssl=context) as response:
                    assert response.status == 401
                async with http.get(f"{base}/metrics", ssl=context, headers=AUTH) as response:
                    assert response.status == 200

        run_async(scenario)
        assert served.stop(signal.SIGHUP) == 0, served.text()  # the terminal closed: a clean stop
        assert "shutting down" in served.text()
    finally:
        served.stop(signal.SIGKILL)


def test_dropped_frames_are_counted_as_they_drop_and_stay_counted():
    """Counted when a newer frame replaces one nobody took (no reader needed) while someone watches the
    stream, and the Prometheus counter keeps them after the stream is gone (a counter that went down would
    read as a reset). A stream nobody watches is not stylized at all: its frames are not dropped ones."""
    from aiortc import RTCConfiguration, RTCPeerConnection

    from streamer.server.sessions import Session, SessionManager, SourceFeed
    from streamer.sources.testsrc import TestSource

    async def scenario() -> None:
        metrics = RunStats()
        manager = SessionManager(None, metrics, ice=RTCConfiguration())  # type: ignore[arg-type]
        source = TestSource(160, 120, 30.0)
        source.open()
        feed = SourceFeed(source, asyncio.get_running_loop())
        manager.add_source(feed)
        feed.start()  # frames arrive at 30 fps and nobody takes them
        try:
            stats = manager.broadcasts["source"].track.stats
            await asyncio.sleep(0.5)
            assert stats.dropped == 0
            viewer = Session(id="v", kind="whep", pc=RTCPeerConnection(RTCConfiguration()),
                             broadcast_key="source", connected=True)
            manager.sessions[viewer.id] = viewer
            await asyncio.sleep(0.5)
            assert stats.dropped >= 5
            await manager.close(viewer.id)
            await asyncio.sleep(0.2)
            dropped = stats.dropped
            await asyncio.sleep(0.3)
            assert stats.dropped == dropped  # nobody watches again
            assert f'streamer_frames_dropped_total{{where="capture"}} {dropped}\n' in exposition(metrics, manager.counts())
        finally:
            await asyncio.to_thread(feed.stop)

    asyncio.run(scenario())


def test_serve_source_latency_counts_from_the_source_capture_time():
    """`serve --source`: latency is the source's capture time to the track's send, as in `run` (capture to
    the sink's write), not the time the server's reader got the frame. The test pattern writes its capture
    time into the pixels; a source that hands each frame over 250 ms after capturing it shows that."""
    from aiortc import RTCConfiguration

    from pipelines.passthrough import PassthroughPipeline
    from streamer.engine.worker import GpuWorker
    from streamer.server.sessions import SessionManager, SourceFeed
    from streamer.sources.testsrc import TestSource, marks_age_ms, read_marks

    class LateTestSource(TestSource):  # like a slow decoder: frames come 250 ms after their capture
        def read(self, timeout: float | None = None):
            frame = super().read(timeout)
            if frame is not None:
                time.sleep(0.25)
            return frame

    async def scenario() -> None:
        metrics = RunStats()
        worker = GpuWorker(PassthroughPipeline(), on_batch=metrics.batch)
        manager = SessionManager(worker, metrics, ice=RTCConfiguration())
        source = LateTestSource(160, 120, 10.0)
        source.open()
        feed = SourceFeed(source, asyncio.get_running_loop())
        manager.add_source(feed)
        feed.start()
        track = manager.broadcasts["source"].track
        try:
            for _ in range(4):
                video = await track.recv()
                marks = read_marks(video.to_ndarray(format="rgb24"))
                assert marks is not None
                age_ms, reported_ms = marks_age_ms(marks[1]), track.stats.last_latency * 1000
                print(f"age from the pixels {age_ms} ms, reported {reported_ms:.0f} ms")
                assert reported_ms >= 250
                assert abs(age_ms - reported_ms) < 30  # the server measures what the pixels say
        finally:
            await asyncio.to_thread(feed.stop)
            await asyncio.to_thread(worker.close, 10)

    asyncio.run(scenario())


def test_the_page_gets_turn_credentials_and_stun_urls_alone():
    """A browser's RTCPeerConnection throws on a turn: server without username and credential."""

    async def scenario() -> None:
        async with serving(InvertingPipeline(), ice_servers=["stun:127.0.0.1:3478", "turn:127.0.0.1:3478"],
                           ice_username="u", ice_credential="p") as server:
            base = server.url
            config = await get_json(f"{base}/config")
        assert config["iceServers"] == [{"urls": "stun:127.0.0.1:3478"},
                                        {"urls": "turn:127.0.0.1:3478", "username": "u", "credential": "p"}]

    asyncio.run(scenario())
