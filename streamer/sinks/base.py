"""The one interface every sink implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

from streamer.frames import Frame


class SinkError(RuntimeError):
    """A sink could not be opened or written; the message is one line a user can act on."""


class Sink(ABC):
    """open(width, height, fps) -> write(frame)... -> close(); ``with sink:`` closes it.

    ``open`` gets the size of the first frame and the nominal rate; ``close`` finalizes (a recorded file
    is playable after it).
    """

    name: str = "sink"
    live: bool = False  # shows frames as they come (window, virtual camera, network): paced by the runtime

    @abstractmethod
    def open(self, width: int, height: int, fps: float) -> None: ...

    @abstractmethod
    def write(self, frame: Frame) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
