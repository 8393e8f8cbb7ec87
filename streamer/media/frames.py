"""The one frame type that travels from a source to every sink."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from fractions import Fraction

import numpy as np


@dataclass(slots=True)
class Frame:
    """An RGB picture with the timing it was captured with.

    ``pts`` counts ``time_base`` units on the source's clock and is copied unchanged from input to output,
    so a recorded file keeps the source's timing (variable frame rate, gaps) and audio stays in sync.
    ``capture_time`` is ``time.monotonic()`` when the source produced the frame (a camera's or network
    stream's frame when it was decoded, a test pattern's when it was drawn, a browser's or WHIP peer's when
    it arrived at the server). It travels unchanged from capture to every sink, on the ``run`` path and the
    ``serve`` path alike, and is what latency is measured from: **latency is capture (or arrival at the
    server) to the sink's write (``run``) or the track's send (``serve``)**.
    """

    image: np.ndarray  # (H, W, 3) uint8 RGB
    pts: int | None = None
    time_base: Fraction = Fraction(1, 90_000)
    capture_time: float = field(default_factory=time.monotonic)
    stream_id: str = "default"
    index: int = 0  # running count within its stream, for logs and drop accounting

    @property
    def seconds(self) -> float | None:
        """Presentation time in seconds, or None when the source gave no timestamp."""
        return None if self.pts is None else float(self.pts * self.time_base)

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    def with_image(self, image: np.ndarray) -> Frame:
        """The same frame (timing, stream, index) carrying new pixels."""
        return replace(self, image=image)


def frame_step(fps: float, time_base: Fraction) -> int:
    """One frame at ``fps``, counted in ``time_base`` units (at least one)."""
    return max(1, round(1 / (fps * time_base)))


class PtsClock:
    """pts that only ever increase, counted in the first time base it is given.

    A source's pts pass through (converted to that time base) until they step back (a reconnect, a looped
    file, a restarted encoder); then the clock goes on one frame after the last pts it gave and keeps the
    source's spacing from there. ``restart()`` does the same at the next pts even when it moves forward (a
    new segment whose clock has nothing to do with the last). A missing pts gets the next one. ``fps``
    fixes the length of a frame; without it, a frame is the spacing last seen. ``time_base`` fixes the
    output time base up front (an encoder's stream); without it, the first one given is kept.

    The one rule of its kind: sources (across reconnects and loops), the runtime (across "no signal"
    fillers) and the encoder sink (a muxer must never see time go back) each keep an instance.
    """

    def __init__(self, fps: float | None = None, time_base: Fraction | None = None) -> None:
        self.fps = fps
        self.time_base: Fraction | None = None if time_base is None else Fraction(time_base)
        self.last: int | None = None
        self._offset = 0
        self._spacing = 1
        self._restart = False

    def restart(self) -> None:
        self._restart = self.last is not None

    def map(self, pts: int | None, time_base: Fraction) -> int | None:
        if self.time_base is None:
            self.time_base = Fraction(time_base)
        if pts is None:
            return None if self.last is None else self._give(self.last + self._step())
        scaled = pts if time_base == self.time_base else round(pts * Fraction(time_base) / self.time_base)
        out = scaled + self._offset
        if self.last is not None and (self._restart or out <= self.last):
            out = self.last + self._step()
            self._offset = out - scaled
        self._restart = False
        return self._give(out)

    def seconds_of(self, pts: int | None, time_base: Fraction) -> float | None:
        """Where a timestamp of the same source lands on this clock, in seconds, without moving the clock
        (audio placed beside the video it came with). None before the first pts, or while a restart waits
        for its first pts (the new offset is not known yet)."""
        if pts is None or self.time_base is None or self.last is None or self._restart:
            return None
        return float(pts * Fraction(time_base) + self._offset * self.time_base)

    def _step(self) -> int:
        assert self.time_base is not None
        return frame_step(self.fps, self.time_base) if self.fps else self._spacing

    def _give(self, out: int) -> int:
        if self.last is not None:
            self._spacing = out - self.last
        self.last = out
        return out



class Pacer:
    """Holds frames to their presentation time on the wall clock: the one pacer (a file played in real
    time by its source, a file read at full speed into a live sink by the runtime).

    The first frame anchors (wall time, pts seconds); each later one is due at the anchor plus its pts
    distance. A frame more than ``behind`` seconds late (a stall: the reader or the machine was held up)
    or more than ``ahead`` seconds early (the pts jumped: a gap in a recording) re-anchors at now, so play
    goes on at the source's rate from there instead of rushing through the late frames or waiting out the
    jump.
    """

    def __init__(self, *, behind: float = 0.5, ahead: float = 2.0) -> None:
        self.behind, self.ahead = behind, ahead
        self.anchor: tuple[float, float] | None = None  # (monotonic, pts seconds)
        self.reanchored = 0  # times a stall or a jump moved the anchor

    def reset(self) -> None:
        """The next frame anchors anew (a new segment whose pts have nothing to do with the last)."""
        self.anchor = None

    def delay(self, seconds: float | None, now: float | None = None) -> float:
        """How long to hold a frame at ``seconds`` (its pts in seconds) from ``now``; 0 when it is due."""
        if seconds is None:
            return 0.0
        now = time.monotonic() if now is None else now
        if self.anchor is None:
            self.anchor = (now, seconds)
            return 0.0
        due = self.anchor[0] + seconds - self.anchor[1]
        if due < now - self.behind or due > now + self.ahead:
            self.anchor = (now, seconds)
            self.reanchored += 1
            return 0.0
        return max(0.0, due - now)

    def wait(self, seconds: float | None, stop: threading.Event) -> bool:
        """Sleep until the frame at ``seconds`` is due; True when ``stop`` was set meanwhile."""
        delay = self.delay(seconds)
        return stop.wait(delay) if delay > 0 else stop.is_set()
