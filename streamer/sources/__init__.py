"""Where frames come in: webcams, network streams, files, pipes, a test pattern (see ``open_source``)."""

from __future__ import annotations

from typing import Any

from streamer.sources.base import Source, SourceError, SourceTimeout

__all__ = ["Source", "SourceError", "SourceTimeout", "open_source"]


def __getattr__(name: str) -> Any:
    # Lazy, so importing the interfaces does not load PyAV/OpenCV.
    if name == "open_source":
        from streamer.sources.factory import open_source

        return open_source
    raise AttributeError(name)
