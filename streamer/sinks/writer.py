"""A sink's writer thread: one slot and one thread per sink, so a slow sink never holds back the others."""

from __future__ import annotations

import logging
import threading
import time

from streamer.media.frames import Frame
from streamer.media.slots import FrameSlot
from streamer.observe.stats import RunStats
from streamer.sinks.base import Sink

log = logging.getLogger(__name__)


class SinkWriter:
    """One sink on its own thread behind its own slot (the one FrameSlot: live, a slow sink drops its own
    frames; ``lossless``, it holds the others back instead); counts its drops, write times and latency.

    Latency is the frame's capture time (streamer.media.frames.Frame) to the end of this sink's write.

    A sink that fails is logged once, marked ``failed``, and skipped from then on; the others go on.
    """

    def __init__(self, sink: Sink, stats: RunStats, *, lossless: bool, name: str | None = None) -> None:
        self.sink = sink
        self.stats = stats
        self.name = name or sink.name
        self.lossless = lossless
        self.failed: BaseException | None = None
        self.opened = False
        self._closed = False
        self._slot: FrameSlot[tuple[Frame, bool]] = FrameSlot(2 if lossless else 1, lossless=lossless)
        self._thread = threading.Thread(target=self._run, name=f"sink:{self.name}", daemon=True)
        stats.add_sink(self.name)

    def open(self, width: int, height: int, fps: float) -> None:
        self.sink.open(width, height, fps)
        self.opened = True
        self._thread.start()

    def offer(self, frame: Frame, *, repeated: bool = False) -> None:
        if self.failed is not None or not self.opened:
            return
        dropped = self._slot.put((frame, repeated))
        if dropped:
            self.stats.sink_dropped(self.name, dropped)

    def finish(self, timeout: float) -> None:
        """Write what is waiting (at most a frame or two), then close the sink (a file is finalized)."""
        self._slot.close()
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("%s: still writing after %.0f s; leaving it", self.name, timeout)
                return
        self._close_sink()

    def _run(self) -> None:
        try:
            while True:
                item = self._slot.take()
                if item is None:
                    return
                frame, repeated = item
                if self.failed is not None:
                    continue
                start = time.monotonic()
                try:
                    self.sink.write(frame)
                except Exception as exc:  # noqa: BLE001 - one sink failing must not stop the others
                    self.failed = exc
                    self.stats.sink_failed(self.name)
                    log.error("%s: write failed, this sink stops: %s", self.name, str(exc).splitlines()[0]
                              if str(exc) else type(exc).__name__)
                    continue
                done = time.monotonic()
                self.stats.sink_written(self.name, done - start, None if repeated else done - frame.capture_time,
                                        done)
        finally:
            self._close_sink()

    def _close_sink(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.sink.close()
        except Exception as exc:  # noqa: BLE001 - closing the others matters more
            log.error("%s: close failed: %s", self.name, exc)
