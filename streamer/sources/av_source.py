"""Sources read through PyAV (FFmpeg): network streams, files, pipes; and the latest-frame-wins reader.

Live sources (cameras, network streams, pipes, files played in real time) run a reader thread that
decodes every packet and keeps only the newest frame, so a slow consumer always gets the most recent
picture instead of falling behind. Files read as fast as the consumer wants never drop a frame.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
from abc import abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any
from urllib.parse import urlsplit

import av
import av.error
import numpy as np

from streamer.frames import Frame, PtsClock
from streamer.media.av_io import (
    decode_video,
    describe_error,
    first_video_stream,
    invents_timestamps,
    open_file,
    stream_fps,
    video_to_rgb,
)
from streamer.sources.base import Source, SourceError, SourceTimeout

log = logging.getLogger(__name__)

NETWORK_SCHEMES = ("rtsp", "rtsps", "http", "https", "srt", "udp", "rtmp")
# Live frames from formats without timestamps (raw MJPEG, multipart JPEG over HTTP) are stamped with the
# capture clock in microseconds: FFmpeg would otherwise invent 25 fps pts, wrong for any other rate.
CLOCK_TIME_BASE = Fraction(1, 1_000_000)
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 5.0


# ---------------------------------------------------------------------------------------------------------
# Latest-frame-wins reader thread


@dataclass(slots=True)
class _Pending:
    raw: Any  # av.VideoFrame or a BGR ndarray, converted to RGB only when read
    pts: int | None
    time_base: Fraction
    capture_time: float
    index: int


class LatestFrameSlot:
    """Holds only the newest frame; ``take`` returns a frame not returned before, waiting for one."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: _Pending | None = None
        self._fresh = False
        self._finished = False
        self._error: SourceError | None = None
        self.dropped = 0

    def put(self, item: _Pending) -> None:
        with self._cond:
            if self._fresh:
                self.dropped += 1
            self._item, self._fresh = item, True
            self._cond.notify_all()

    def finish(self, error: SourceError | None = None) -> None:
        with self._cond:
            self._finished = True
            self._error = self._error or error
            self._cond.notify_all()

    def wait_first(self, timeout: float) -> bool:
        """True once a frame arrived or the reader finished; False after ``timeout`` seconds."""
        with self._cond:
            return self._cond.wait_for(lambda: self._item is not None or self._finished, timeout)

    @property
    def error(self) -> SourceError | None:
        return self._error

    def take(self, timeout: float) -> _Pending | None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._fresh or self._finished, timeout):
                raise SourceTimeout(f"no new frame within {timeout:g} s")
            if self._fresh:
                self._fresh = False
                return self._item
            if self._error is not None:
                raise self._error
            return None


class ThreadedSource(Source):
    """A live source whose reader thread publishes frames into a :class:`LatestFrameSlot`.

    ``read(timeout=None)`` returns the newest frame not returned before, waiting up to ``timeout``
    seconds (default: the source's ``timeout``) for one:

    - a :class:`~streamer.frames.Frame` (RGB) when one arrived; frames that arrived in between are
      dropped (counted in ``dropped``; ``Frame.index`` counts every decoded frame, so gaps show drops);
    - ``None`` when the source has ended for good (a pipe whose writer closed, a file played once in
      real time) or after ``close()``; a network stream or camera never ends: it reconnects;
    - raises :class:`SourceTimeout` when no frame came in time (stalled, reconnecting): the caller can
      show a "no signal" frame and call ``read`` again.

    ``open()`` raises :class:`SourceError` (one line) when the first frame cannot be had within the
    timeout; after a first frame, failures only mean reconnecting (``reconnects`` counts them).
    """

    live = True

    def __init__(
        self,
        *,
        timeout: float = 5.0,
        width: int | None = None,
        height: int | None = None,
        stream_id: str = "default",
    ) -> None:
        self.timeout = timeout
        self.width, self.height = width, height
        self.stream_id = stream_id
        self.reconnects = 0
        self.frames_decoded = 0
        self._slot = LatestFrameSlot()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fps: float | None = None

    @property
    def fps(self) -> float | None:
        return self._fps

    @property
    def dropped(self) -> int:
        """Frames decoded but never returned by ``read`` because a newer one replaced them."""
        return self._slot.dropped

    def _first_frame_timeout(self) -> float:
        """How long open() waits for the first frame: connecting and then receiving may each take timeout."""
        return 2 * self.timeout + 1.0

    def open(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._slot = LatestFrameSlot()
        self._thread = threading.Thread(target=self._run_guarded, name=f"source:{self.name}", daemon=True)
        self._thread.start()
        wait_s = self._first_frame_timeout()
        if not self._slot.wait_first(wait_s):
            self.close()
            raise SourceError(f"{self.name}: no video frame within {wait_s:g} s")
        if self._slot.error is not None:
            error = self._slot.error
            self.close()
            raise error

    def _run_guarded(self) -> None:
        error: SourceError | None = None
        try:
            self._run()
        except SourceError as exc:
            error = exc
        except Exception as exc:  # a bug or an unexpected library error: end the source, say why
            log.debug("%s: reader stopped", self.name, exc_info=True)  # reported below as one line
            error = SourceError(f"{self.name}: reader stopped: {describe_error(exc)}")
        finally:
            self._slot.finish(error)

    @abstractmethod
    def _run(self) -> None:
        """Publish frames with ``_publish`` until ``self._stop`` is set or the source ends for good."""

    def _publish(self, raw: Any, pts: int | None, time_base: Fraction) -> None:
        self.frames_decoded += 1
        self._slot.put(_Pending(raw, pts, time_base, time.monotonic(), self.frames_decoded - 1))

    @abstractmethod
    def _to_rgb(self, raw: Any) -> np.ndarray: ...

    def read(self, timeout: float | None = None) -> Frame | None:
        if self._thread is None and not self._stop.is_set():
            raise SourceError(f"{self.name}: read() before open()")
        item = self._slot.take(self.timeout if timeout is None else timeout)
        if item is None:
            return None
        return Frame(
            image=self._to_rgb(item.raw),
            pts=item.pts,
            time_base=item.time_base,
            capture_time=item.capture_time,
            stream_id=self.stream_id,
            index=item.index,
        )

    def close(self) -> None:
        self._stop.set()
        self._slot.finish()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            # A read blocked inside FFmpeg returns at its own read timeout; the daemon thread then closes
            # its container itself, so do not hold the caller longer than that.
            thread.join(timeout=3.0)

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless closed; True when the source was closed meanwhile."""
        return self._stop.wait(seconds)


class AvLiveSource(ThreadedSource):
    """A live PyAV input read by a latest-frame-wins thread. Subclasses say how to connect and what an end means.

    ``on_end``: "reconnect" (network: reconnect with exponential backoff, forever), "restart" (a looped
    file: start over at once), or "finish" (a pipe, a file played once: ``read`` then returns None).
    ``pace``: sleep until each frame's pts is due (a file played as if it were a camera).
    """

    on_end = "reconnect"
    pace = False
    thread_type = "SLICE"  # frame threading would add a frame of latency per thread

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.clock = PtsClock()  # pts keep increasing across reconnects and loops
        # A stream silent this long counts as stalled; it also bounds how long close() can wait.
        self.read_timeout = min(2.0, self.timeout)

    @abstractmethod
    def _connect(self, first: bool) -> av.container.InputContainer:
        """Open the input; raise SourceError (first attempt) or any error (later attempts) on failure."""

    def _to_rgb(self, raw: av.VideoFrame) -> np.ndarray:
        return video_to_rgb(raw, self.width, self.height)

    def _run(self) -> None:
        backoff = BACKOFF_FIRST_S
        ever_received = False
        pace_anchor: tuple[float, float] | None = None  # (monotonic, seconds) of the first paced frame
        while not self._stop.is_set():
            try:
                container = self._connect(first=not ever_received)
            except SourceError as exc:
                if not ever_received:
                    raise
                container, reason = None, str(exc)
            except (av.error.FFmpegError, OSError) as exc:
                if not ever_received:
                    raise SourceError(f"{self.name}: {describe_error(exc, self.timeout)}") from None
                container, reason = None, describe_error(exc, self.timeout)
            if container is not None:
                received_here = False
                try:
                    stream = first_video_stream(container, self.name)
                    stream.thread_type = self.thread_type
                    self._fps = self._fps or stream_fps(stream)
                    self.clock.restart()
                    clock_pts = not self.pace and invents_timestamps(container)
                    for frame in decode_video(container, self._stop):
                        pts = int(time.monotonic() * 1_000_000) if clock_pts else \
                            self.clock.map(frame.pts, stream.time_base)
                        if self.pace and pts is not None and self._wait_due(pts, pace_anchor):
                            return
                        if self.pace and pace_anchor is None and pts is not None:
                            pace_anchor = (time.monotonic(), float(pts * self.clock.time_base))
                        if not received_here and ever_received and self.on_end == "reconnect":
                            self.reconnects += 1
                            log.warning("%s: reconnected (%d so far)", self.name, self.reconnects)
                        received_here = ever_received = True
                        backoff = BACKOFF_FIRST_S
                        self._publish(frame, pts, CLOCK_TIME_BASE if clock_pts else self.clock.time_base)
                    reason = "stream ended"
                except (av.error.FFmpegError, OSError) as exc:
                    reason = describe_error(exc, self.read_timeout)
                except SourceError as exc:
                    reason = str(exc)
                finally:
                    container.close()
                if self._stop.is_set():
                    return
                if not ever_received:
                    raise SourceError(f"{self.name}: connected, but no video frame arrived ({reason})")
                if self.on_end == "finish" and reason == "stream ended":
                    return
                if self.on_end == "restart" and received_here:
                    continue
            if self.on_end != "reconnect":
                raise SourceError(f"{self.name}: {reason}")
            log.warning("%s: %s; reconnecting in %.1f s", self.name, reason, backoff)
            if self._sleep(backoff):
                return
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _wait_due(self, pts: int, anchor: tuple[float, float] | None) -> bool:
        if anchor is None:
            return False
        due = anchor[0] + float(pts * self.clock.time_base) - anchor[1]
        return self._sleep(max(0.0, due - time.monotonic()))


# ---------------------------------------------------------------------------------------------------------
# Concrete PyAV sources


def low_latency_options(scheme: str, transport: str = "tcp") -> dict[str, str]:
    """FFmpeg input options that cut buffering and probing to the minimum (measured: ~37 ms on RTSP)."""
    options = {
        "fflags": "nobuffer",
        "flags": "low_delay",
        "max_delay": "0",
        "analyzeduration": "0",
        "probesize": "32768",
    }
    if scheme in ("rtsp", "rtsps"):
        options.update(rtsp_transport=transport, reorder_queue_size="0")
    return options


class NetworkSource(AvLiveSource):
    """An RTSP/HTTP(S) (MJPEG, HLS)/SRT/UDP/RTMP stream, opened for low latency, reconnecting forever.

    See :class:`ThreadedSource` for the ``read(timeout)`` contract. ``transport`` is the RTSP transport
    ("tcp" is robust through NAT and loss; "udp" can be lower latency on clean networks).
    """

    def __init__(self, url: str, *, transport: str = "tcp", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if transport not in ("tcp", "udp"):
            raise SourceError(f"unknown RTSP transport {transport!r}: use tcp or udp")
        self.url = url
        self.scheme = urlsplit(url).scheme.lower()
        self.transport = transport
        self.name = url

    def _connect(self, first: bool) -> av.container.InputContainer:
        started = time.monotonic()
        try:
            return av.open(
                self.url,
                options=low_latency_options(self.scheme, self.transport),
                timeout=(self.timeout, self.read_timeout),
            )
        except av.error.FFmpegError as exc:
            if first:
                reason = self._explain(exc, time.monotonic() - started)
                raise SourceError(f"cannot open {self.url}: {reason}") from None
            raise

    def _explain(self, exc: av.error.FFmpegError, elapsed: float) -> str:
        if elapsed >= self.timeout - 0.05:
            # Our open timeout interrupted FFmpeg; its demuxers then report odd errors (e.g. invalid data).
            return f"no answer within {self.timeout:g} s (check the address and that the server is streaming)"
        if isinstance(exc, av.error.ProtocolNotFoundError):
            return f"the FFmpeg inside PyAV was built without {self.scheme}:// support"
        reason = describe_error(exc, self.timeout)
        parts = urlsplit(self.url)
        host = parts.hostname
        if isinstance(exc, av.error.InvalidDataError) and host:
            # The connection was made, then closed (or answered with something else) before any reply
            # FFmpeg understood: FFmpeg says "invalid data", the user needs to hear that the host did not answer.
            where = f"{host}:{parts.port}" if parts.port else host
            if self.scheme in ("rtsp", "rtsps"):
                return (f"{where} did not answer as an RTSP server (the connection closed without a reply; "
                        "check the address, port and path)")
            return f"{where} did not answer with a video stream (check the address, port and path)"
        if isinstance(exc, av.error.OSError) and host:
            try:  # FFmpeg reports a failed name lookup as a bare I/O error
                socket.getaddrinfo(host, None)
            except OSError:
                return f"cannot resolve host {host!r}"
        return reason


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

    def _run(self) -> None:
        try:
            super()._run()
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
        self.audio_streams = len(container.streams.audio)  # not played: `run` carries video only
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
        self._time_base: Fraction | None = None
        self._frames: Iterator[av.VideoFrame] | None = None
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
        self.audio_streams = len(container.streams.audio)  # not read: `run` carries video only
        self._container, self._frames = container, decode_video(container)

    def read(self, timeout: float | None = None) -> Frame | None:
        if self._ended:
            return None
        if self._frames is None:
            raise SourceError(f"{self.name}: read() before open()")
        for _attempt in range(2):
            try:
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
            return Frame(
                image=video_to_rgb(frame, self.width, self.height),
                pts=self.clock.map(frame.pts, self._time_base),
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

