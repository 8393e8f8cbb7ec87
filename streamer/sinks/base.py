"""The one interface every sink implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

from streamer.media.audio import AudioChunk
from streamer.media.frames import Frame


class SinkError(RuntimeError):
    """A sink could not be opened or written; the message is one line a user can act on."""


class Sink(ABC):
    """open(width, height, fps) -> write(frame)... -> close(); ``with sink:`` closes it.

    ``open`` gets the size of the first frame and the nominal rate; ``close`` finalizes (a recorded file
    is playable after it).
    """

    name: str = "sink"
    live: bool = False  # shows frames as they come (window, virtual camera, network): paced by the runtime
    target: str | None = None  # the file path or URL written; None for a window or a camera device
    is_network: bool = False  # ``target`` is a URL a peer receives, not a local file
    stop_requested: bool = False  # the user asked to stop from the sink itself (a preview window closed)
    takes_audio: bool = False  # carries a live source's audio: open(..., audio_from=[...]) and write_audio()

    @property
    def file(self) -> str | None:
        """The local file this sink writes, if it writes one."""
        return self.target if self.target is not None and not self.is_network else None

    @abstractmethod
    def open(self, width: int, height: int, fps: float) -> None: ...

    @abstractmethod
    def write(self, frame: Frame) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    def write_audio(self, chunk: AudioChunk) -> None:
        """One audio packet, after the video frame it follows (only sinks that ``takes_audio``)."""
        raise NotImplementedError(f"{self.name} carries no audio")

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
