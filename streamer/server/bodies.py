"""Reading request bodies, the same way on every route: the content type a browser cannot send without a
CORS preflight, UTF-8 only, a time limit, and JSON that cannot hurt (no NaN/Infinity, bounded nesting and
integer sizes, an object at the top). Every refusal is a 4xx with one line."""

from __future__ import annotations

import asyncio
import json
import math
import re
from typing import Any

from aiohttp import web
from aiohttp.helpers import parse_mimetype

from streamer.server.auth import shown

JSON_TYPE = "application/json"
SDP_TYPE = "application/sdp"
READ_TIMEOUT = 10.0  # seconds for a request's headers (see listen.py) and for its body
READ_TIMEOUT_KEY = web.AppKey("read_timeout", float)
MAX_DEPTH = 32
MAX_INT_DIGITS = 100
_SPECIAL = re.compile(r'["\[\]{}]')


class JsonError(ValueError):
    """A JSON text this server does not take; the message is one line for the client."""


def _constant(name: str) -> Any:
    raise JsonError(f"{name} is not a JSON number; send a finite number")


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise JsonError(f"an integer of {len(text.lstrip('-'))} digits is too long (at most {MAX_INT_DIGITS})")
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonError(f"the number {text[:20]}{'...' if len(text) > 20 else ''} is too large")
    return value


def nesting_depth(text: str, stop_above: int | None = None) -> int:
    """How deep arrays and objects nest in a JSON text (strings skipped), without parsing it. One pass over
    the text: a pattern for strings backtracks quadratically on an unclosed one (seconds for 64 kB). Stops
    early once deeper than ``stop_above``."""
    depth = deepest = 0
    position, end = 0, len(text)
    while position < end:
        found = _SPECIAL.search(text, position)
        if found is None:
            break
        char = found.group()
        if char == '"':  # skip the string: to the next quote that no backslash escapes
            position = found.end()
            while (close := text.find('"', position)) != -1:
                backslashes = len(text[position:close]) - len(text[position:close].rstrip("\\"))
                position = close + 1
                if backslashes % 2 == 0:
                    break
            else:
                break  # an unclosed string: json.loads will say so
            continue
        depth += 1 if char in "[{" else -1
        deepest = max(deepest, depth)
        if stop_above is not None and deepest > stop_above:
            break
        position = found.end()
    return deepest


def loads_object(text: str | bytes, what: str = "body") -> dict[str, Any]:
    """Parse a JSON object safely; JsonError (a ValueError) with one line otherwise."""
    if isinstance(text, bytes | bytearray):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise JsonError(f"{what} is not UTF-8 text") from None
    if nesting_depth(text, stop_above=MAX_DEPTH) > MAX_DEPTH:
        raise JsonError(f"{what} nests arrays or objects deeper than {MAX_DEPTH} levels")
    try:
        data = json.loads(text, parse_constant=_constant, parse_int=_integer, parse_float=_float)
    except JsonError:
        raise
    except (ValueError, RecursionError) as exc:
        raise JsonError(f"{what} is not valid JSON: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    if not isinstance(data, dict):
        raise JsonError(f"{what} must be a JSON object, got {type(data).__name__}")
    return data


async def _read_at_most(request: web.Request, max_bytes: int) -> bytes:
    """The body, refused (413) as soon as it passes ``max_bytes``: a route's own limit, not the app's."""
    def too_large(size: int) -> web.HTTPRequestEntityTooLarge:
        return web.HTTPRequestEntityTooLarge(max_size=max_bytes, actual_size=size,
                                             text=f"the body is larger than {max_bytes} bytes\n")

    if request.content_length is not None and request.content_length > max_bytes:
        raise too_large(request.content_length)
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > max_bytes:
            raise too_large(len(body))
    return bytes(body)


def type_refusal(header: str | None, content_type: str) -> str | None:
    """Why a body with this Content-Type header is refused (one line, HTTP 415), or None: the type must be
    ``content_type``, the charset (if any) UTF-8. Framework-neutral: read_text and the Ray Serve ingress."""
    mime = parse_mimetype(header or "")
    if f"{mime.type}/{mime.subtype}" != content_type:
        return f"send the body as Content-Type: {content_type}"
    charset = mime.parameters.get("charset")
    if charset is not None and charset.strip().lower() not in ("utf-8", "utf8"):
        return f"charset {shown(charset)} is not supported; send UTF-8"
    return None


async def read_text(request: web.Request, content_type: str, max_bytes: int | None = None) -> str:
    """The body as text: 415 for another content type or a charset other than UTF-8, 408 when it does not
    arrive in time, 413 when larger than ``max_bytes`` (default: the app's ``client_max_size``), 400 when not
    UTF-8."""
    refused = type_refusal(request.headers.get("Content-Type"), content_type)
    if refused:
        raise web.HTTPUnsupportedMediaType(text=f"{refused}\n")
    timeout = request.app.get(READ_TIMEOUT_KEY, READ_TIMEOUT)
    try:
        async with asyncio.timeout(timeout):
            raw = await (request.read() if max_bytes is None else _read_at_most(request, max_bytes))
    except TimeoutError:
        raise web.HTTPRequestTimeout(text=f"the body did not arrive within {timeout:g} s\n") from None
    except web.HTTPException:
        raise
    except Exception as exc:  # noqa: BLE001 - a broken chunked body, a client that went away
        raise web.HTTPBadRequest(text=f"the body could not be read: {type(exc).__name__}\n") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise web.HTTPBadRequest(text="the body is not UTF-8 text\n") from None


async def read_json(request: web.Request, max_bytes: int | None = None) -> dict[str, Any]:
    """A JSON object from a request body (see ``read_text`` and ``loads_object``)."""
    text = await read_text(request, JSON_TYPE, max_bytes)
    try:
        return loads_object(text)
    except JsonError as exc:
        raise web.HTTPBadRequest(text=f"{exc}\n") from None
