"""WHIP ingest (RFC 9725) and WHEP playback: one HTTP POST of SDP each way, DELETE to hang up.

OBS publishes its camera with WHIP to /whip; any WHEP player (or the /watch page) plays the stylized
stream from /whep. No trickle ICE: the answer already carries every candidate.
"""

from __future__ import annotations

from aiohttp import web

from streamer.server.bodies import SDP_TYPE, read_text
from streamer.server.sessions import SessionManager


async def read_sdp(request: web.Request) -> str:
    return await read_text(request, SDP_TYPE)


def created(resource: str, sdp: str) -> web.Response:
    return web.Response(status=201, text=sdp, content_type=SDP_TYPE, headers={"Location": resource})


def add_routes(app: web.Application, manager: SessionManager) -> None:
    async def whip_post(request: web.Request) -> web.Response:
        session, answer = await manager.open_stylizing(await read_sdp(request), kind="whip")
        return created(f"/whip/{session.id}", answer)

    async def whep_post(request: web.Request) -> web.Response:
        session, answer = await manager.open_viewer(await read_sdp(request), request.query.get("stream"))
        return created(f"/whep/{session.id}", answer)

    def delete(kind: str):
        async def handler(request: web.Request) -> web.Response:
            await manager.close(manager.get(request.match_info["id"], kinds=(kind,)).id)
            return web.Response(status=200)
        return handler

    async def no_trickle(request: web.Request) -> web.Response:
        raise web.HTTPMethodNotAllowed(request.method, ["DELETE"],
                                       text="trickle ICE is not supported: the answer holds all candidates\n")

    async def options(request: web.Request) -> web.Response:
        return web.Response(status=204, headers={"Accept-Post": SDP_TYPE, "Allow": "OPTIONS, POST"})

    app.router.add_post("/whip", whip_post)
    app.router.add_route("OPTIONS", "/whip", options)
    app.router.add_delete("/whip/{id}", delete("whip"))
    app.router.add_patch("/whip/{id}", no_trickle)
    app.router.add_post("/whep", whep_post)
    app.router.add_route("OPTIONS", "/whep", options)
    app.router.add_delete("/whep/{id}", delete("whep"))
    app.router.add_patch("/whep/{id}", no_trickle)
