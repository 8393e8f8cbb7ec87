"""`streamer serve --ray`'s ingress: the page, signalling, controls and /metrics over Ray Serve's HTTP proxy.

The same rules as `streamer serve` (the one guard, streamer.server.auth.Access: Host, Origin, token; the one
body reader's content types, size and time limits), then each request goes to a replica
(streamer.scale.serve_replica): a new session to the replica with the fewest sessions that has room, a
session's later requests (DELETE, parameters, stats) to the replica that holds it, named in its id.
"""

from __future__ import annotations

import asyncio
import mimetypes
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from pipelines.conditioning.style_image import MAX_STYLE_BODY_BYTES
from streamer.control.http import refusal_body
from streamer.observe.prometheus import CONTENT_TYPE, merge_labelled
from streamer.scale.serve_replica import KNOWN_REPLICAS, gather_quietly, public_id, split_id
from streamer.server.app import RETRY_AFTER, STATIC, ServerOptions
from streamer.server.auth import PUBLIC_PATHS, PUBLIC_PREFIXES, TOKEN_COOKIE, Access, allowed_host_names
from streamer.server.bodies import JSON_TYPE, SDP_TYPE, JsonError, loads_object, type_refusal

ASK_TIMEOUT = 5.0  # seconds for a replica to describe itself or give its metrics
OPEN_TIMEOUT = 30.0  # an offer: ICE gathering and, with parameters, a wait for the worker
SESSION_PATH = re.compile(r"/(?P<kind>sessions|whip|whep)/(?P<id>[^/]+)(?P<params>/params)?")


class HttpError(Exception):
    def __init__(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(text)
        self.status, self.text, self.headers = status, text, headers or {}


@dataclass
class IngressSettings:
    options: ServerOptions
    deployment: str  # the replica deployment's name (the router lists its replicas under it)


class Ingress:
    """The ingress deployment's class; ``replicas`` is the DeploymentHandle of the replica deployment."""

    def __init__(self, replicas: Any, settings: IngressSettings) -> None:
        options = self.options = settings.options
        self.replicas = replicas
        self.deployment = settings.deployment
        self.access = Access(token=options.token, bound_host=options.host,
                             allow_hosts=allowed_host_names(options.allow_hosts), public_paths=PUBLIC_PATHS,
                             public_prefixes=PUBLIC_PREFIXES)
        self.pending: dict[str, int] = {}  # replica -> offers on their way to it

    async def __call__(self, request: Request) -> Response:
        path, method = request.url.path, request.method
        refused = self.access.refusal(method=method, path=path, scheme=request.url.scheme,
                                      headers=request.headers, cookie=request.cookies.get(TOKEN_COOKIE))
        if refused is not None:
            return PlainTextResponse(refused.text + "\n", refused.status, headers=refused.headers)
        try:
            response = await self._route(request, method, path)
        except HttpError as exc:
            if path.endswith("/params") and method == "POST":  # the control routes' refusal shape
                return JSONResponse(refusal_body(exc.text), exc.status, headers=exc.headers)
            return PlainTextResponse(exc.text + "\n", exc.status, headers=exc.headers)
        if self.access.sets_cookie(path, request.query_params.get("token")):
            assert self.options.token is not None
            response.set_cookie(TOKEN_COOKIE, self.options.token, httponly=True, samesite="strict",
                                secure=request.url.scheme == "https", path="/")
        return response

    # ---- routes ----------------------------------------------------------------------------------------
    async def _route(self, request: Request, method: str, path: str) -> Response:
        if path in ("/", "/watch"):
            self._allow(method, "GET")
            return await self._file(STATIC / ("watch.html" if path == "/watch" else "index.html"),
                                    {"Cache-Control": "no-store"})
        if path.startswith("/static/"):
            self._allow(method, "GET")
            return await self._file(self._static(path[len("/static/"):]))
        if path == "/healthz":
            self._allow(method, "GET")
            replicas = [{key: load[key] for key in ("replica", "pid", "sessions", "capacity")}
                        for load in (await self._describe_all()).values()]
            return JSONResponse({"ok": bool(replicas), "replicas": replicas}, 200 if replicas else 503)
        if path == "/config":
            self._allow(method, "GET")
            return JSONResponse(await self._config())
        if path == "/metrics":
            self._allow(method, "GET")
            texts = await gather_quietly({r: self._call(r, "metrics_text") for r in await self._replica_ids()},
                                         ASK_TIMEOUT)
            return Response(merge_labelled({r: answer["text"] for r, answer in texts.items()}),
                            headers={"Content-Type": CONTENT_TYPE, "X-Content-Type-Options": "nosniff"})
        if path == "/sessions":
            self._allow(method, "GET")
            lists = await gather_quietly({r: self._call(r, "stats") for r in await self._replica_ids()},
                                         ASK_TIMEOUT)
            return JSONResponse({"sessions": [s for answer in lists.values() for s in answer["body"]],
                                 "max_sessions": self.options.max_sessions, "replicas": len(lists)})
        if path in ("/offer", "/whip", "/whep"):
            if method == "OPTIONS" and path != "/offer":
                return Response(status_code=204, headers={"Accept-Post": SDP_TYPE, "Allow": "OPTIONS, POST"})
            self._allow(method, "POST")
            return await self._open(request, path)
        match = SESSION_PATH.fullmatch(path)
        if match is None:
            raise HttpError(404, f"no route {path}")
        return await self._session(request, method, match["kind"], match["id"], bool(match["params"]))

    async def _open(self, request: Request, path: str) -> Response:
        if path == "/offer":
            data = self._json(await self._body(request, JSON_TYPE))
            if data.get("type", "offer") != "offer":
                raise HttpError(400, "type must be 'offer'")
            answer = await self._place("browser", data.get("sdp"), params=data.get("params"))
            return JSONResponse({"sdp": answer["sdp"], "type": "answer", "session_id": answer["id"]})
        sdp = await self._body(request, SDP_TYPE)
        if path == "/whip":
            answer = await self._place("whip", sdp)
        else:
            answer = await self._place_viewer(sdp, request.query_params.get("stream"))
        return Response(answer["sdp"], 201, media_type=SDP_TYPE, headers={"Location": f"{path}/{answer['id']}"})

    async def _session(self, request: Request, method: str, kind: str, public: str, params: bool) -> Response:
        ids = split_id(public)
        if ids is None:
            raise HttpError(404, f"no such session {public!r} (already ended?)")
        replica, session_id = ids
        kinds = {"sessions": None, "whip": ("whip",), "whep": ("whep",)}[kind]
        if params:
            self._allow(method, "POST")
            # A style image rides in a change: the control routes' own limit, as on `streamer serve`.
            changes = self._json(await self._body(request, JSON_TYPE, MAX_STYLE_BODY_BYTES))
            answer = self._ok(await self._pinned(replica, "change", session_id, changes))
            return JSONResponse(answer["body"], answer["status"])
        if method == "PATCH" and kind != "sessions":
            raise HttpError(405, "trickle ICE is not supported: the answer holds all candidates", {"Allow": "DELETE"})
        if method == "GET" and kind == "sessions":
            return JSONResponse(self._ok(await self._pinned(replica, "stats", session_id))["body"])
        self._allow(method, "DELETE")
        self._ok(await self._pinned(replica, "close", session_id, kinds))
        return Response(status_code=200)

    # ---- placement -------------------------------------------------------------------------------------
    async def _place(self, kind: str, sdp: Any, params: Any = None) -> dict[str, Any]:
        """Open on the replica with the fewest sessions that has room; the next one if it turns out full or
        gone; 503 when every replica is full."""
        loads = await self._describe_all()
        order = sorted(loads.values(), key=lambda d: (d["sessions"] + self.pending.get(d["replica"], 0),
                                                      d["replica"]))
        for load in order:
            if load["sessions"] + self.pending.get(load["replica"], 0) >= load["capacity"]:
                continue
            answer = await self._try_open(load["replica"], kind, sdp, params=params)
            if answer is not None:
                return answer
        raise HttpError(503, f"every replica is at its limit of {self.options.max_sessions} sessions; try again "
                             "later", RETRY_AFTER)

    async def _place_viewer(self, sdp: str, stream: str | None) -> dict[str, Any]:
        """A viewer joins the replica that holds the stream (a WHIP publisher's): named, else the newest."""
        if stream is not None:
            ids = split_id(stream)
            if ids is None:
                raise HttpError(404, f"no stream {stream!r}")
            replica, key = ids
        else:
            streams = [(age, load["replica"], key) for load in (await self._describe_all()).values()
                       for key, age in load["broadcasts"].items()]
            if not streams:
                raise HttpError(404, "nothing is being streamed yet: publish with WHIP")
            _, replica, key = min(streams)
        answer = await self._try_open(replica, "whep", sdp, stream=key)
        if answer is None:
            raise HttpError(404, "the stream has ended (its replica is gone)")
        return answer

    async def _try_open(self, replica: str, kind: str, sdp: Any, **extra: Any) -> dict[str, Any] | None:
        """The replica's answer (with the session's public id), None when it is full or gone; HttpError for
        the client's own mistakes (a bad offer, bad parameters)."""
        self.pending[replica] = self.pending.get(replica, 0) + 1
        try:
            answer = await asyncio.wait_for(self._call(replica, "open", kind, sdp, **extra), OPEN_TIMEOUT)
        except Exception:  # died, or stuck: try another replica
            return None
        finally:
            self.pending[replica] -= 1
        if answer["status"] == 503 or answer.get("gone"):
            return None
        self._ok(answer)
        return {**answer, "id": public_id(replica, answer["session_id"])}

    async def _describe_all(self) -> dict[str, dict[str, Any]]:
        return await gather_quietly({r: self._call(r, "describe") for r in await self._replica_ids()}, ASK_TIMEOUT)

    async def _replica_ids(self) -> list[str]:
        """The running replicas (as the router sees them; before its first update, asked of any replica)."""
        known = KNOWN_REPLICAS.get(self.deployment)
        if known:
            return list(known)
        found = await gather_quietly({str(i): self._call(None, "describe") for i in range(4)}, ASK_TIMEOUT)
        return sorted({answer["replica"] for answer in found.values()})

    async def _config(self) -> dict[str, Any]:
        options = self.options
        turn = {"username": options.ice_username, "credential": options.ice_credential}
        servers = [{"urls": url, **(turn if url.startswith("turn") else {})} for url in options.ice_servers]
        streams = sorted(public_id(load["replica"], key) for load in (await self._describe_all()).values()
                         for key in load["broadcasts"])
        return {"iceServers": servers, "streams": streams, "defaults": options.defaults}

    # ---- calls and bodies ------------------------------------------------------------------------------
    def _call(self, replica: str | None, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.replicas, method).remote(*args, replica=replica, **kwargs)

    async def _pinned(self, replica: str, method: str, *args: Any) -> dict[str, Any]:
        try:
            return await asyncio.wait_for(self._call(replica, method, *args), OPEN_TIMEOUT)
        except Exception:
            raise HttpError(404, "no such session (the replica that held it has ended)") from None

    @staticmethod
    def _ok(answer: dict[str, Any]) -> dict[str, Any]:
        if "error" in answer:
            raise HttpError(answer["status"], answer["error"], RETRY_AFTER if answer["status"] == 503 else None)
        return answer

    @staticmethod
    def _allow(method: str, allowed: str) -> None:
        if method != allowed:
            raise HttpError(405, f"use {allowed} here", {"Allow": allowed})

    @staticmethod
    async def _file(path: Path, headers: dict[str, str] | None = None) -> Response:
        """A page or script, whole (a few kB; a streamed file trips over a client that leaves early)."""
        body = await asyncio.to_thread(path.read_bytes)
        return Response(body, media_type=mimetypes.guess_type(path.name)[0] or "application/octet-stream",
                        headers=headers)

    @staticmethod
    def _static(name: str) -> Path:
        path = (STATIC / name).resolve()
        if not path.is_relative_to(STATIC) or not path.is_file():
            raise HttpError(404, f"no file /static/{name}")
        return path

    async def _body(self, request: Request, content_type: str, limit: int | None = None) -> str:
        """The body as `streamer serve` reads it (streamer.server.bodies): 415, 413, 408, 400 as there;
        ``limit``: the route's own size limit (default: the server's)."""
        refused = type_refusal(request.headers.get("Content-Type"), content_type)
        if refused:
            raise HttpError(415, refused)
        limit, raw = limit or self.options.max_body, bytearray()
        try:
            async with asyncio.timeout(self.options.read_timeout):
                async for chunk in request.stream():
                    raw += chunk
                    if len(raw) > limit:
                        raise HttpError(413, f"the body is larger than {limit} bytes")
        except TimeoutError:
            raise HttpError(408, f"the body did not arrive within {self.options.read_timeout:g} s") from None
        except HttpError:
            raise
        except Exception as exc:  # a broken chunked body, a client that went away
            raise HttpError(400, f"the body could not be read: {type(exc).__name__}") from None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise HttpError(400, "the body is not UTF-8 text") from None

    @staticmethod
    def _json(text: str) -> dict[str, Any]:
        try:
            return loads_object(text)
        except JsonError as exc:
            raise HttpError(400, str(exc)) from None
