"""The aiohttp application: pages, signalling (/offer, WHIP, WHEP), live controls, metrics; and its runner."""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from pipelines.frames import FramePipeline
from streamer.control.http import metrics_response, params_reply, refusal
from streamer.control.params import ChangeFailed
from streamer.engine.stop_signals import STOP_SIGNALS
from streamer.engine.worker import GpuWorker
from streamer.observe.stats import RunStats
from streamer.server import whip
from streamer.server.auth import (
    HTTP_ERRORS,
    PUBLIC_PATHS,
    PUBLIC_PREFIXES,
    Access,
    allowed_host_names,
    check_bind,
)
from streamer.server.bodies import READ_TIMEOUT, read_json
from streamer.server.listen import start_http
from streamer.server.sessions import (
    CapacityError,
    NotFoundError,
    OfferError,
    SessionManager,
    SourceFeed,
    ice_configuration,
    restrict_host_candidates,
)

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
SHUTDOWN_TIMEOUT = 10.0


@dataclass
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    insecure: bool = False
    allow_hosts: list[str] = field(default_factory=list)  # Host names answered besides the bound address
    read_timeout: float = READ_TIMEOUT  # seconds for a request's headers, and again for its body
    max_connections: int = 256
    max_sessions: int = 4
    max_viewers: int = 32
    idle_timeout: float = 10.0
    connect_timeout: float = 15.0  # a peer not connected by then is closed and its slot freed
    max_body: int = 256 * 1024  # an SDP offer is a few kB; anything far larger is refused with 413
    ice_servers: list[str] = field(default_factory=list)
    ice_username: str | None = None
    ice_credential: str | None = None
    ice_addresses: list[str] = field(default_factory=list)
    cert: Path | None = None
    key: Path | None = None
    max_batch: int = 8
    submit_ahead: bool = False  # the GPU worker queues the next batch before taking the previous result
    defaults: dict[str, Any] = field(default_factory=dict)  # the pipeline's prompt etc., shown by the page

    def check(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be 0-65535, got {self.port}")
        check_bind(self.host, self.token, self.insecure)
        allowed_host_names(self.allow_hosts)
        if (self.cert is None) != (self.key is None):
            raise ValueError("HTTPS needs both --cert FILE and --key FILE")
        for flag, path in (("--cert", self.cert), ("--key", self.key)):
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{flag} {path}: no such file")
        if self.max_sessions < 1:
            raise ValueError(f"--max-sessions must be at least 1, got {self.max_sessions}")
        if self.max_viewers < 1:
            raise ValueError(f"--max-viewers must be at least 1, got {self.max_viewers}")
        if self.max_batch < 1:
            raise ValueError(f"--max-batch must be at least 1, got {self.max_batch}")
        if self.idle_timeout <= 0:
            raise ValueError(f"--idle-timeout must be positive, got {self.idle_timeout}")
        if self.connect_timeout <= 0:
            raise ValueError(f"--connect-timeout must be positive, got {self.connect_timeout}")
        for url in self.ice_servers:
            if not url.startswith(("stun:", "turn:", "turns:")):
                raise ValueError(f"--ice-server must be a stun:, turn: or turns: URL, got {url!r}")


# The session layer's errors as HTTP statuses (the pipeline failing on a valid change is not the client's
# fault: 503). Also used by `streamer serve --ray`'s replicas, whose answers the ingress turns into HTTP.
ERROR_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (CapacityError, 503), (ChangeFailed, 503), (NotFoundError, 404), (OfferError, 400), (ValueError, 400))
RETRY_AFTER = {"Retry-After": "10"}


def error_answer(exc: Exception) -> tuple[int, str] | None:
    """(status, one line) for a session-layer error; None for anything else."""
    for kind, status in ERROR_STATUS:
        if isinstance(exc, kind):
            return status, str(exc.args[0] if isinstance(exc, NotFoundError) else exc)
    return None


@web.middleware
async def errors_middleware(request: web.Request,
                            handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Turn the session layer's errors into one-line HTTP answers."""
    try:
        return await handler(request)
    except Exception as exc:
        answer = error_answer(exc)
        if answer is None:
            raise
        status, text = answer
        headers = RETRY_AFTER if isinstance(exc, CapacityError) else None
        raise HTTP_ERRORS[status](text=f"{text}\n", headers=headers) from None



def create_app(options: ServerOptions, worker: GpuWorker, metrics: RunStats | None = None,
               source_feed: SourceFeed | None = None) -> web.Application:
    """The app; ``metrics`` is the RunStats the worker's on_batch also reports to (one per server)."""
    metrics = metrics or RunStats()
    ice = ice_configuration(options.ice_servers, options.ice_username, options.ice_credential)
    manager = SessionManager(worker, metrics, ice=ice, max_sessions=options.max_sessions,
                             max_viewers=options.max_viewers, idle_timeout=options.idle_timeout,
                             connect_timeout=options.connect_timeout, defaults=options.defaults)
    if source_feed is not None:
        manager.add_source(source_feed)
        # Its reconnects; its slot's drops are counted by the session manager as they happen (add_source).
        metrics.watch_source(source_feed.source, drops=False)
    access = Access(token=options.token, bound_host=options.host,
                    allow_hosts=allowed_host_names(options.allow_hosts), public_paths=PUBLIC_PATHS,
                    public_prefixes=PUBLIC_PREFIXES)
    app = web.Application(middlewares=[access.middleware(), errors_middleware], client_max_size=options.max_body)

    async def page(request: web.Request) -> web.FileResponse:
        name = "watch.html" if request.path == "/watch" else "index.html"
        return web.FileResponse(STATIC / name, headers={"Cache-Control": "no-store"})

    async def config(request: web.Request) -> web.Response:
        # A turn: server without its credentials makes the browser's RTCPeerConnection throw.
        turn = {"username": options.ice_username, "credential": options.ice_credential}
        servers = [{"urls": url, **(turn if url.startswith("turn") else {})} for url in options.ice_servers]
        return web.json_response({"iceServers": servers, "streams": sorted(manager.broadcasts),
                                  "defaults": options.defaults})

    async def offer(request: web.Request) -> web.Response:
        data = await read_json(request)
        if data.get("type", "offer") != "offer":
            raise web.HTTPBadRequest(text="type must be 'offer'\n")
        session, answer = await manager.open_stylizing(data.get("sdp"), kind="browser",
                                                       params=data.get("params"))
        return web.json_response({"sdp": answer, "type": "answer", "session_id": session.id})

    async def set_params(request: web.Request) -> web.Response:
        try:
            session = manager.get(request.match_info["id"], kinds=("browser", "whip"))
        except NotFoundError as exc:
            return refusal(404, str(exc))
        assert session.params is not None
        return await params_reply(request, session.params)  # the same answers as `run --control-port`

    async def sessions(request: web.Request) -> web.Response:
        return web.json_response({
            "counts": manager.counts(), "max_sessions": manager.max_sessions,
            "sessions": [{"id": s.id, "kind": s.kind, **s.stats.as_dict()} for s in manager.sessions.values()],
        })

    async def session_stats(request: web.Request) -> web.Response:
        return web.json_response(manager.get(request.match_info["id"]).stats.as_dict())

    async def end_session(request: web.Request) -> web.Response:
        await manager.close(manager.get(request.match_info["id"]).id)
        return web.Response(status=200)

    async def prometheus(request: web.Request) -> web.Response:
        return metrics_response(metrics, manager.counts())

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app.router.add_get("/", page)
    app.router.add_get("/watch", page)
    app.router.add_static("/static/", STATIC)
    app.router.add_get("/config", config)
    app.router.add_post("/offer", offer)
    app.router.add_get("/sessions", sessions)
    app.router.add_get("/sessions/{id}", session_stats)
    app.router.add_post("/sessions/{id}/params", set_params)
    app.router.add_delete("/sessions/{id}", end_session)
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/healthz", health)
    whip.add_routes(app, manager)

    async def on_startup(app: web.Application) -> None:
        manager.start()
        if source_feed is not None:
            source_feed.start()

    async def on_shutdown(app: web.Application) -> None:
        await manager.close_all()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    return app


def ssl_context(options: ServerOptions) -> ssl.SSLContext | None:
    if options.cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(options.cert, options.key)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"--cert/--key could not be loaded: {exc}") from None
    return context


def run_server(options: ServerOptions, pipeline: FramePipeline, source: Any = None) -> int:
    """Serve until SIGINT, SIGTERM or SIGHUP; then close every peer connection and stop the worker."""
    options.check()
    context = ssl_context(options)
    if options.ice_addresses:
        restrict_host_candidates(options.ice_addresses)
    metrics = RunStats()
    worker = GpuWorker(pipeline, max_batch=options.max_batch, on_batch=metrics.batch,
                       submit_ahead=options.submit_ahead)
    try:
        return asyncio.run(_serve(options, worker, metrics, context, source))
    finally:
        worker.close(timeout=SHUTDOWN_TIMEOUT)


async def _serve(options: ServerOptions, worker: GpuWorker, metrics: RunStats,
                 context: ssl.SSLContext | None, source: Any) -> int:
    loop = asyncio.get_running_loop()
    feed = SourceFeed(source, loop) if source is not None else None
    app = create_app(options, worker, metrics, feed)
    runner, port = await start_http(app, options.host, options.port, ssl_context=context,
                                    read_timeout=options.read_timeout, max_connections=options.max_connections)
    scheme = "https" if context else "http"
    host = f"[{options.host}]" if ":" in options.host else options.host
    print(f"streamer: serving on {scheme}://{host}:{port}/  (viewer: /watch, WHIP: /whip, WHEP: /whep, "
          f"metrics: /metrics)", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("streamer: shutting down", file=sys.stderr, flush=True)
    try:
        await asyncio.wait_for(runner.cleanup(), SHUTDOWN_TIMEOUT)
    except TimeoutError:
        log.warning("shutdown took longer than %.0f s; leaving the rest to process exit", SHUTDOWN_TIMEOUT)
    return 0
