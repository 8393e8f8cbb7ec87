"""The tests' two ways to start a server: `serving` (the real app in-process, on a real 127.0.0.1 port, through
the product's one start-up ``streamer.server.listen.start_http``) and `start_streamer` (`python -m streamer
serve|run ...` as a subprocess, ready when its log says so). Every test that needs a server uses one of them."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NamedTuple

from aiohttp import web

from streamer.engine.worker import GpuWorker
from streamer.observe.stats import RunStats
from streamer.server.app import ServerOptions, create_app
from streamer.server.listen import start_http

ROOT = Path(__file__).resolve().parent.parent


class LocalServer(NamedTuple):
    """An in-process server: ``url`` and ``app`` (it unpacks as ``(url, app)``), its ``metrics`` and the
    server-side source's ``feed`` (None without one)."""

    url: str
    app: web.Application
    metrics: RunStats
    feed: Any = None

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


@asynccontextmanager
async def serving(pipeline: Any, *, source: Any = None, **options: Any) -> AsyncIterator[LocalServer]:
    """The real app on a real 127.0.0.1 port (``source``: a server-side source, opened, as `serve --source`);
    the worker and every peer connection closed afterwards."""
    from streamer.server.sessions import SourceFeed

    options = ServerOptions(port=0, **options)
    metrics = RunStats()
    worker = GpuWorker(pipeline, on_batch=metrics.batch)
    feed = SourceFeed(source, asyncio.get_running_loop()) if source is not None else None
    runner = None
    try:
        runner, port = await start_http(create_app(options, worker, metrics, feed), "127.0.0.1", 0,
                                        read_timeout=options.read_timeout, max_connections=options.max_connections)
        yield LocalServer(f"http://127.0.0.1:{port}", runner.app, metrics, feed)
    finally:
        if runner is not None:
            await asyncio.wait_for(runner.cleanup(), 15)
        await asyncio.to_thread(worker.close, 10)


class Served:
    """A `python -m streamer` subprocess: its ``process``, ``port``, ``url`` and ``log``."""

    def __init__(self, process: subprocess.Popen, match: re.Match, log: Path, port: int | None = None) -> None:
        self.process, self.match, self.log = process, match, log
        first = match.group(1) if match.groups() else ""
        self.url = first if first.startswith("http") else ""
        found = re.search(r":(\d+)$", self.url)
        self.port = port if port is not None else int(found.group(1)) if found else int(first or 0)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        return stop_streamer(self.process, sig)


STREAMER = (sys.executable, "-m", "streamer", "-v")


def start_streamer(args: Sequence[str], log: Path, ready: str, env: dict[str, str] | None = None,
                   timeout: float = 120, port: int | None = None, cwd: Path | None = None,
                   program: Sequence[str] = STREAMER, prefix: Sequence[str] = ()) -> Served:
    """Start `python -m streamer -v ARGS` (or ``program`` ARGS; ``prefix`` before it, e.g. a wrapper that
    makes a network namespace and execs the rest) in its own session, stderr into ``log``, and wait until
    the log matches ``ready`` (a pattern whose group, if any, is the server's URL)."""
    with open(log, "wb") as err:
        process = subprocess.Popen([*prefix, *program, *args], stdout=subprocess.DEVNULL,
                                   stderr=err, cwd=cwd or log.parent, start_new_session=True,
                                   env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    deadline = time.monotonic() + timeout
    while not (match := re.search(ready, log.read_text(errors="replace"))):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_streamer(process)
            raise AssertionError(f"never ready: {log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)
    return Served(process, match, log, port)


def stop_streamer(process: subprocess.Popen, sig: int = signal.SIGTERM) -> int:
    """Stop it with ``sig`` (30 s to finish, then SIGKILL to its group); its exit status."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    return process.returncode


def stop_group(process: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM its process group, SIGKILL if it lingers; reaped on return."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue
