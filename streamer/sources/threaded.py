"""The threaded live source: a reader thread, the one latest-frame slot, and reconnect with backoff.

A live source (camera, network stream, pipe, file played in real time) runs a reader thread that keeps
only the newest frame in a :class:`~streamer.media.slots.FrameSlot`, so a slow consumer always gets the most
recent picture instead of falling behind. Frames wait in the slot as the reader got them (a decoded
``av.VideoFrame``, a camera's BGR array) and are converted to RGB only when taken: a frame replaced before
anyone wanted it costs no conversion. Reconnecting with exponential backoff lives here, once; a source says
only how to connect, how to read frames from a connection, and how to convert one.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from streamer.media.frames import Frame
from streamer.media.slots import FrameSlot, SlotTimeout
from streamer.sources.base import Source, SourceError, SourceTimeout

log = logging.getLogger(__name__)

# Live frames without timestamps of their own (cameras, raw MJPEG) are stamped with the capture clock in
# microseconds.
CLOCK_TIME_BASE = Fraction(1, 1_000_000)
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 5.0


def clock_pts() -> int:
    """Now on the capture clock, in CLOCK_TIME_BASE units."""
    return int(time.monotonic() * 1_000_000)


@dataclass(slots=True)
class Captured:
    """A frame as the reader got it, waiting in the slot; converted to a Frame only when taken."""

    raw: Any  # av.VideoFrame, a BGR ndarray, or a Frame (SourceReader)
    pts: int | None
    time_base: Fraction
    capture_time: float
    index: int


class ThreadedSource(Source):
    """A live source whose reader thread publishes frames into one latest-frame slot.

    ``read(timeout=None)`` returns the newest frame not returned before, waiting up to ``timeout``
    seconds (default: the source's ``timeout``) for one:

    - a :class:`~streamer.media.frames.Frame` (RGB) when one arrived; frames that arrived in between are
      dropped (counted in ``dropped``; ``Frame.index`` counts every decoded frame, so gaps show drops);
    - ``None`` when the source has ended for good (a pipe whose writer closed, a file played once in
      real time) or after ``close()``; a network stream or camera never ends: it reconnects;
    - raises :class:`SourceTimeout` when no frame came in time (stalled, reconnecting): the caller can
      show a "no signal" frame and call ``read`` again.

    ``open()`` raises :class:`SourceError` (one line) when the first frame cannot be had within the
    timeout; after a first frame, failures only mean reconnecting (``reconnects`` counts them).

    Subclasses implement ``_connect``, ``_frames`` and ``_to_rgb`` (and ``_disconnect``). ``on_end`` says
    what the end of a connection means: "reconnect" (with exponential backoff, forever), "restart" (a
    looped file: at once) or "finish" (``read`` then returns None). ``on_frame(capture_time)``, when set,
    is called for every frame whose fate is settled: taken by ``read``, or replaced by a newer one (then
    ``on_drop(count)`` too, from the reader thread); frames still waiting when the source closes count
    as neither (the runtime counts frames in and drops with them).
    """

    live = True
    on_end = "reconnect"
    wait_for_first = True
    read_errors: tuple[type[BaseException], ...] = (OSError,)

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
        self.on_frame: Callable[[float], None] | None = None
        self.on_drop: Callable[[int], None] | None = None
        self._slot: FrameSlot[Captured] = self._new_slot()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fps: float | None = None

    def _new_slot(self) -> FrameSlot[Captured]:
        return FrameSlot(1)

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
        self._slot = self._new_slot()
        self._thread = threading.Thread(target=self._run_guarded, name=f"source:{self.name}", daemon=True)
        self._thread.start()
        if not self.wait_for_first:
            return
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
            error = SourceError(f"{self.name}: reader stopped: {self._describe(exc)}")
        finally:
            self._slot.close(error)

    # --- what a source says ---------------------------------------------------------------------------
    @abstractmethod
    def _connect(self, first: bool) -> Any:
        """Open the input; raise SourceError (one line) or one of ``read_errors`` on failure."""

    @abstractmethod
    def _frames(self, handle: Any) -> Iterator[tuple[Any, int | None, Fraction]]:
        """(raw frame, pts, time base) from an open input until it ends; may raise ``read_errors``."""

    def _disconnect(self, handle: Any) -> None:
        """Close an input ``_connect`` opened."""

    @abstractmethod
    def _to_rgb(self, raw: Any) -> np.ndarray: ...

    def _describe(self, exc: BaseException, timeout: float | None = None) -> str:
        """One short line for an error of the input."""
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return " ".join(str(reason).split())

    def _no_frame_message(self, reason: str) -> str:
        return f"{self.name}: connected, but no video frame arrived ({reason})"

    # --- the reader thread: connect, read, reconnect with backoff ----------------------------------------
    def _run(self) -> None:
        """Publish frames until ``self._stop`` is set or the source ends for good."""
        backoff = BACKOFF_FIRST_S
        ever_received = False
        while not self._stop.is_set():
            try:
                handle = self._connect(first=not ever_received)
            except SourceError as exc:
                if not ever_received:
                    raise
                handle, reason = None, str(exc)
            except self.read_errors as exc:
                if not ever_received:
                    raise SourceError(f"{self.name}: {self._describe(exc, self.timeout)}") from None
                handle, reason = None, self._describe(exc, self.timeout)
            if handle is not None:
                received_here = ended = False
                try:
                    for raw, pts, time_base in self._frames(handle):
                        if not received_here and ever_received and self.on_end == "reconnect":
                            self.reconnects += 1
                            log.warning("%s: reconnected (%d so far)", self.name, self.reconnects)
                        received_here = ever_received = True
                        backoff = BACKOFF_FIRST_S
                        self._publish(raw, pts, time_base)
                    ended, reason = True, "stream ended"
                except self.read_errors as exc:
                    reason = self._describe(exc, getattr(self, "read_timeout", None))
                except SourceError as exc:
                    reason = str(exc)
                finally:
                    self._disconnect(handle)
                if self._stop.is_set():
                    return
                if not ever_received:
                    raise SourceError(self._no_frame_message(reason))
                if self.on_end == "finish" and ended:
                    return
                if self.on_end == "restart" and received_here:
                    continue
            if self.on_end != "reconnect":
                raise SourceError(f"{self.name}: {reason}")
            log.warning("%s: %s; reconnecting in %.1f s", self.name, reason, backoff)
            if self._sleep(backoff):
                return
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _publish(self, raw: Any, pts: int | None, time_base: Fraction, capture_time: float | None = None,
                 index: int | None = None) -> None:
        self.frames_decoded += 1
        item = Captured(raw, pts, time_base, time.monotonic() if capture_time is None else capture_time,
                        self.frames_decoded - 1 if index is None else index)
        dropped = self._slot.put(item)
        if dropped and self.on_frame is not None:
            for _ in range(dropped):
                self.on_frame(item.capture_time)
        if dropped and self.on_drop is not None:
            self.on_drop(dropped)

    # --- the consumer's side ------------------------------------------------------------------------------
    def read(self, timeout: float | None = None) -> Frame | None:
        if self._thread is None and not self._stop.is_set():
            raise SourceError(f"{self.name}: read() before open()")
        wait = self.timeout if timeout is None else timeout
        try:
            item = self._slot.take(wait)
        except SlotTimeout:
            raise SourceTimeout(f"{self.name}: no new frame within {wait:g} s") from None
        if item is None:
            return None
        if self.on_frame is not None:
            self.on_frame(item.capture_time)
        return self._to_frame(item)

    def _to_frame(self, item: Captured) -> Frame:
        """The RGB frame of what the reader got: the one place a frame is converted."""
        return Frame(image=self._to_rgb(item.raw), pts=item.pts, time_base=item.time_base,
                     capture_time=item.capture_time, stream_id=self.stream_id, index=item.index)

    def close(self) -> None:
        self._stop.set()
        self._slot.close(discard=True)
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            # A read blocked inside FFmpeg returns at its own read timeout; the daemon thread then closes
            # its container itself, so do not hold the caller longer than that.
            thread.join(timeout=3.0)

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless closed; True when the source was closed meanwhile."""
        return self._stop.wait(seconds)


class SourceReader(ThreadedSource):
    """Reads any source on its own thread into the same slot, so a consumer takes frames as it would from
    a threaded source: a live source (a test pattern) latest-frame-wins, a file (``lossless``) one frame
    ahead without losing any. Frames keep their own pts, index and capture time. The wrapped source is
    opened by the caller and closed here, on the reader thread (a PyAV container is closed by the thread
    that reads it); ``dropped``/``on_drop`` count the frames this slot replaced.
    """

    wait_for_first = False  # the consumer shows "no signal" itself while nothing comes
    POLL_S = 0.25  # how often the reader looks at the stop flag while the source is silent

    def __init__(self, source: Source, *, lossless: bool = False) -> None:
        self.lossless = lossless
        super().__init__(stream_id=source.stream_id)
        self.source = source
        self.name = source.name
        self.live = source.live

    def _new_slot(self) -> FrameSlot[Captured]:
        return FrameSlot(1, lossless=self.lossless)

    @property
    def fps(self) -> float | None:
        return self.source.fps

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    frame = self.source.read(timeout=self.POLL_S)
                except SourceTimeout:
                    continue
                if frame is None:
                    return
                self._publish(frame, frame.pts, frame.time_base, frame.capture_time, frame.index)
        finally:
            self.source.close()

    def _connect(self, first: bool) -> Any:  # not used: _run reads the wrapped source itself
        raise NotImplementedError

    def _frames(self, handle: Any) -> Iterator[tuple[Any, int | None, Fraction]]:
        raise NotImplementedError

    def _to_rgb(self, raw: Any) -> np.ndarray:
        return raw.image

    def _to_frame(self, item: Captured) -> Frame:
        return item.raw

    def close(self) -> None:
        started = self._thread is not None
        super().close()
        if not started:
            self.source.close()


def as_threaded(source: Source, *, lossless: bool = False) -> ThreadedSource:
    """The one slot between ``source`` and the GPU worker: a threaded source's own, else a SourceReader's
    (``lossless`` for a file that must lose no frame)."""
    return source if isinstance(source, ThreadedSource) else SourceReader(source, lossless=lossless)
