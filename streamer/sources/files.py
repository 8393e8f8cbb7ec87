"""Files and pipes: a file read as fast as the consumer asks (every frame), a file played in real time
(paced by its pts, optionally looped), and a live pipe (a FIFO or stdin) that ends with its writer."""

from __future__ import annotations

import os
import select
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import av
import av.error

from streamer.media.audio import AudioTap
from streamer.media.av_io import (
    decode_media,
    describe_error,
    first_video_stream,
    open_file,
    stream_fps,
    video_to_rgb,
)
from streamer.media.frames import Frame, PtsClock
from streamer.sources.av_live import AvLiveSource, low_latency_options
from streamer.sources.base import Source, SourceError


class PipeSource(AvLiveSource):
    """A live, unseekable input: a named pipe (FIFO) or ``pipe:`` (stdin). Ends when the writer closes."""

    on_end = "finish"

    def __init__(self, path: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.path = path
        self.name = path
        self._fd: int | None = None

    def _connect(self, first: bool) -> av.container.InputContainer:
        options = low_latency_options("pipe")
        if self.path in ("pipe:", "pipe:0", "-"):
            return av.open("pipe:0", options=options, timeout=(self.timeout, self.read_timeout))
        # A blocking open() of a FIFO hangs until a writer appears and cannot be interrupted; open it
        # non-blocking and poll, so a silent pipe times out and close() is prompt.
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            if not poller.poll(self.timeout * 1000):
                raise SourceError(f"{self.path}: nothing was written to the pipe within {self.timeout:g} s")
            container = av.open(f"pipe:{fd}", options=options, timeout=(self.timeout, self.read_timeout))
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return container

    def _disconnect(self, handle: av.container.InputContainer) -> None:
        try:
            handle.close()
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

class RealtimeFileSource(AvLiveSource):
    """A file played at its own frame rate (by pts), as if it were a camera; ``loop`` plays it forever."""

    pace = True
    thread_type = "AUTO"

    def __init__(self, path: str, *, loop: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.path = path
        self.name = path
        self.on_end = "restart" if loop else "finish"
        self.audio_streams = 0

    def _connect(self, first: bool) -> av.container.InputContainer:
        container = open_file(self.path)
        self.audio_streams = len(container.streams.audio)
        return container


class FileSource(Source):
    """A video file read as fast as the consumer asks, every frame in order (none dropped).

    ``read()`` returns the next frame, or None at the end (never with ``loop=True``: the file starts
    over and pts keep increasing). The ``timeout`` argument of ``read`` is accepted and ignored.
    """

    live = False

    def __init__(
        self,
        path: str,
        *,
        loop: bool = False,
        width: int | None = None,
        height: int | None = None,
        stream_id: str = "default",
    ) -> None:
        self.path = path
        self.name = path
        self.loop = loop
        self.width, self.height = width, height
        self.stream_id = stream_id
        self.clock = PtsClock()  # pts keep increasing when the file loops
        self.audio = AudioTap(self.clock)  # its first audio stream, placed on the same clock
        self._time_base: Fraction | None = None
        self._frames: Iterator[av.VideoFrame | av.Packet] | None = None
        self._container: av.container.InputContainer | None = None
        self._fps: float | None = None
        self._index = 0
        self._ended = False
        self.audio_streams = 0

    @property
    def fps(self) -> float | None:
        return self._fps

    def open(self) -> None:
        if self._container is None:
            self._start()

    def _start(self) -> None:
        container = open_file(self.path)
        stream = first_video_stream(container, self.path)
        stream.thread_type = "AUTO"
        self._fps = self._fps or stream_fps(stream)
        self.clock.restart()
        self._time_base = stream.time_base
        self.audio_streams = len(container.streams.audio)
        audio = container.streams.audio[:1]
        self.audio.connected(audio[0] if audio else None)
        self._container, self._frames = container, decode_media(container, stream, audio=audio)

    def read(self, timeout: float | None = None) -> Frame | None:
        if self._ended:
            return None
        if self._frames is None:
            raise SourceError(f"{self.name}: read() before open()")
        for _attempt in range(2):
            try:
                frame = next(self._frames)
                while isinstance(frame, av.Packet):  # audio between frames: on to the audio queue
                    self.audio.packet(frame)
                    frame = next(self._frames)
            except StopIteration:
                self.close()
                if not self.loop:
                    self._ended = True
                    return None
                self._start()
                continue
            except (av.error.FFmpegError, OSError) as exc:
                raise SourceError(f"{self.path}: cannot decode: {describe_error(exc)}") from None
            self._index += 1
            pts = self.clock.map(frame.pts, self._time_base)
            self.audio.video_placed()
            return Frame(
                image=video_to_rgb(frame, self.width, self.height),
                pts=pts,
                time_base=self.clock.time_base,
                stream_id=self.stream_id,
                index=self._index - 1,
            )
        raise SourceError(f"{self.path}: no video frame in the file")

    def close(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            container.close()
        self._frames = None
