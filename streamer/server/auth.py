"""Who may talk to a server (`streamer serve` and `streamer run --control-port`), checked in one middleware.

Loopback by default. Every request must name this server in its Host header (a DNS-rebinding page names
its own domain), a browser request to anything but the static pages must come from the server's own page
(Origin, Sec-Fetch-Site), and with a token every such request must carry it: ``Authorization: Bearer T``
(any case of "Bearer") or the HttpOnly cookie the page at ``/?token=T`` sets.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import os
import re
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

PUBLIC_PATHS = ("/", "/watch", "/favicon.ico")
PUBLIC_PREFIXES = ("/static/",)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_HOSTS = ("", "0.0.0.0", "::")
TOKEN_ENV = "STREAMER_TOKEN"
TOKEN_COOKIE = "streamer_token"
TOKEN_CHARS = re.compile(r"[A-Za-z0-9._~+/=-]+")  # RFC 6750 b64token: safe in a header and in a cookie
HOST_HEADER = re.compile(r"\[(?P<v6>[0-9a-fA-F:.]+)\](?::\d{1,5})?|(?P<name>[^:\[\]\s]+)(?::\d{1,5})?")
TOKEN_QUERY = re.compile(r"(?i)(token=)[^&\s]*")


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


def redact(text: str) -> str:
    """``token=...`` in a logged URL becomes ``token=[redacted]``."""
    return TOKEN_QUERY.sub(r"\1[redacted]", text)


def shown(text: str, limit: int = 80) -> str:
    """A client's header value, safe to put in a one-line answer or a log line."""
    text = text.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace")
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


# ---- flags and token sources, the same for both servers ------------------------------------------------

def add_access_arguments(group: argparse._ArgumentGroup, what: str) -> None:
    """--token, --token-file, --allow-host for a server (``what`` names it in the help)."""
    group.add_argument("--token", default=None,
                       help=f"require this token on {what}: 'Authorization: Bearer TOKEN' or the cookie the "
                            f"page at /?token=TOKEN sets (also from --token-file or ${TOKEN_ENV})")
    group.add_argument("--token-file", type=Path, default=None, metavar="FILE",
                       help="read the token from this file (keeps it out of the process list)")
    group.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                       help="also answer requests for this host name, repeatable (the bound address and "
                            "localhost/127.0.0.1/[::1] always work)")


def check_token(token: str, source: str) -> str:
    if not TOKEN_CHARS.fullmatch(token):
        raise ValueError(f"the token from {source} may hold only letters, digits and - . _ ~ + / = "
                         "(and must not be empty)")
    return token


def token_from_args(token: str | None, token_file: Path | None) -> str | None:
    """--token, else --token-file, else $STREAMER_TOKEN, else None. ValueError (one line) if unusable."""
    if token is not None and token_file is not None:
        raise ValueError("give --token or --token-file, not both")
    if token is not None:
        return check_token(token, "--token")
    if token_file is not None:
        try:
            text = Path(token_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
            raise ValueError(f"--token-file {token_file}: {reason}") from None
        return check_token(text.strip(), f"--token-file {token_file}")
    if os.environ.get(TOKEN_ENV):
        return check_token(os.environ[TOKEN_ENV].strip(), f"${TOKEN_ENV}")
    return None


def allowed_host_names(allow_hosts: Sequence[str]) -> list[str]:
    """--allow-host values as compared with Host headers; ValueError for one that is not a host name."""
    names = []
    for value in allow_hosts:
        match = HOST_HEADER.fullmatch(value.strip())
        if not match:
            raise ValueError(f"--allow-host takes a host name such as studio.local, got {value!r}")
        names.append((match["v6"] or match["name"]).lower())
    return names


# ---- the guard -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Refusal:
    """A request the guard refuses: its status, one line for the client, and headers to send."""

    status: int
    text: str
    headers: dict[str, str] = field(default_factory=dict)


# Refusals as aiohttp raises them: the guard's, and the session layer's (streamer.server.app.ERROR_STATUS).
HTTP_ERRORS: dict[int, type[web.HTTPException]] = {
    400: web.HTTPBadRequest, 401: web.HTTPUnauthorized, 403: web.HTTPForbidden, 404: web.HTTPNotFound,
    421: web.HTTPMisdirectedRequest, 503: web.HTTPServiceUnavailable}


@dataclass(frozen=True)
class Access:
    """The rules of one server. ``public_paths``/``public_prefixes``: static pages anyone may load."""

    token: str | None = None
    bound_host: str = "127.0.0.1"
    allow_hosts: Sequence[str] = ()  # as allowed_host_names returns them
    public_paths: Sequence[str] = ()
    public_prefixes: Sequence[str] = ()

    def host_allowed(self, header: str | None) -> bool:
        if header is None:
            return True  # an HTTP/1.0 client without Host: not a browser, so no rebinding
        match = HOST_HEADER.fullmatch(header)
        if not match:
            return False
        name = (match["v6"] or match["name"]).lower()
        bound = self.bound_host.strip("[]").lower()
        if name in LOOPBACK_NAMES or name == bound or name in self.allow_hosts:
            return True
        if bound in WILDCARD_HOSTS:  # listening everywhere: any address works; an IP cannot be rebound
            try:
                ipaddress.ip_address(name)
                return True
            except ValueError:
                return False
        return False

    def public(self, path: str) -> bool:
        return path in self.public_paths or path.startswith(tuple(self.public_prefixes))

    def token_matches(self, authorization: str | None, cookie: str | None) -> bool:
        """The token in ``Authorization: Bearer T`` or in the page's cookie, compared in constant time."""
        assert self.token is not None
        expected = self.token.encode()
        scheme, _, value = (authorization or "").strip().partition(" ")
        given = [value.strip()] if scheme.lower() == "bearer" else []
        given.append(cookie or "")
        return any(hmac.compare_digest(g.encode("utf-8", "surrogateescape"), expected) for g in given if g)

    def refusal(self, *, method: str, path: str, scheme: str, headers: Mapping[str, str],
                cookie: str | None) -> Refusal | None:
        """The one guard, framework-neutral: why this request is refused (status, one line, headers), or
        None. ``headers`` is case-insensitive (aiohttp's and Starlette's are); ``cookie`` is the token
        cookie's value. Used by the aiohttp middleware below and by the Ray Serve ingress."""
        host = headers.get("Host")
        if not self.host_allowed(host):
            return Refusal(421, f"Host {shown(host or '')} is not this server; start it with --allow-host NAME "
                                "to answer to that name")
        if self.public(path):
            return None
        origin = headers.get("Origin")
        if origin is not None and (host is None or origin.lower() != f"{scheme}://{host}".lower()):
            return Refusal(403, f"requests from other sites are refused (Origin {shown(origin)})")
        if headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
            return Refusal(403, "requests from other sites are refused (Sec-Fetch-Site)")
        if self.token and method != "OPTIONS" and not self.token_matches(headers.get("Authorization"), cookie):
            return Refusal(401, "missing or wrong token: send 'Authorization: Bearer <token>'",
                           {"WWW-Authenticate": "Bearer"})
        return None

    def sets_cookie(self, path: str, query_token: str | None) -> bool:
        """A public page loaded with ``?token=T`` (the right one) sets the token cookie."""
        if not (self.token and query_token and self.public(path)):
            return False
        return hmac.compare_digest(query_token.encode("utf-8", "surrogateescape"), self.token.encode())

    def middleware(self) -> Callable:
        @web.middleware
        async def guard(request: web.Request,
                        handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
            refused = self.refusal(method=request.method, path=request.path, scheme=request.scheme,
                                   headers=request.headers, cookie=request.cookies.get(TOKEN_COOKIE))
            if refused is not None:
                raise HTTP_ERRORS[refused.status](text=refused.text + "\n", headers=refused.headers)
            response = await handler(request)
            if self.sets_cookie(request.path, request.query.get("token")):
                assert self.token is not None
                response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="Strict",
                                    secure=request.secure, path="/")
            return response

        return guard
