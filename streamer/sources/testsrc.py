"""A live test pattern on its own clock, with the frame index and capture time written into the pixels.

The marks are big black/white blocks in the top rows (32 bits of frame index, 32 bits of capture time in
milliseconds, then the index again inverted as a check), so they survive H.264 at crf 23 and 2x scaling.
Under them the frame number is also written in digits, for a person watching.
``read_marks`` reads them back at a sink: the latency of every frame and any drop can be measured there.
"""

from __future__ import annotations

import math
import time
from fractions import Fraction

import numpy as np

from streamer.media.frames import Frame
from streamer.sources.base import Source, SourceError, SourceTimeout

MARK_BITS = 32
MARK_ROWS = 3  # index, capture time (ms), inverted index
_MASK = (1 << MARK_BITS) - 1


def _mark_geometry(width: int, height: int) -> tuple[int, int]:
    """Block width and height of one bit."""
    return width // MARK_BITS, max(8, height // 24)


def write_marks(image: np.ndarray, index: int, capture_ms: int) -> None:
    """Paint ``index`` and ``capture_ms`` (both taken modulo 2**32) into the top rows of ``image``."""
    height, width = image.shape[:2]
    block_w, block_h = _mark_geometry(width, height)
    values = (index & _MASK, capture_ms & _MASK, ~index & _MASK)
    for row, value in enumerate(values):
        bits = (value >> np.arange(MARK_BITS - 1, -1, -1)) & 1
        strip = np.repeat(bits.astype(np.uint8) * 255, block_w)
        image[row * block_h:(row + 1) * block_h, :strip.size] = strip[None, :, None]


# 5x7 pixel digits, drawn with numpy: OpenCV's text costs tens of ms on its first call in each thread, late
# enough to make a live source skip frames.
_GLYPHS = np.array([[[c == "#" for c in row] for row in glyph.split("/")] for glyph in (
    ".###./#...#/#..##/#.#.#/##..#/#...#/.###.", "..#../.##../..#../..#../..#../..#../.###.",
    ".###./#...#/....#/...#./..#../.#.../#####", "#####/...#./..#../...#./....#/#...#/.###.",
    "...#./..##./.#.#./#..#./#####/...#./...#.", "#####/#..../####./....#/....#/#...#/.###.",
    "..##./.#.../#..../####./#...#/#...#/.###.", "#####/....#/...#./..#../.#.../.#.../.#...",
    ".###./#...#/#...#/.###./#...#/#...#/.###.", ".###./#...#/#...#/.####/....#/...#./.##..")])


def digits_box(width: int, height: int) -> tuple[int, int, int]:
    """Where the frame number is written as digits, below the marks: top, left, and the size of one font
    pixel in image pixels."""
    block_h = _mark_geometry(width, height)[1]
    return MARK_ROWS * block_h + 2, 2, max(1, height // 90)


def write_digits(image: np.ndarray, index: int) -> None:
    """The frame number in readable digits (white on black) under the marks, for a person watching."""
    height, width = image.shape[:2]
    top, left, scale = digits_box(width, height)
    glyphs = [np.pad(_GLYPHS[int(d)], ((1, 1), (1, 0))) for d in str(index)]
    text = np.pad(np.concatenate(glyphs, axis=1), ((0, 0), (0, 1)))
    text = np.repeat(np.repeat(text, scale, axis=0), scale, axis=1)
    h, w = min(text.shape[0], height - top), min(text.shape[1], width - left)
    if h > 0 and w > 0:
        image[top:top + h, left:left + w] = (text[:h, :w, None] * 255).astype(np.uint8)


def read_marks(image: np.ndarray) -> tuple[int, int] | None:
    """(index, capture time in ms modulo 2**32) from a frame made by TestSource, or None if unreadable.

    Each bit is the mean of the middle of its block, so compression noise and scaling do not flip it.
    """
    height, width = image.shape[:2]
    block_w, block_h = _mark_geometry(width, height)
    if block_w < 2 or MARK_ROWS * block_h > height:
        return None
    top = image[: MARK_ROWS * block_h, : block_w * MARK_BITS].astype(np.float32)
    gray = top.mean(axis=2) if top.ndim == 3 else top
    values = []
    for row in range(MARK_ROWS):
        y0, y1 = row * block_h + block_h // 4, (row + 1) * block_h - block_h // 4
        blocks = gray[y0:y1].reshape(y1 - y0, MARK_BITS, block_w)
        centre = blocks[:, :, block_w // 4: block_w - block_w // 4]
        bits = centre.mean(axis=(0, 2)) > 127
        values.append(int("".join("1" if b else "0" for b in bits), 2))
    index, capture_ms, inverted = values
    if inverted != (~index & _MASK):
        return None
    return index, capture_ms


def monotonic_ms() -> int:
    """time.monotonic() in whole milliseconds modulo 2**32, the clock the marks carry."""
    return int(time.monotonic() * 1000) & _MASK


def marks_age_ms(capture_ms: int, now_ms: int | None = None) -> int:
    """Milliseconds since a mark's capture time (valid for ages under ~24 days)."""
    now_ms = monotonic_ms() if now_ms is None else now_ms
    return (now_ms - capture_ms) & _MASK


def _fps_fraction(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


class TestSource(Source):
    """A camera-like source: frames due at ``start + i/fps``, a moving pattern, marks in the pixels.

    Like a real camera it does not wait for a slow reader: a read that comes late gets the frame due now
    (the indices in between are skipped, so a sink sees the gap). ``max_frames`` ends the stream after that
    many frames (None = endless). ``stall_at``/``stall_for`` (seconds) stop producing frames for a while,
    which a runtime sees as a lost signal.
    """

    __test__ = False  # not a pytest test class
    live = True

    def __init__(self, width: int = 640, height: int = 360, fps: float = 30.0, *,
                 max_frames: int | None = None, stall_at: float | None = None, stall_for: float = 0.0,
                 name: str = "testsrc") -> None:
        if width < 64 or height < 48:
            raise SourceError(f"testsrc size must be at least 64x48, got {width}x{height}")
        if not 0 < fps <= 240:
            raise SourceError(f"testsrc fps must be in (0, 240], got {fps}")
        self.width, self.height = int(width), int(height)
        self._fps = float(fps)
        self.time_base = 1 / _fps_fraction(fps)
        self.max_frames = max_frames
        self.stall_at, self.stall_for = stall_at, stall_for
        self.name = name
        self.reconnects = 0
        self._start: float | None = None
        self._next = 0  # index of the next frame to produce
        self._base = self._make_base()

    @property
    def fps(self) -> float:
        return self._fps

    def _make_base(self) -> np.ndarray:
        # A diagonal colour ramp: smooth enough to encode cheaply, varied enough to look like a picture.
        y, x = np.mgrid[0:self.height, 0:self.width]
        base = np.empty((self.height, self.width, 3), np.uint8)
        base[..., 0] = (x * 255 // max(1, self.width - 1)).astype(np.uint8)
        base[..., 1] = (y * 255 // max(1, self.height - 1)).astype(np.uint8)
        base[..., 2] = ((x + y) * 255 // (self.width + self.height)).astype(np.uint8)
        return base

    def open(self) -> None:
        if self._start is None:  # opening twice keeps the clock running
            self._start = time.monotonic()
            self._next = 0

    def close(self) -> None:
        self._start = None

    def _next_index(self, now: float) -> int:
        assert self._start is not None
        index = self._next
        newest = int((now - self._start) * self._fps)
        if newest - index >= 2:  # more than a frame late: a camera hands over the newest frame
            index = newest
        if self.stall_at is not None:
            first, after = self.stall_at * self._fps, math.ceil((self.stall_at + self.stall_for) * self._fps)
            if first <= index < after:
                index = after  # frames due during the stall are never made, like a lost signal
        return index

    def read(self, timeout: float | None = None) -> Frame | None:
        if self._start is None:
            raise SourceError("testsrc: read() before open()")
        now = time.monotonic()
        index = self._next_index(now)
        if self.max_frames is not None and index >= self.max_frames:
            return None
        due = self._start + index / self._fps
        if timeout is not None and due - now > timeout:
            time.sleep(max(0.0, timeout))
            raise SourceTimeout(f"testsrc: no frame within {timeout:.1f} s")
        if due > now:
            time.sleep(due - now)
        return self._make_frame(index)

    def _make_frame(self, index: int) -> Frame:
        self._next = index + 1
        shift = (index * 4) % self.width
        image = np.roll(self._base, shift, axis=1)
        bar = (index * 6) % self.width  # a bright bar that sweeps across, so motion is visible
        image[:, bar:bar + 8] = 255
        capture_time = time.monotonic()
        write_marks(image, index, int(capture_time * 1000))
        write_digits(image, index)
        return Frame(image=image, pts=index, time_base=self.time_base, capture_time=capture_time,
                     stream_id="default", index=index)
