"""Fixtures shared by several test files: a real RTSP server (GStreamer, run under the system Python)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
SYSTEM_PYTHON = "/usr/bin/python3"


def _gi_missing_reason() -> str | None:
    if not os.path.exists(SYSTEM_PYTHON):
        return f"{SYSTEM_PYTHON} not found (the RTSP test server needs the system Python with gi)"
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0'); "
         "from gi.repository import GstRtspServer"],
        capture_output=True, timeout=30,
    )
    if probe.returncode != 0:
        return ("GStreamer RTSP server missing: apt-get install python3-gi gir1.2-gst-rtsp-server-1.0 "
                "gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly")
    return None


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A free TCP (or, with SOCK_DGRAM, UDP) port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


StartServer = Callable[..., subprocess.Popen]


@pytest.fixture(scope="module")
def gi_available() -> None:
    reason = _gi_missing_reason()
    if reason and os.environ.get("CI"):
        pytest.fail(f"CI must run the RTSP tests: {reason}")  # .ci/run installs it; a skip would hide that
    if reason:
        pytest.skip(reason)


@pytest.fixture
def start_server(gi_available: None) -> Iterator[StartServer]:
    """Starts RTSP servers on a port; every one still running is killed at teardown."""
    started: list[subprocess.Popen] = []

    def start(port: int, *extra_args: str) -> subprocess.Popen:
        proc = subprocess.Popen(
            [SYSTEM_PYTHON, str(SERVER_SCRIPT), "--port", str(port), *extra_args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        started.append(proc)
        os.set_blocking(proc.stdout.fileno(), False)
        deadline = time.monotonic() + 20
        line = ""
        while time.monotonic() < deadline and proc.poll() is None:
            line += proc.stdout.readline()
            if line.startswith("READY"):
                return proc
            time.sleep(0.05)
        proc.kill()
        raise AssertionError(f"RTSP server did not start: {line!r} {proc.stderr.read()[-2000:]!r}")

    try:
        yield start
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            for stream in (proc.stdout, proc.stderr):
                stream.close()




@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """In CI every test must run: .ci/run installs what they need, so a skip there means a broken setup.
    (Only tests marked ``gpu`` may skip: CI has no GPU.)"""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and "gpu" not in item.keywords:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where it must run: {reason}"
