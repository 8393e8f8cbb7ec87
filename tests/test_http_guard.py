"""Both HTTP servers (`streamer serve` and `streamer run --control-port`) against hostile requests: forged
Host (DNS rebinding), cross-site Origin, simple-request content types, tokens from a header, the page's
cookie, --token-file and $STREAMER_TOKEN, JSON that breaks parsers, bytes that break HTTP parsers, slow
headers and bodies, hundreds of idle connections. Raw sockets where a client library would tidy up the
request; real servers on 127.0.0.1 (subprocesses where the log and the threads of the process matter)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from conftest import free_port

from pipelines.passthrough import PassthroughPipeline
from streamer.control import LiveParams
from streamer.control_http import ControlServer
from streamer.server.app import ServerOptions, create_app
from streamer.server.auth import Access
from streamer.server.bodies import loads_object
from streamer.server.listen import start_http
from streamer.worker import GpuWorker
from tests.webrtc_helpers import InvertingPipeline, loopback_ice, open_browser_like

ROOT = Path(__file__).resolve().parent.parent
SERVE_TOKEN = "serve-file-token.42"
RUN_TOKEN = "run-env-token~7"
HOSTILE_JSON = {
    "NaN": b'{"strength": NaN}',
    "Infinity": b'{"strength": -Infinity}',
    "1e999": b'{"strength": 1e999}',
    "a 1000-digit integer": b'{"seed": ' + b"9" * 1000 + b"}",
    "10,000 nested arrays": b'{"prompt": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
    "not an object": b'["prompt"]',
    "not UTF-8": b'{"prompt": "\xff\xfe"}',
}


# ---- raw HTTP ------------------------------------------------------------------------------------------

def request(method: str, path: str, port: int, *, host: str | bytes | None = None, headers: tuple = (),
            body: bytes = b"") -> bytes:
    """One HTTP/1.1 request as bytes, exactly as given (``host=b""`` leaves Host out)."""
    host = f"127.0.0.1:{port}" if host is None else host
    lines = [f"{method} {path} HTTP/1.1".encode()]
    if host:
        lines.append(b"Host: " + (host if isinstance(host, bytes) else host.encode()))
    lines += [h if isinstance(h, bytes) else h.encode() for h in headers]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}".encode())
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def exchange(port: int, raw: bytes, timeout: float = 10) -> tuple[int, dict[str, str], str]:
    """Send ``raw``, read to the end: status, headers (lower-case names), body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), value.strip())
        if name.strip().lower() == "set-cookie":
            headers["set-cookie"] = value.strip()
    return int(lines[0].split()[1]), headers, body.decode("utf-8", "replace")


def call(port: int, method: str, path: str, **kwargs) -> tuple[int, str]:
    status, _, body = exchange(port, request(method, path, port, **kwargs))
    return status, body


def one_line(body: str) -> str:
    text = body.strip()
    assert text and "\n" not in text and "Traceback" not in text, body
    return text


def json_post(body: bytes, *extra: str) -> dict:
    return {"headers": ("Content-Type: application/json", *extra), "body": body}


# ---- subprocesses --------------------------------------------------------------------------------------

def start_streamer(args: list[str], log: Path, ready: str, env: dict[str, str] | None = None,
                   timeout: float = 120) -> tuple[subprocess.Popen, re.Match]:
    with open(log, "wb") as err:
        process = subprocess.Popen([sys.executable, "-m", "streamer", "-v", *args], stdout=subprocess.DEVNULL,
                                   stderr=err, cwd=log.parent, start_new_session=True,
                                   env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    deadline = time.monotonic() + timeout
    while not (match := re.search(ready, log.read_text(errors="replace"))):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_streamer(process)
            raise AssertionError(f"never ready: {log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)
    return process, match


def stop_streamer(process: subprocess.Popen) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    return process.returncode


class Served:
    def __init__(self, process: subprocess.Popen, port: int, log: Path) -> None:
        self.process, self.port, self.log = process, port, log

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`streamer run` with a control port and no token."""
    folder = tmp_path_factory.mktemp("control")
    port = free_port()
    process, _ = start_streamer(["run", "--source", "testsrc:96x64@10", "--sink", "out.mkv", "--preset",
                                 "passthrough", "--control-port", str(port), "--duration", "300"],
                                folder / "run.log", r"control on http://127\.0\.0\.1:\d+/params",
                                env={"STREAMER_TOKEN": ""})
    try:
        yield Served(process, port, folder / "run.log")
    finally:
        assert stop_streamer(process) == 0


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`streamer serve` with its token in a file."""
    folder = tmp_path_factory.mktemp("serve")
    (folder / "token").write_text(SERVE_TOKEN + "\n")
    process, match = start_streamer(["serve", "--port", "0", "--preset", "passthrough", "--token-file",
                                     str(folder / "token")], folder / "serve.log",
                                    r"serving on http://127\.0\.0\.1:(\d+)/", env={"STREAMER_TOKEN": ""})
    try:
        yield Served(process, int(match.group(1)), folder / "serve.log")
    finally:
        assert stop_streamer(process) == 0


# ---- the control port ----------------------------------------------------------------------------------

def test_control_port_refuses_cross_site_and_rebinding_requests(control: Served) -> None:
    port = control.port
    status, before = call(port, "GET", "/params")
    assert status == 200
    change = b'{"prompt": "pwned", "strength": 0.9}'
    # What any web page can send without a preflight: a text/plain form POST, with its own Origin.
    assert call(port, "POST", "/params", headers=("Content-Type: text/plain", "Origin: http://evil.example"),
                body=change)[0] == 403
    status, body = call(port, "POST", "/params", headers=("Content-Type: text/plain",), body=change)
    assert status == 415 and "application/json" in json.loads(body)["error"]
    assert call(port, "POST", "/params", **json_post(change, "Origin: http://evil.example"))[0] == 403
    assert call(port, "POST", "/params", **json_post(change, "Origin: null"))[0] == 403
    assert call(port, "POST", "/params", **json_post(change, "Sec-Fetch-Site: cross-site"))[0] == 403
    # DNS rebinding: the attacker's name resolves to 127.0.0.1, the browser sends that name as Host.
    for host in ("attacker.example", f"attacker.example:{port}", "127.0.0.1.nip.io"):
        status, body = call(port, "GET", "/params", host=host)
        assert status == 421 and "--allow-host" in one_line(body), (host, body)
        assert call(port, "POST", "/params", host=host, **json_post(change))[0] == 421
    assert call(port, "GET", "/params")[1] == before  # nothing changed
    # The loopback names, with or without the port, and the server's own page origin are fine.
    for host in (f"127.0.0.1:{port}", "localhost", f"localhost:{port}", f"[::1]:{port}", "127.0.0.1"):
        assert call(port, "GET", "/params", host=host)[0] == 200, host
    status, body = call(port, "POST", "/params", **json_post(b'{"strength": 0.7}', f"Origin: http://127.0.0.1:{port}"))
    assert status == 200 and json.loads(body)["strength"] == 0.7
    status, _, body = exchange(port, request("GET", "/stats", port))
    assert status == 200 and json.loads(body)["frames_in"] >= 0


@pytest.mark.parametrize("name", list(HOSTILE_JSON))
def test_control_port_answers_hostile_json_with_one_line(control: Served, name: str) -> None:
    before = call(control.port, "GET", "/params")[1]
    status, body = call(control.port, "POST", "/params", **json_post(HOSTILE_JSON[name]))
    assert status == 400, (name, body)
    assert json.loads(one_line(body))["error"]
    assert call(control.port, "GET", "/params")[1] == before
    assert "Traceback" not in control.text()


def test_control_port_charsets_and_hostile_header_bytes(control: Served) -> None:
    port = control.port
    for content_type in ("application/json; charset=x-unknown", "application/json; charset=latin-1"):
        status, body = call(port, "POST", "/params", headers=(f"Content-Type: {content_type}",), body=b"{}")
        assert status == 415 and "UTF-8" in one_line(body), (content_type, body)
    status, body = call(port, "POST", "/params", headers=("Content-Type: application/json; charset=UTF-8",),
                        body=b'{"seed": 5}')
    assert status == 200 and json.loads(body)["seed"] == 5
    for headers, host in (((b"X-Thing: \xff\xfe",), None), ((), b"\xff"), ((b"Origin: http://\xff",), None),
                          ((b"Authorization: Bearer \xff",), None), ((b"Cookie: streamer_token=\xff",), None)):
        status, _, body = exchange(port, request("GET", "/params", port, host=host, headers=headers))
        assert 200 <= status < 500, (headers, host, status, body)
        one_line(body)
    # Bytes the HTTP parser itself refuses: a one-line 400, not a traceback in the log.
    for raw in (b"GET /\xff HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                b"GET /params HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 TLS hello to a plain port\r\n\r\n"):
        status, _, body = exchange(port, raw)
        assert status == 400, raw
        one_line(body)
    time.sleep(0.5)
    assert "Traceback" not in control.text() and "Error handling request" not in control.text()


def test_control_port_holds_300_idle_connections_without_threads_or_tracebacks(control: Served) -> None:
    port, pid = control.port, control.process.pid
    threads_before = len(os.listdir(f"/proc/{pid}/task"))
    sockets = []
    try:
        for _ in range(300):
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        time.sleep(1.0)
        threads = len(os.listdir(f"/proc/{pid}/task"))
        refused = 0
        pending = list(sockets)
        deadline = time.monotonic() + 10
        while pending and time.monotonic() < deadline and refused < 300 - 64:
            readable, _, _ = select.select(pending, [], [], 0.5)
            for sock in readable:
                refused += sock.recv(1024).startswith(b"HTTP/1.1 503")
                pending.remove(sock)
        print(f"300 idle connections: {threads_before} -> {threads} threads, {refused} refused with 503")
        assert threads < threads_before + 8, (threads_before, threads)
        assert refused >= 300 - 64 - 5, refused  # the cap: 64 at once
    finally:
        for sock in sockets:
            sock.close()
    time.sleep(0.5)
    assert call(port, "GET", "/params")[0] == 200
    assert "Traceback" not in control.text() and "BrokenPipe" not in control.text()


def test_control_port_token_from_the_environment(tmp_path: Path) -> None:
    port = free_port()
    process, _ = start_streamer(["run", "--source", "testsrc:96x64@10", "--sink", "out.mkv", "--preset",
                                 "passthrough", "--control-port", str(port), "--duration", "300"],
                                tmp_path / "run.log", r"control on http://", env={"STREAMER_TOKEN": RUN_TOKEN})
    try:
        for headers in ((), ("Authorization: Bearer wrong",), (f"Authorization: {RUN_TOKEN}",),
                        (f"Authorization: Basic {RUN_TOKEN}",)):
            status, body = call(port, "GET", "/params", headers=headers)
            assert status == 401 and "token" in json.loads(one_line(body))["error"], headers
        for scheme in ("Bearer", "bearer", "BEARER"):
            assert call(port, "GET", "/params", headers=(f"Authorization: {scheme} {RUN_TOKEN}",))[0] == 200
        status, body = call(port, "POST", "/params",
                            **json_post(b'{"strength": 0.3}', f"Authorization: bearer {RUN_TOKEN}"))
        assert status == 200 and json.loads(body)["strength"] == 0.3
        call(port, "GET", f"/params?token={RUN_TOKEN}")
    finally:
        assert stop_streamer(process) == 0
    log = (tmp_path / "run.log").read_text(errors="replace")
    assert "GET /params?token=[redacted]" in log  # the access log is on (-v) ...
    assert RUN_TOKEN not in log  # ... and never shows the token
    assert RUN_TOKEN not in " ".join(process.args)  # nor does the process list


# ---- streamer serve ------------------------------------------------------------------------------------

def test_serve_refuses_foreign_hosts_origins_and_content_types(serve: Served) -> None:
    port, auth = serve.port, f"Authorization: Bearer {SERVE_TOKEN}"
    for path in ("/config", "/sessions", "/metrics"):
        status, body = call(serve.port, "GET", path, host="attacker.example", headers=(auth,))
        assert status == 421 and "Host" in one_line(body), (path, body)
        assert call(port, "GET", path, headers=(auth, "Origin: http://attacker.example"))[0] == 403
        assert call(port, "GET", path, headers=(auth, f"Origin: http://127.0.0.1:{port}"))[0] == 200
        assert call(port, "GET", path, host=f"localhost:{port}", headers=(auth,))[0] == 200
    assert call(port, "GET", "/", host="attacker.example")[0] == 421  # even the page: nothing for that name
    status, body = call(port, "POST", "/offer", headers=(auth, "Content-Type: text/plain"),
                        body=b'{"sdp": "v=0", "type": "offer"}')
    assert status == 415 and "application/json" in one_line(body)
    status, body = call(port, "POST", "/whep", headers=(auth, "Content-Type: text/plain"), body=b"v=0\r\n")
    assert status == 415 and "application/sdp" in one_line(body)
    status, body = call(port, "POST", "/whip", headers=(auth, "Content-Type: application/sdp; charset=x-unknown"),
                        body=b"v=0\r\n")
    assert status == 415 and "UTF-8" in one_line(body)
    for name, hostile in HOSTILE_JSON.items():
        status, body = call(port, "POST", "/offer", **json_post(hostile, auth))
        assert status == 400, (name, body)
        one_line(body)
    status, _, body = exchange(port, b"GET /\xff HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert status == 400
    one_line(body)
    time.sleep(0.5)
    assert "Traceback" not in serve.text() and "Error handling request" not in serve.text()


def test_serve_token_from_the_file_header_or_the_pages_cookie(serve: Served) -> None:
    port = serve.port
    assert call(port, "GET", "/config")[0] == 401
    assert call(port, "GET", "/config", headers=(f"Authorization: bEaReR {SERVE_TOKEN}",))[0] == 200
    status, headers, _ = exchange(port, request("GET", "/?token=wrong", port))
    assert status == 200 and "set-cookie" not in headers
    status, headers, body = exchange(port, request("GET", f"/?token={SERVE_TOKEN}", port))
    assert status == 200 and "client.js" in body
    cookie = headers["set-cookie"]
    assert cookie.startswith(f"streamer_token={SERVE_TOKEN};")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert call(port, "GET", "/config", headers=(f"Cookie: streamer_token={SERVE_TOKEN}",))[0] == 200
    assert call(port, "GET", "/config", headers=("Cookie: streamer_token=wrong",))[0] == 401
    # A page on another site cannot use the cookie: the browser names that site in Origin.
    assert call(port, "POST", "/offer", **json_post(b"{}", f"Cookie: streamer_token={SERVE_TOKEN}",
                                                    "Origin: https://evil.example"))[0] == 403
    call(port, "GET", f"/watch?stream=x&token={SERVE_TOKEN}")
    time.sleep(0.3)
    assert "/watch?stream=x&token=[redacted]" in serve.text()
    assert SERVE_TOKEN not in serve.text()


@pytest.mark.parametrize("args, words", [
    (["serve", "--token-file", "missing.txt"], "--token-file missing.txt"),
    (["serve", "--token", "a b"], "may hold only"),
    (["serve", "--token", "x", "--token-file", "t"], "not both"),
    (["serve", "--allow-host", "a:b:c"], "--allow-host"),
    (["run", "--source", "testsrc", "--token", "x"], "--control-port"),
])
def test_bad_token_flags_are_one_line_and_exit_2(tmp_path: Path, args: list[str], words: str) -> None:
    result = subprocess.run([sys.executable, "-m", "streamer", *args, "--preset", "passthrough"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "STREAMER_TOKEN": ""})
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert line.startswith("streamer: error: ") and words in line, line


# ---- in-process: timeouts and the connection cap, with short settings -----------------------------------

@asynccontextmanager
async def serving(**options):
    worker = GpuWorker(InvertingPipeline())
    options = ServerOptions(port=0, **options)
    runner, port = await start_http(create_app(options, worker), "127.0.0.1", 0, read_timeout=options.read_timeout,
                                    max_connections=options.max_connections)
    try:
        yield port
    finally:
        await asyncio.wait_for(runner.cleanup(), 15)
        await asyncio.to_thread(worker.close, 10)


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
        async with serving(read_timeout=1.5) as port:
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
        async with serving(max_connections=5, read_timeout=30) as port:
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
    params = LiveParams(worker, ["default"], {"strength": 0.5})
    try:
        with ControlServer(params, 0, read_timeout=1.0) as server:
            took, data = asyncio.run(dropped_after(server.port, b"GET /params HTTP/1.1\r\n", b"X: " + b"a" * 500, 8))
            assert data == b"" and took < 5, (took, data)
            assert call(server.port, "GET", "/params")[0] == 200
    finally:
        worker.close()


def test_data_channel_messages_go_through_the_safe_reader() -> None:
    async def scenario() -> None:
        async with serving() as port:
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
        async with serving(allow_hosts=["Studio.Local"]) as port:
            for host, status in (("studio.local", 200), (f"STUDIO.local:{port}", 200), ("gpu-box", 421),
                                 ("studio.local.attacker.example", 421), ("192.168.1.5", 421)):
                assert (await asyncio.to_thread(call, port, "GET", "/config", host=host))[0] == status, host

    asyncio.run(asyncio.wait_for(scenario(), 60))
    everywhere = Access(bound_host="0.0.0.0")
    assert everywhere.host_allowed("192.168.1.5:8080") and everywhere.host_allowed("[fe80::1]:8080")
    assert not everywhere.host_allowed("gpu-box:8080") and not everywhere.host_allowed("a b")
