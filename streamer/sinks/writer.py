"""A sink's writer thread: one slot and one thread per sink, so a slow sink never holds back the others."""

from __future__ import annotations

import logging
import threading
import time

from streamer.media.audio import AUDIO_HOLD_S, AudioChunk, AudioFormat, AudioQueue
from streamer.media.frames import Frame
from streamer.media.slots import FrameSlot, SlotTimeout
from streamer.observe.stats import RunStats
from streamer.sinks.base import Sink

log = logging.getLogger(__name__)

AUDIO_POLL_S = 0.05  # with audio, how often a writer waiting for video looks for audio that waited too long


class SinkWriter:
    """One sink on its own thread behind its own slot (the one FrameSlot: live, a slow sink drops its own
    frames; ``lossless``, it holds the others back instead); counts its drops, write times and latency.

    Latency is the frame's capture time (streamer.media.frames.Frame) to the end of this sink's write.

    A sink that fails is logged once, marked ``failed``, and skipped from then on; the others go on.

    Audio (a sink that ``takes_audio``, opened with the source's ``audio``) waits in its own AudioQueue,
    bounded by time (streamer.media.audio), never in the frame slot: each packet is written after the
    video frame it plays with (its pts before that frame's end), or alone once it has waited AUDIO_HOLD_S
    since capture (the video stalled). A dropped video frame drops no audio.
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
        self.audio = AudioQueue()
        self.carries_audio = False
        self._frame_s = 1 / 30  # one frame at the run's rate: audio up to a frame's end goes with it
        self._last_video: tuple[float, float] | None = None  # (pts seconds, wall time) of the last frame written
        self._thread = threading.Thread(target=self._run, name=f"sink:{self.name}", daemon=True)
        stats.add_sink(self.name)

    def open(self, width: int, height: int, fps: float, audio: AudioFormat | None = None) -> None:
        """Open the sink; with ``audio`` (the source's audio) a sink that takes audio gets a stream for it."""
        if audio is not None and self.sink.takes_audio:
            self.sink.open(width, height, fps, audio_from=[audio.stream])
            self.carries_audio = True
        else:
            self.sink.open(width, height, fps)
        self._frame_s = 1 / fps if fps > 0 else self._frame_s
        self.opened = True
        self._thread.start()

    def offer(self, frame: Frame, *, repeated: bool = False) -> None:
        if self.failed is not None or not self.opened:
            return
        dropped = self._slot.put((frame, repeated))
        if dropped:
            self.stats.sink_dropped(self.name, dropped)

    def offer_audio(self, chunks: list[AudioChunk]) -> None:
        """Audio for this sink, in order; written by the sink's thread beside its video."""
        if not self.carries_audio or self.failed is not None or not self.opened:
            return
        for chunk in chunks:
            dropped = self.audio.put(chunk)
            if dropped:
                self.stats.audio.dropped(self.name, dropped)

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
                try:
                    item = self._slot.take(AUDIO_POLL_S if self.carries_audio else None)
                except SlotTimeout:
                    self._write_audio(self.audio.take(until=-float("inf"), waited=AUDIO_HOLD_S))
                    continue
                if item is None:
                    self._last_video = None  # the end: what is left goes out, after the last frame
                    self._write_audio(self.audio.take())
                    return
                frame, repeated = item
                if self.failed is not None:
                    continue
                start = time.monotonic()
                try:
                    self.sink.write(frame)
                except Exception as exc:  # noqa: BLE001 - one sink failing must not stop the others
                    self._failed(exc)
                    continue
                done = time.monotonic()
                self.stats.sink_written(self.name, done - start, None if repeated else done - frame.capture_time,
                                        done)
                if self.carries_audio and frame.seconds is not None:
                    if not repeated:
                        self._last_video = (frame.seconds, done)
                    self._write_audio(self.audio.take(until=frame.seconds + self._frame_s, waited=AUDIO_HOLD_S))
        finally:
            self._close_sink()

    def _write_audio(self, chunks: list[AudioChunk]) -> None:
        for chunk in chunks:
            if self.failed is not None:
                return
            try:
                self.sink.write_audio(chunk)
            except Exception as exc:  # noqa: BLE001 - as a failed video write
                self._failed(exc)
                return
            now = time.monotonic()
            offset = None
            if self._last_video is not None:  # how much later than its video the sound left, seconds
                offset = (now - self._last_video[1]) - (chunk.seconds - self._last_video[0])
            self.stats.audio.written(self.name, now - chunk.capture_time, offset)

    def _failed(self, exc: BaseException) -> None:
        self.failed = exc
        self.stats.sink_failed(self.name)
        log.error("%s: write failed, this sink stops: %s", self.name, str(exc).splitlines()[0]
                  if str(exc) else type(exc).__name__)

    def _close_sink(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.sink.close()
        except Exception as exc:  # noqa: BLE001 - closing the others matters more
            log.error("%s: close failed: %s", self.name, exc)
