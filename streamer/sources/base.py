"""The one interface every source implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

from streamer.media.audio import AudioTap
from streamer.media.frames import Frame


class SourceError(RuntimeError):
    """A source could not be opened or read; the message is one line a user can act on."""


class Source(ABC):
    """open() -> read() until it returns None -> close(). Also a context manager.

    ``read`` blocks until the next frame and returns None at the end of the stream; with ``timeout`` a live
    source raises SourceTimeout when no frame came in time (the caller keeps its sinks' pace meanwhile). ``live`` sources
    produce frames on their own clock (a camera, a network stream); the others can be read as fast as
    the consumer wants (a file).
    """

    live: bool = True
    name: str = "source"
    stream_id: str = "default"
    reconnects: int = 0  # times a live source reconnected after its first frame
    dropped: int | None = None  # frames replaced in the source's own slot before anyone took them, if it has one
    audio_streams: int = 0  # audio streams in the input
    audio: AudioTap | None = None  # the input's first audio stream, when the source carries it (see media.audio)

    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def read(self, timeout: float | None = None) -> Frame | None: ...

    @abstractmethod
    def close(self) -> None: ...

    @property
    def fps(self) -> float | None:
        """Nominal frame rate when known."""
        return None

    def __enter__(self) -> Source:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SourceTimeout(SourceError, TimeoutError):
    """No frame arrived in time (a stalled or reconnecting live source); the caller keeps its sinks' pace."""
