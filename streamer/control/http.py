"""`streamer run --control-port`: GET/POST /params, GET /stats (JSON), GET /metrics (Prometheus).

An aiohttp app on its own thread with its own event loop (the live runtime is not asyncio), started by the
server's one start-up (streamer.server.listen: header and body timeouts, at most 64 connections) and guarded
by the server's one guard (Host, Origin, optional token). Answers are JSON, errors
``{"ok": false, "error": "..."}``. ``params_reply`` is the HTTP face of the one live-change handler
(ParamsController.answer), used by this app and by `streamer serve`'s POST /sessions/{id}/params alike.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

from pipelines.conditioning.style_image import MAX_STYLE_BODY_BYTES
from streamer.control.params import ParamsController
from streamer.observe.prometheus import CONTENT_TYPE, exposition
from streamer.observe.stats import RunStats
from streamer.server.auth import Access, allowed_host_names
from streamer.server.bodies import READ_TIMEOUT, read_json
from streamer.server.listen import start_http

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
MAX_CONNECTIONS = 64
START_TIMEOUT = 10.0


def refusal_body(message: str) -> dict[str, Any]:
    """A refused request as the servers' control routes answer it: ``{"ok": false, "error": "one line"}``."""
    line = message.strip().splitlines()[0] if message.strip() else "refused"
    return {"ok": False, "error": line}


def refusal(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(refusal_body(message), status=status, headers=headers)


async def params_reply(request: web.Request, params: ParamsController) -> web.Response:
    """POST a live change: read the JSON body (its refusals in the same shape), apply it off the loop."""
    try:  # room for a style image (base64) in a change: more than the app's other bodies
        changes = await read_json(request, max_bytes=MAX_STYLE_BODY_BYTES)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return refusal(exc.status, exc.text or exc.reason)
    status, body = await asyncio.to_thread(params.answer, changes)  # waits for the worker: off the loop
    return web.json_response(body, status=status)


def metrics_response(stats: RunStats, sessions: dict[str, int] | None = None) -> web.Response:
    """GET /metrics of both servers: the one Prometheus exporter."""
    return web.Response(body=exposition(stats, sessions).encode(),
                        headers={"Content-Type": CONTENT_TYPE, "X-Content-Type-Options": "nosniff"})


@web.middleware
async def json_errors(request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Every refusal as ``{"error": "one line"}`` with its status (and its WWW-Authenticate, Allow...)."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            message = f"no route {request.path}; try /params, /stats or /metrics"
        elif exc.status == 405:
            message = "use GET or POST on /params, GET on /stats and /metrics"
        else:
            message = exc.text or exc.reason
        keep = {k: v for k, v in exc.headers.items() if k in ("WWW-Authenticate", "Allow", "Retry-After")}
        return refusal(exc.status, message, keep)


def create_control_app(params: ParamsController, stats: RunStats | None = None,
                       access: Access | None = None) -> web.Application:
    app = web.Application(middlewares=[json_errors, (access or Access()).middleware()],
                          client_max_size=MAX_BODY_BYTES)

    async def get_params(request: web.Request) -> web.Response:
        return web.json_response(params.current)

    async def post_params(request: web.Request) -> web.Response:
        return await params_reply(request, params)

    async def get_stats(request: web.Request) -> web.Response:
        if stats is None:
            raise web.HTTPNotFound()
        return web.json_response(stats.snapshot())

    async def get_metrics(request: web.Request) -> web.Response:
        if stats is None:
            raise web.HTTPNotFound()
        return metrics_response(stats)

    app.router.add_get("/params", get_params)
    app.router.add_post("/params", post_params)
    app.router.add_get("/stats", get_stats)
    app.router.add_get("/metrics", get_metrics)
    return app


class ControlServer:
    """The control app on ``host:port`` (``port=0``: the system chooses, see ``.port``), on its own thread."""

    def __init__(self, params: ParamsController, port: int, *, stats: RunStats | None = None,
                 host: str = "127.0.0.1",
                 token: str | None = None, allow_hosts: Sequence[str] = (), read_timeout: float = READ_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        access = Access(token=token, bound_host=host, allow_hosts=allowed_host_names(allow_hosts))
        self.app = create_control_app(params, stats, access)
        self.host, self.port = host, port
        self.read_timeout, self.max_connections = read_timeout, max_connections
        self.url = ""
        self._ready = threading.Event()
        self._error: Exception | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), name="control-http",
                                        daemon=True)

    def start(self) -> ControlServer:
        """Listen, or raise ValueError (one line) when the port cannot be used."""
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise ValueError(f"control on {self.host}:{self.port} did not start within {START_TIMEOUT:g} s")
        if self._error is not None:
            raise ValueError(f"{self._error} (choose another --control-port)")
        return self

    def close(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(5)

    def __enter__(self) -> ControlServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        try:
            runner, self.port = await start_http(self.app, self.host, self.port, read_timeout=self.read_timeout,
                                                 max_connections=self.max_connections)
        except ValueError as exc:
            self._error = exc
            self._ready.set()
            return
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{self.port}"
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()
