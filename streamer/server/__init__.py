"""`streamer serve`: WebRTC in and out, WHIP/WHEP, many sessions sharing one GPU worker."""

from streamer.server.app import ServerOptions, create_app, run_server

__all__ = ["ServerOptions", "create_app", "run_server"]
