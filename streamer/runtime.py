"""The live path: source -> capture thread -> latest-frame slot -> GPU worker -> one writer thread per sink.

Nothing on the way queues without bound. For a live source the capture slot holds one frame (a newer one
replaces it: a drop "at capture") and each sink's slot holds one (a slow sink drops its own frames and never
holds back the others or the GPU). For a non-live source (a file read as fast as possible) every slot blocks
instead, so no frame is lost. When a live source goes quiet (no signal), the sinks keep their pace with the
last frame, then a "no signal" card, until frames come back; reconnecting is the source's job.

Pacing: a live source's frames are written as soon as the model returns them (the source's clock already
paces them, and holding frames back would only add latency); their pts are kept, made strictly increasing,
so recordings keep the source's timing. A non-live source feeding a live sink (virtual camera, window,
network) is held to its pts on the wall clock, so a file plays at its own rate.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import cv2
import numpy as np

from pipelines.errors import PipelineError
from streamer.frames import Frame, PtsClock
from streamer.sinks.base import Sink, SinkError
from streamer.sources.base import Source, SourceError, SourceTimeout
from streamer.stats import RunStats

log = logging.getLogger(__name__)

TIMEOUT = object()  # BoundedSlot.get: nothing arrived in time
HOLD_LAST_S = 2.0  # with no signal, repeat the last frame this long before showing the "no signal" card
MAX_MODEL_FAILURES = 3  # consecutive failed frames before the run gives up


class BoundedSlot:
    """At most ``capacity`` items. ``put(block=False)`` replaces the oldest when full (a drop);
    ``put(block=True)`` waits for room. ``get`` returns an item, ``TIMEOUT``, or None once closed and empty.
    """

    def __init__(self, capacity: int = 1) -> None:
        self.capacity = capacity
        self._items: deque[Any] = deque()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, item: Any, *, block: bool) -> int:
        """Add ``item``; return how many older items it pushed out (0 when blocking)."""
        with self._cond:
            dropped = 0
            if block:
                self._cond.wait_for(lambda: len(self._items) < self.capacity or self._closed)
            else:
                while len(self._items) >= self.capacity:
                    self._items.popleft()
                    dropped += 1
            if self._closed:
                return dropped
            self._items.append(item)
            self._cond.notify_all()
            return dropped

    def get(self, timeout: float | None = None) -> Any:
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._closed, timeout):
                return TIMEOUT
            if self._items:
                item = self._items.popleft()
                self._cond.notify_all()
                return item
            return None

    def close(self, *, discard: bool = False) -> None:
        """No more puts; ``get`` drains what is left (or nothing with ``discard``) then returns None."""
        with self._cond:
            self._closed = True
            if discard:
                self._items.clear()
            self._cond.notify_all()


class SinkWriter:
    """One sink on its own thread behind a small slot; counts its own drops, write times and latency.

    A sink that fails is logged once, marked ``failed``, and skipped from then on; the others go on.
    """

    def __init__(self, sink: Sink, stats: RunStats, *, lossless: bool, name: str | None = None) -> None:
        self.sink = sink
        self.stats = stats
        self.name = name or getattr(sink, "name", type(sink).__name__)
        self.lossless = lossless
        self.failed: BaseException | None = None
        self.opened = False
        self._closed = False
        self._slot = BoundedSlot(2 if lossless else 1)
        self._thread = threading.Thread(target=self._run, name=f"sink:{self.name}", daemon=True)
        stats.add_sink(self.name)

    def open(self, width: int, height: int, fps: float) -> None:
        self.sink.open(width, height, fps)
        self.opened = True
        self._thread.start()

    def offer(self, frame: Frame, *, repeated: bool = False) -> None:
        if self.failed is not None or not self.opened:
            return
        dropped = self._slot.put((frame, repeated), block=self.lossless)
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
                item = self._slot.get()
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
        names = [getattr(s, "name", type(s).__name__) for s in sinks]
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
        self.live = bool(getattr(source, "live", True))
        # A file read at full speed into a live sink (virtual camera, window, network) plays at its own pace.
        self.pace_by_pts = not self.live and any(sink.live for sink in sinks)
        self.writers = [SinkWriter(sink, self.stats, lossless=not self.live,
                                   name=name if names.count(name) == 1 else f"{name}#{i}")
                        for i, (sink, name) in enumerate(zip(sinks, names, strict=True))]
        self.stats.watch_source(source)
        self._capture_slot = BoundedSlot(1)
        self._stop = threading.Event()
        self._no_signal_since: float | None = None
        self._error: BaseException | None = None
        self._last_out: Frame | None = None
        self._last_real_image: np.ndarray | None = None  # the last picture the model made (not a filler)
        self._card_cache: tuple[np.ndarray, np.ndarray] | None = None
        self._last_emit = 0.0
        self._clock = PtsClock(self.fps)  # output pts: a reconnect may restart the source's clock
        self._pace_anchor: tuple[float, float] | None = None

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
        capture = threading.Thread(target=self._capture, name="capture", daemon=True)
        pump = threading.Thread(target=self._pump, name="pump", daemon=True)
        capture.start()
        pump.start()
        try:
            next_tick = started + self.tick_s
            while pump.is_alive():
                pump.join(0.05)
                now = time.monotonic()
                if self.duration is not None and now - started >= self.duration:
                    self.stop()
                if any(getattr(w.sink, "stop_requested", False) for w in self.writers):
                    self.stop()
                if self.writers and all(w.failed is not None for w in self.writers):
                    self._fail(SinkError(f"every sink failed; last: {self.writers[-1].failed}"))
                if self.on_tick is not None and now >= next_tick:
                    next_tick = now + self.tick_s
                    self.on_tick(self.stats)
        finally:
            self.stop()
            pump.join(30)
            self._capture_slot.close(discard=True)
            capture.join(5)
            if capture.is_alive():
                log.warning("the source did not stop within 5 s; leaving it")
            for writer in self.writers:
                writer.finish(timeout=30)
        if self._error is not None:
            raise self._error
        return self.stats.snapshot()

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._stop.set()

    # --- capture thread -----------------------------------------------------------------------------
    def _capture(self) -> None:
        read = self.source.read
        try:
            while not self._stop.is_set():
                try:
                    frame = read(timeout=self.no_signal_after)
                except SourceTimeout:
                    if self._no_signal_since is None:
                        self._no_signal_since = time.monotonic()
                        self.stats.no_signal = True
                        log.info("%s: no signal", getattr(self.source, "name", "source"))
                    continue
                if frame is None:
                    return
                if self._no_signal_since is not None:
                    self._no_signal_since = None
                    self.stats.no_signal = False
                if frame.stream_id != self.stream_id:
                    frame = replace(frame, stream_id=self.stream_id)
                self.stats.captured(frame.capture_time)
                dropped = self._capture_slot.put(frame, block=not self.live)
                if dropped:
                    self.stats.dropped_at_capture(dropped)
        except SourceError as exc:
            self._fail(exc)
        except Exception as exc:  # noqa: BLE001 - end the run with one line rather than hang
            log.debug("capture failed", exc_info=True)  # the run ends with the one-line error below
            self._fail(SourceError(f"reading the source failed: {exc}"))
        finally:
            self._capture_slot.close()
            try:
                self.source.close()
            except Exception as exc:  # noqa: BLE001
                log.warning("closing the source failed: %s", exc)

    # --- pump thread: slot -> worker -> sinks ---------------------------------------------------------
    def _pump(self) -> None:
        failures = 0
        try:
            while not self._stop.is_set():
                item = self._capture_slot.get(timeout=self._wait_for_next())
                if item is None:
                    return
                if item is TIMEOUT:
                    self._fill_if_no_signal()
                    continue
                frame: Frame = item
                submitted = time.monotonic()
                try:
                    out = self.worker.submit(frame).result()
                except Exception as exc:  # noqa: BLE001 - a failed frame is skipped; many in a row end the run
                    failures += 1
                    log.error("the model failed on frame %d: %s", frame.index, exc)
                    if failures >= MAX_MODEL_FAILURES:
                        raise PipelineError(f"the model failed on {failures} frames in a row: {exc}") from None
                    continue
                failures = 0
                done = time.monotonic()
                self.stats.processed(submitted - frame.capture_time, done - submitted, done)
                self._emit(self._retime(out))
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

    def _emit(self, frame: Frame, *, repeated: bool = False) -> None:
        if not any(w.opened for w in self.writers):
            for writer in self.writers:  # sizes are known now; a sink that cannot open ends the run
                writer.open(frame.width, frame.height, self.fps)
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
        """Hold a frame until its pts comes due on the wall clock (re-anchored after a stall)."""
        seconds = frame.seconds
        if seconds is None:
            return
        now = time.monotonic()
        if self._pace_anchor is None:
            self._pace_anchor = (now, seconds)
            return
        due = self._pace_anchor[0] + seconds - self._pace_anchor[1]
        if due < now - 0.5 or due > now + 2.0:  # fell far behind, or the clock jumped: start again here
            self._pace_anchor = (now, seconds)
        elif due > now:
            self._stop.wait(due - now)
