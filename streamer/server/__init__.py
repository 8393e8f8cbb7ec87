"""`streamer serve`: WebRTC in and out, WHIP/WHEP, many sessions sharing one GPU worker."""

from typing import Any

__all__ = ["ServerOptions", "create_app", "run_server"]


def __getattr__(name: str) -> Any:
    # Loaded on first use: `streamer run --help` needs the guard's flags (server.auth), not aiortc.
    if name in __all__:
        from streamer.server import app

        return getattr(app, name)
    raise AttributeError(name)
