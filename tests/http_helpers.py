"""Raw HTTP for the tests of both servers: requests sent byte for byte (a forged Host, bytes a client library
would refuse), one-line answer checks, and the JSON bodies that break parsers."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

HOSTILE_JSON = {
    "NaN": b'{"strength": NaN}',
    "Infinity": b'{"strength": -Infinity}',
    "1e999": b'{"strength": 1e999}',
    "a 1000-digit integer": b'{"seed": ' + b"9" * 1000 + b"}",
    "10,000 nested arrays": b'{"prompt": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
    "not an object": b'["prompt"]',
    "not UTF-8": b'{"prompt": "\xff\xfe"}',
}


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


def when_it_answers(process: subprocess.Popen, ask: Callable[[], T], timeout: float = 120.0,
                    what: str = "control port") -> T:
    """``ask()``'s answer once a starting server takes connections (``process`` must stay alive meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return ask()
        except urllib.error.URLError:
            assert process.poll() is None and time.monotonic() < deadline, f"{what} never came up"
            time.sleep(0.3)
