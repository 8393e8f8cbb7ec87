"""Who may talk to the server: loopback by default, a bearer token for everything that is not a static page."""

from __future__ import annotations

import hmac
import ipaddress
import socket
from collections.abc import Awaitable, Callable

from aiohttp import web

PUBLIC_PATHS = ("/", "/watch", "/favicon.ico")
PUBLIC_PREFIXES = ("/static/",)


def is_loopback_host(host: str) -> bool:
    """True when ``host`` only ever resolves to loopback addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def check_bind(host: str, token: str | None, insecure: bool) -> None:
    if not token and not insecure and not is_loopback_host(host):
        raise ValueError(f"refusing to listen on {host} without --token (anyone on the network could use "
                         "the GPU and your camera stream); add --token SECRET, or --insecure if you mean it")


def token_middleware(token: str | None) -> Callable:
    """401 for every signalling, control and metrics request without ``Authorization: Bearer <token>``."""
    expected = f"Bearer {token}".encode() if token else None

    @web.middleware
    async def middleware(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if expected is None or request.method == "OPTIONS" or request.path in PUBLIC_PATHS \
                or request.path.startswith(PUBLIC_PREFIXES):
            return await handler(request)
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            raise web.HTTPUnauthorized(text="missing or wrong token: send 'Authorization: Bearer <token>'\n",
                                       headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return middleware
