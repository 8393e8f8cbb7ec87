"""Start an aiohttp app on a port: the one start-up of `streamer serve` and of `streamer run --control-port`.

aiohttp has no header read timeout of its own: its keep-alive timer also runs from the moment a connection
opens until a whole request head has arrived, so ``keepalive_timeout`` is the header timeout (a slowloris
is dropped after ``read_timeout`` s). Bodies are read under the same limit (bodies.read_text). At most
``max_connections`` connections are open at once: one more is answered 503 and closed. The access log
never shows a token, and a request the HTTP parser refuses gets a one-line 400, not a traceback in the log.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from streamer.server.auth import redact, shown
from streamer.server.bodies import READ_TIMEOUT, READ_TIMEOUT_KEY

log = logging.getLogger(__name__)

REFUSED = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
           b"Content-Length: 41\r\nRetry-After: 5\r\nConnection: close\r\n\r\n"
           b"too many connections open; try again soon\n")


class AccessLog(AbstractAccessLogger):
    """One line a request: client, method, path (``token=`` redacted), status, bytes, seconds."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info('%s "%s %s" %s %s %.3fs', request.remote, request.method,
                         shown(redact(request.raw_path), 300)[1:-1], response.status, response.body_length, time)


class _Handler(web.RequestHandler):
    """aiohttp's connection handler with a connection cap and one-line answers to unparsable requests."""

    __slots__ = ("_refused",)
    max_connections = 0  # set per server by the subclass start_http makes

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._refused = self._manager is not None and len(self._manager.connections) >= self.max_connections
        if self._refused:
            transport.write(REFUSED)  # type: ignore[attr-defined]
            transport.close()
            return
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._refused:
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500:
            return super().handle_error(request, status, exc, message)  # a bug of ours: keep the traceback
        first = (message or getattr(exc, "message", "") or "").strip().splitlines()
        reason = first[0].strip().rstrip(":") if first else HTTPStatus(status).phrase
        self.logger.debug("refused a malformed request from %s: %s", request.remote, reason)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started")
        response = web.Response(status=status, text=f"malformed request: {reason}\n")
        response.force_close()
        return response


class _Site(web.BaseSite):
    """A TCP site whose connections are ``_Handler``s (TCPSite always makes aiohttp's own handler)."""

    __slots__ = ("_host", "_port", "_factory")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, factory: Any,
                 ssl_context: ssl.SSLContext | None) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._host, self._port, self._factory = host, port, factory

    @property
    def name(self) -> str:
        return f"{'https' if self._ssl_context else 'http'}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        self._server = await asyncio.get_running_loop().create_server(
            self._factory, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=True)


async def start_http(app: web.Application, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None,
                     read_timeout: float = READ_TIMEOUT, max_connections: int = 256,
                     shutdown_timeout: float = 2.0) -> tuple[web.AppRunner, int]:
    """Listen; return the runner (``await runner.cleanup()`` to stop) and the bound port. ValueError (one
    line) when the address cannot be used."""
    app[READ_TIMEOUT_KEY] = read_timeout
    options: dict[str, Any] = {"keepalive_timeout": read_timeout, "lingering_time": read_timeout,
                               "access_log_class": AccessLog}
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=shutdown_timeout, **options)
    await runner.setup()
    handler_class = type("Handler", (_Handler,), {"__slots__": (), "max_connections": max_connections})
    server = runner.server
    loop = asyncio.get_running_loop()
    site = _Site(runner, host, port, lambda: handler_class(server, loop=loop, **options), ssl_context)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sockets = site._server.sockets if site._server else ()  # type: ignore[union-attr]
    return runner, (sockets[0].getsockname()[1] if sockets else port)
