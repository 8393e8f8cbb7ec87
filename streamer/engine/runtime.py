"""The live path: source -> one latest-frame slot -> GPU worker -> one writer thread (and slot) per sink.

Nothing on the way queues without bound. Between the source and the GPU worker there is one slot
(streamer.media.slots.FrameSlot): a threaded source's own (camera, network stream, pipe, file played in real
time: a newer frame replaces an untaken one, counted as dropped "in the source"), or, for a source read
on demand (the test pattern), the slot of a SourceReader thread (drops counted "at capture"). Frames are
converted to RGB only when the GPU side takes them. Each sink's slot holds one frame (a slow sink drops its
own frames and never holds back the others or the GPU). For a non-live source (a file read as fast as
possible) every slot blocks instead, so no frame is lost. When a live source goes quiet (no signal), the sinks keep their pace with the
last frame, then a "no signal" card, until frames come back; reconnecting is the source's job.

Pacing: a live source's frames are written as soon as the model returns them (the source's clock already
paces them, and holding frames back would only add latency); their pts are kept, made strictly increasing
(the one PtsClock), so recordings keep the source's timing. A non-live source feeding a live sink (virtual
camera, window, network) is held to its pts on the wall clock by the one Pacer, so a file plays at its own
rate. Latency is a frame's capture time (kept on the frame from the source) to the end of a sink's write.

Audio (a source's first audio stream, streamer.media.audio) never goes through the frame slots: it waits in
the source's queue, bounded by time, until the model has returned the video frame it plays with, and then
goes to the sinks that carry audio, re-timed by the same output clock as that frame; so it is delayed by
exactly what the model delays the video, and a dropped frame drops no audio. Audio that waited
AUDIO_HOLD_S for its video (the model stalled) goes on without it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import cv2
import numpy as np

from pipelines.errors import PipelineError
from streamer.media.audio import AUDIO_HOLD_S
from streamer.media.frames import Frame, Pacer, PtsClock
from streamer.observe.stats import RunStats
from streamer.sinks.base import Sink, SinkError
from streamer.sinks.writer import SinkWriter
from streamer.sources.base import Source, SourceError, SourceTimeout
from streamer.sources.threaded import as_threaded

log = logging.getLogger(__name__)

HOLD_LAST_S = 2.0  # with no signal, repeat the last frame this long before showing the "no signal" card
MAX_MODEL_FAILURES = 3  # consecutive failed frames before the run gives up


def no_signal_card(last: np.ndarray) -> np.ndarray:
    """The last picture dimmed, with NO SIGNAL written across it."""
    card = (last // 4).astype(np.uint8)
    height, width = card.shape[:2]
    scale = max(0.5, width / 400)
    text = "NO SIGNAL"
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 2)
    cv2.putText(card, text, ((width - tw) // 2, (height + th) // 2), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (255, 255, 255), max(1, int(scale * 2)), cv2.LINE_AA)
    return card


class Runtime:
    """Runs one source through a GPU worker into its sinks until the source ends, ``duration`` passes or
    ``stop()`` is called. ``run()`` returns the stats snapshot; it raises the error that ended the run
    (SourceError, SinkError, PipelineError) after every sink is closed.

    The worker is shared (several runtimes or the server may use one); the runtime does not close it, and
    frames go to it as ``stream_id``. ``fps`` is the nominal rate used when the source does not know its own
    (sinks open with it; "no signal" fillers keep it). ``no_signal_after`` is how long a read may wait
    before the source counts as silent.
    """

    def __init__(self, source: Source, sinks: Sequence[Sink], worker: Any, *, stats: RunStats | None = None,
                 duration: float | None = None, fps: float | None = None, no_signal_after: float = 1.0,
                 stream_id: str = "default", on_tick: Callable[[RunStats], None] | None = None,
                 tick_s: float = 0.5) -> None:
        if not sinks:
            raise ValueError("give at least one sink")
        names = [s.name for s in sinks]
        self.source = source
        self.worker = worker
        self.stats = stats or RunStats()
        self.duration = duration
        self._fps_hint = fps
        self.fps = float(fps or 30.0)  # the source's own rate replaces it once the source is open
        self.no_signal_after = no_signal_after
        self.stream_id = stream_id
        self.on_tick = on_tick
        self.tick_s = tick_s
        self.live = source.live
        # A file read at full speed into a live sink (virtual camera, window, network) plays at its own pace.
        self.pace_by_pts = not self.live and any(sink.live for sink in sinks)
        self.writers = [SinkWriter(sink, self.stats, lossless=not self.live,
                                   name=name if names.count(name) == 1 else f"{name}#{i}")
                        for i, (sink, name) in enumerate(zip(sinks, names, strict=True))]
        self.stats.watch_source(source)
        # The one slot before the model: the source's own, or a reader thread's for an on-demand source.
        self._input = as_threaded(source, lossless=not self.live)
        self._input.on_frame = self.stats.captured
        if self._input is not source:
            self._input.on_drop = self.stats.dropped_at_capture
        self._stop = threading.Event()
        self._no_signal_since: float | None = None
        self._error: BaseException | None = None
        self._last_out: Frame | None = None
        self._last_real_image: np.ndarray | None = None  # the last picture the model made (not a filler)
        self._card_cache: tuple[np.ndarray, np.ndarray] | None = None
        self._last_emit = 0.0
        self._clock = PtsClock(self.fps)  # output pts: a reconnect may restart the source's clock
        self._pacer = Pacer()
        self._audio = getattr(source, "audio", None)  # None: the source carries no audio
        if self._audio is not None:
            self._audio.used = True
        self._audio_shift = 0.0  # output pts minus the source's, seconds, as of the last frame emitted
        self._audio_lock = threading.Lock()  # the pump and the run loop both forward audio, in order

    # --- control ------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the run to end: capture stops, the frame in flight finishes, every sink is closed."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> dict[str, Any]:
        """Open the source (if not open yet), run until the end, close the source and every sink."""
        try:
            self.source.open()  # the project's sources ignore a second open
        except BaseException:
            for writer in self.writers:
                writer.finish(timeout=1)
            raise
        self.fps = self._clock.fps = float(self.source.fps or self._fps_hint or 30.0)
        started = time.monotonic()
        self.stats.started = started
        self._input.open()  # a SourceReader starts reading here; a threaded source is already reading
        pump = threading.Thread(target=self._pump, name="pump", daemon=True)
        pump.start()
        try:
            next_tick = started + self.tick_s
            while pump.is_alive():
                pump.join(0.05)
                now = time.monotonic()
                if self.duration is not None and now - started >= self.duration:
                    self.stop()
                if any(w.sink.stop_requested for w in self.writers):
                    self.stop()
                if self.writers and all(w.failed is not None for w in self.writers):
                    self._fail(SinkError(f"every sink failed; last: {self.writers[-1].failed}"))
                self._forward_audio(until=-float("inf"), waited=AUDIO_HOLD_S)
                if self.on_tick is not None and now >= next_tick:
                    next_tick = now + self.tick_s
                    self.on_tick(self.stats)
        finally:
            self.stop()
            self._close_input()  # the pump's read returns at once; the frame at the model still goes out
            pump.join(30)
            self._forward_audio()  # the end: what is left goes out behind the last frames
            for writer in self.writers:
                writer.finish(timeout=30)
        if self._error is not None:
            raise self._error
        return self.stats.snapshot()

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._stop.set()

    def _close_input(self) -> None:
        try:
            self._input.close()  # a SourceReader closes its source on its own thread
        except Exception as exc:  # noqa: BLE001
            log.warning("closing the source failed: %s", exc)

    def _no_signal(self, last_input: float) -> None:
        """A read timed out: after ``no_signal_after`` without a frame, a live source counts as silent."""
        now = time.monotonic()
        if self.live and self._no_signal_since is None and now - last_input >= self.no_signal_after:
            self._no_signal_since = now
            self.stats.no_signal = True
            log.info("%s: no signal", self.source.name)

    # --- pump thread: slot -> worker -> sinks ---------------------------------------------------------
    def _pump(self) -> None:
        failures = 0
        last_input = time.monotonic()
        try:
            while not self._stop.is_set():
                try:
                    frame = self._input.read(timeout=self._wait_for_next())  # converted here, when taken
                except SourceTimeout:
                    self._no_signal(last_input)
                    self._fill_if_no_signal()
                    continue
                if frame is None:
                    return
                last_input = time.monotonic()
                if self._no_signal_since is not None:
                    self._no_signal_since = None
                    self.stats.no_signal = False
                if frame.stream_id != self.stream_id:
                    frame = replace(frame, stream_id=self.stream_id)
                submitted = time.monotonic()
                try:
                    out = self.worker.submit(frame).result()
                except Exception as exc:  # noqa: BLE001 - a failed frame is skipped; many in a row end the run
                    failures += 1
                    self.stats.failed()
                    log.error("the model failed on frame %d: %s", frame.index, exc)
                    if failures >= MAX_MODEL_FAILURES:
                        raise PipelineError(f"the model failed on {failures} frames in a row: {exc}") from None
                    continue
                failures = 0
                done = time.monotonic()
                self.stats.processed(submitted - frame.capture_time, done - submitted, done)
                retimed = self._retime(out)
                self._emit(retimed)
                if out.seconds is not None and retimed.seconds is not None:
                    self._audio_shift = retimed.seconds - out.seconds
                    self._forward_audio(until=out.seconds + 1.0 / self.fps)
        except (SinkError, PipelineError, SourceError) as exc:
            self._fail(exc)
        except Exception as exc:  # noqa: BLE001
            log.debug("the frame loop failed", exc_info=True)  # the run ends with the one-line error below
            self._fail(PipelineError(f"the frame loop failed: {exc}"))
        finally:
            self._stop.set()

    def _wait_for_next(self) -> float:
        if self._no_signal_since is None or self._last_out is None:
            return 0.1
        return max(0.001, self._last_emit + 1.0 / self.fps - time.monotonic())

    def _forward_audio(self, until: float | None = None, waited: float | None = None) -> None:
        """Audio up to ``until`` (source seconds; None: all) and audio that waited ``waited`` seconds, from
        the source's queue to the sinks, on the output clock."""
        if self._audio is None or not any(w.opened for w in self.writers):
            return
        with self._audio_lock:
            chunks = self._audio.queue.take(until, waited=waited)
            if not chunks:
                return
            shift = self._audio_shift
            for chunk in chunks:
                chunk.seconds += shift
            for writer in self.writers:
                writer.offer_audio(chunks)

    def _emit(self, frame: Frame, *, repeated: bool = False) -> None:
        if not any(w.opened for w in self.writers):
            audio = self._audio.format if self._audio is not None else None
            for writer in self.writers:  # sizes are known now; a sink that cannot open ends the run
                writer.open(frame.width, frame.height, self.fps, audio)
        if self.pace_by_pts and not repeated:
            self._pace(frame)
        for writer in self.writers:
            writer.offer(frame, repeated=repeated)
        self._last_out = frame
        if not repeated:
            self._last_real_image = frame.image
        self._last_emit = time.monotonic()

    def _fill_if_no_signal(self) -> None:
        """While the source is silent, keep the sinks at their pace: the last frame, then a card."""
        last, since = self._last_out, self._no_signal_since
        if since is None or last is None or time.monotonic() - self._last_emit < 1.0 / self.fps:
            return
        image = last.image if time.monotonic() - since < HOLD_LAST_S else self._card()
        filler = replace(last, image=image, pts=self._clock.map(None, last.time_base),
                         capture_time=time.monotonic())
        self._emit(filler, repeated=True)

    def _card(self) -> np.ndarray:
        """NO SIGNAL over the last real picture, made once per picture (never a card of a card)."""
        image = self._last_real_image
        if self._card_cache is None or self._card_cache[0] is not image:
            self._card_cache = (image, no_signal_card(image))
        return self._card_cache[1]

    def _retime(self, frame: Frame) -> Frame:
        """Output pts only ever increase (a reconnect may restart the source's clock, fillers advance it)."""
        if frame.pts is None:
            return frame
        pts = self._clock.map(frame.pts, frame.time_base)
        return replace(frame, pts=pts, time_base=self._clock.time_base)

    def _pace(self, frame: Frame) -> None:
        """Hold a frame until its pts comes due on the wall clock (the one Pacer: re-anchored after a stall)."""
        self._pacer.wait(frame.seconds, self._stop)
