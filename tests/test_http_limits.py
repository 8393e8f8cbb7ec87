"""Read timeouts and the connection cap of the one server start-up, the safe JSON reader, --allow-host and
the data channel: in-process servers on 127.0.0.1 with short settings, raw sockets, a real aiortc peer."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
from http_helpers import call, one_line

from pipelines.passthrough import PassthroughPipeline
from streamer.control.http import ControlServer
from streamer.control.params import ParamsController
from streamer.engine.worker import GpuWorker
from streamer.server.auth import Access
from streamer.server.bodies import loads_object
from tests.servers import serving
from tests.webrtc_helpers import InvertingPipeline, loopback_ice, open_browser_like


async def dropped_after(port: int, first: bytes, trickle: bytes, limit: float) -> tuple[float, bytes]:
    """Send ``first``, then ``trickle`` a byte every 0.2 s; return (seconds until the server answered or
    closed, what it sent). Fails after ``limit`` s."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.monotonic()
    writer.write(first)
    answer = asyncio.ensure_future(reader.read(4096))
    try:
        for byte in trickle:
            if answer.done() or time.monotonic() - start > limit:
                break
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:
                break
            await asyncio.wait([answer], timeout=0.2)
        data = await asyncio.wait_for(answer, max(0.1, limit - (time.monotonic() - start)))
        return time.monotonic() - start, data
    finally:
        writer.close()


def test_slow_headers_and_slow_bodies_are_dropped() -> None:
    async def scenario() -> None:
        async with serving(InvertingPipeline(), read_timeout=1.5) as server:
            port = server.port
            # A slowloris: one header byte every 0.2 s, forever.
            took, data = await dropped_after(port, b"GET /config HTTP/1.1\r\n", b"X-Slow: " + b"a" * 1000, 8)
            print(f"slow headers dropped after {took:.1f} s")
            assert data == b"" and 1.0 < took < 6, (took, data)
            # A silent connection.
            took, data = await dropped_after(port, b"", b"", 8)
            assert data == b"" and took < 6
            # Headers complete, then the body trickles: 408 with one line.
            head = (b"POST /offer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 5000\r\n\r\n")
            took, data = await dropped_after(port, head, b" " * 5000, 8)
            print(f"slow body answered after {took:.1f} s")
            assert data.startswith(b"HTTP/1.1 408") and took < 6, (took, data)
            one_line(data.partition(b"\r\n\r\n")[2].decode())

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_connection_cap_answers_503_and_frees_up() -> None:
    async def scenario() -> None:
        async with serving(InvertingPipeline(), max_connections=5, read_timeout=30) as server:
            port = server.port
            held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
            await asyncio.sleep(0.2)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            refused = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            assert refused.startswith(b"HTTP/1.1 503") and b"too many connections" in refused
            for _, w in held:
                w.close()
            await asyncio.sleep(0.3)
            status, _ = await asyncio.to_thread(call, port, "GET", "/healthz")
            assert status == 200

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_control_server_drops_slow_headers() -> None:
    worker = GpuWorker(PassthroughPipeline())
    params = ParamsController(worker, ["default"], {"strength": 0.5})
    try:
        with ControlServer(params, 0, read_timeout=1.0) as server:
            took, data = asyncio.run(dropped_after(server.port, b"GET /params HTTP/1.1\r\n", b"X: " + b"a" * 500, 8))
            assert data == b"" and took < 5, (took, data)
            assert call(server.port, "GET", "/params")[0] == 200
    finally:
        worker.close()


def test_data_channel_messages_go_through_the_safe_reader() -> None:
    async def scenario() -> None:
        async with serving(InvertingPipeline()) as server:
            port = server.port
            peer = await open_browser_like(f"http://127.0.0.1:{port}", width=96, height=64)
            try:
                await peer.wait_frames(2)
                peer.channel.send('{"type": "params", "strength": NaN}')
                peer.channel.send('{"type": "params", "prompt": ' + "[" * 5000 + "]" * 5000 + "}")
                for _ in range(100):
                    errors = [json.loads(m)["error"] for m in peer.messages if json.loads(m).get("ok") is False]
                    if len(errors) == 2:
                        break
                    await asyncio.sleep(0.05)
                assert "NaN is not a JSON number" in errors[0], errors
                assert "deeper than 32" in errors[1], errors
            finally:
                await peer.close()

    with loopback_ice():
        asyncio.run(asyncio.wait_for(scenario(), 60))


def test_safe_json_reader_limits() -> None:
    assert loads_object('{"a": [[1, 2.5, "]]]]"]], "n": -' + "9" * 100 + "}")["a"] == [[1, 2.5, "]]]]"]]
    for text, words in (('{"a": NaN}', "NaN"), ('{"a": 1e400}', "too large"), ("[1]", "JSON object"),
                        ('{"a": ' + "1" * 101 + "}", "101 digits"), ('{"a": ' + "[" * 33 + "]" * 33 + "}", "32"),
                        ("{", "not valid JSON"), (b"\xff", "UTF-8")):
        with pytest.raises(ValueError, match=words):
            loads_object(text)


def test_allow_host_adds_a_name_and_a_wildcard_bind_takes_addresses_only() -> None:
    async def scenario() -> None:
        async with serving(InvertingPipeline(), allow_hosts=["Studio.Local"]) as server:
            port = server.port
            for host, status in (("studio.local", 200), (f"STUDIO.local:{port}", 200), ("gpu-box", 421),
                                 ("studio.local.attacker.example", 421), ("192.168.1.5", 421)):
                assert (await asyncio.to_thread(call, port, "GET", "/config", host=host))[0] == status, host

    asyncio.run(asyncio.wait_for(scenario(), 60))
    everywhere = Access(bound_host="0.0.0.0")
    assert everywhere.host_allowed("192.168.1.5:8080") and everywhere.host_allowed("[fe80::1]:8080")
    assert not everywhere.host_allowed("gpu-box:8080") and not everywhere.host_allowed("a b")


def test_a_hostile_json_body_does_not_stall_the_server() -> None:
    """A body of 128 kB of escaped quotes in an unclosed string (the depth pre-check once backtracked over it
    for about a minute, on the event loop) is refused with one line, and the server answers others meanwhile."""
    hostile = b'{"prompt": "' + b'\\"' * 64_000

    async def scenario() -> None:
        async with serving(InvertingPipeline()) as server:
            async with aiohttp.ClientSession() as http:
                started = time.monotonic()
                post = asyncio.ensure_future(http.post(f"{server.url}/offer", data=hostile,
                                                       headers={"Content-Type": "application/json"}))
                await asyncio.sleep(0.05)
                async with http.get(f"{server.url}/healthz") as response:  # the loop is free meanwhile
                    assert response.status == 200
                answered = time.monotonic() - started
                response = await asyncio.wait_for(post, 30)
                assert response.status == 400, await response.text()
                assert "not valid JSON" in one_line(await response.text())
                response.release()
                print(f"another request answered after {answered:.2f} s while the hostile body was read")
                assert answered < 5, answered  # was about a minute: every session's video stalled with it

    asyncio.run(scenario())
