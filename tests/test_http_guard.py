"""Both HTTP servers as the user runs them (`streamer serve`, `streamer run --control-port`, subprocesses on
127.0.0.1 whose log and threads are read) against hostile requests: forged Host (DNS rebinding), cross-site
Origin, simple-request content types, tokens from a header, the page's cookie, --token-file and
$STREAMER_TOKEN, JSON and bytes that break parsers, 300 idle connections. Timeouts: test_http_limits.py."""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port
from http_helpers import HOSTILE_JSON, call, exchange, json_post, one_line, request

from tests.servers import Served, start_streamer

ROOT = Path(__file__).resolve().parent.parent
SERVE_TOKEN = "serve-file-token.42"
RUN_TOKEN = "run-env-token~7"


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`streamer run` with a control port and no token."""
    folder = tmp_path_factory.mktemp("control")
    port = free_port()
    served = start_streamer(["run", "--source", "testsrc:96x64@10", "--sink", "out.mkv", "--preset",
                             "passthrough", "--control-port", str(port), "--duration", "300"],
                            folder / "run.log", r"control on (http://127\.0\.0\.1:\d+)/params",
                            env={"STREAMER_TOKEN": ""})
    try:
        yield served
    finally:
        assert served.stop() == 128 + 15  # `run` stopped by SIGTERM exits 128+N (README)


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`streamer serve` with its token in a file."""
    folder = tmp_path_factory.mktemp("serve")
    (folder / "token").write_text(SERVE_TOKEN + "\n")
    served = start_streamer(["serve", "--port", "0", "--preset", "passthrough", "--token-file",
                             str(folder / "token")], folder / "serve.log",
                            r"serving on (http://127\.0\.0\.1:\d+)/", env={"STREAMER_TOKEN": ""})
    try:
        yield served
    finally:
        assert served.stop() == 0


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
    assert status == 200 and json.loads(body)["params"]["strength"] == 0.7
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
    assert status == 200 and json.loads(body)["params"]["seed"] == 5
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
    served = start_streamer(["run", "--source", "testsrc:96x64@10", "--sink", "out.mkv", "--preset",
                             "passthrough", "--control-port", str(port), "--duration", "300"],
                            tmp_path / "run.log", r"control on http://", env={"STREAMER_TOKEN": RUN_TOKEN})
    process = served.process
    try:
        for headers in ((), ("Authorization: Bearer wrong",), (f"Authorization: {RUN_TOKEN}",),
                        (f"Authorization: Basic {RUN_TOKEN}",)):
            status, body = call(port, "GET", "/params", headers=headers)
            assert status == 401 and "token" in json.loads(one_line(body))["error"], headers
        for scheme in ("Bearer", "bearer", "BEARER"):
            assert call(port, "GET", "/params", headers=(f"Authorization: {scheme} {RUN_TOKEN}",))[0] == 200
        status, body = call(port, "POST", "/params",
                            **json_post(b'{"strength": 0.3}', f"Authorization: bearer {RUN_TOKEN}"))
        assert status == 200 and json.loads(body)["params"]["strength"] == 0.3
        call(port, "GET", f"/params?token={RUN_TOKEN}")
    finally:
        assert served.stop() == 128 + 15
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
