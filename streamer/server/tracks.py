"""Media tracks of the server: the newest-frame slot of a peer's track, the stylizing track, a viewer's
copy of a relayed stream, and the server-side source's feed.

Latency, here as in ``run``, is a frame's capture time to its send: for a browser's or WHIP peer's track the
capture time is when the frame arrived at the server; for ``serve --source`` it is the source's own capture
time (kept on the frame, streamer.media.frames.Frame), so the two commands measure the same thing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from streamer.engine.worker import GpuWorker
from streamer.media.frames import Frame
from streamer.observe.stats import StreamStats
from streamer.sources.base import SourceError, SourceTimeout
from streamer.sources.threaded import as_threaded

log = logging.getLogger(__name__)

VIDEO_CLOCK = Fraction(1, 90_000)


class LatestFrameSlot:
    """Holds only the newest input frame of a peer's track; a frame replaced before anyone took it is
    reported to ``on_drop`` at once (so counters stay right whether or not anyone is reading).

    The asyncio flavour of streamer.media.slots.FrameSlot: aiortc hands frames over on the event loop and the
    stylizing track awaits them there, so waiting is an ``asyncio.Event``, not a thread's condition (a
    blocking take would need a thread per session). Frames stay as aiortc decoded them and are converted
    to RGB only when taken (StylizedTrack._to_frame).
    """

    def __init__(self, on_drop: Callable[[], None] | None = None) -> None:
        self._item: tuple[Any, float] | None = None
        self._event = asyncio.Event()
        self.on_drop = on_drop
        self.closed = False

    def put(self, frame: Any, arrived: float) -> None:
        if self._item is not None and self.on_drop is not None:
            self.on_drop()
        self._item = (frame, arrived)
        self._event.set()

    def close(self) -> None:
        self.closed = True
        self._event.set()

    async def get(self) -> tuple[Any, float]:
        while self._item is None:
            if self.closed:
                raise MediaStreamError
            self._event.clear()
            await self._event.wait()
        item, self._item = self._item, None
        return item


class StylizedTrack(MediaStreamTrack):
    """Takes the newest input frame, runs it through the worker, returns it with the input's pts."""

    kind = "video"

    def __init__(self, slot: LatestFrameSlot | SourceFeed, worker: GpuWorker, stream_id: str,
                 stats: StreamStats, *, sent_directly: bool = False) -> None:
        super().__init__()
        self.slot = slot
        self.worker = worker
        self.stream_id = stream_id
        self.stats = stats  # this stream's counts; each event also counts into the server's totals
        self.sent_directly = sent_directly  # read by a peer connection's sender (not by the relay)
        self._index = 0
        self._warned = False
        self._returned: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self.sent_directly and self._returned is not None:  # the sender encoded and sent the last frame
            self.stats.frame_sent_on(time.monotonic() - self._returned)
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            item, arrived = await self.slot.get()
            # Pixel conversions run off the event loop: at several sessions they add up to real time.
            frame = await asyncio.to_thread(self._to_frame, item, arrived)
            try:
                out = await asyncio.wrap_future(self.worker.submit(frame))
            except Exception as exc:  # noqa: BLE001 - a failed frame is skipped, the stream goes on
                self.stats.frame_failed()
                if not self._warned:
                    log.warning("stream %s: frame failed: %s", self.stream_id, exc)
                    self._warned = True
                continue
            video = await asyncio.to_thread(_to_video, out.image, out.pts, out.time_base)
            self._returned = time.monotonic()
            latency = self._returned - out.capture_time  # capture (or arrival) to send
            self.stats.frame_out(latency)
            return video

    def _to_frame(self, item: Any, arrived: float) -> Frame:
        """A peer's frame (captured when it arrived) or a server-side source's (its own capture time)."""
        self._index += 1
        if isinstance(item, Frame):
            pts, time_base = item.pts, item.time_base
            if pts is None:  # the encoder needs a clock: use arrival time
                pts, time_base = int(arrived / VIDEO_CLOCK), VIDEO_CLOCK
            return Frame(item.image, pts=pts, time_base=time_base, capture_time=item.capture_time,
                         stream_id=self.stream_id, index=self._index)
        return Frame(item.to_ndarray(format="rgb24"), pts=item.pts, time_base=item.time_base,
                     capture_time=arrived, stream_id=self.stream_id, index=self._index)


def _to_video(image: Any, pts: int | None, time_base: Fraction) -> av.VideoFrame:
    video = av.VideoFrame.from_ndarray(image, format="rgb24")
    video.pts, video.time_base = pts, time_base
    video.opaque = image  # the stylized pixels, for viewers' copies (no conversion back from the frame)
    return video


class ViewerTrack(MediaStreamTrack):
    """One viewer's copy of a relayed stream. The relay hands every subscriber the same frame object, and
    aiortc's encoders (one per viewer, on executor threads) change a frame in place while encoding it:
    sharing one crashed the process. So each viewer encodes its own copy."""

    kind = "video"

    def __init__(self, source: MediaStreamTrack, stats: StreamStats | None = None) -> None:
        super().__init__()
        self.source = source
        self.stats = stats  # the stream's: told how long its copy and encoding took (its audio waits that too)
        self._got: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self.stats is not None and self._got is not None:  # the last frame was copied, encoded and sent
            self.stats.frame_sent_on(time.monotonic() - self._got)
        shared = await self.source.recv()
        self._got = time.monotonic()
        image = shared.opaque  # set by _to_video upstream; None for a frame from elsewhere
        return await asyncio.to_thread(
            lambda: _to_video(shared.to_ndarray(format="rgb24") if image is None else image, shared.pts,
                              shared.time_base))

    def stop(self) -> None:
        super().stop()
        self.source.stop()


async def drain(track: MediaStreamTrack) -> None:
    try:
        while True:
            await track.recv()
    except (MediaStreamError, asyncio.CancelledError):
        pass


class SourceFeed:
    """A server-side source for the loop, through the same slot as ``run``: a threaded source's own (or a
    SourceReader's, for a test pattern), taken from with ``await get()`` like a LatestFrameSlot. Frames are
    converted only when taken, off the loop; one replaced before anyone took it is reported to
    ``on_drop`` on the loop."""

    def __init__(self, source: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.source = source
        self.loop = loop
        self.on_drop: Callable[[], None] | None = None
        self.on_frame: Callable[[], None] | None = None  # a frame taken, on the loop
        self.input = as_threaded(source) if source is not None else None
        self.closed = False
        if self.input is not None:
            self.input.on_drop = self._dropped

    def _dropped(self, count: int) -> None:  # on the reader thread
        if self.on_drop is not None and not self.loop.is_closed():
            for _ in range(count):
                self.loop.call_soon_threadsafe(self.on_drop)

    def start(self) -> None:
        if self.input is not None:
            self.input.open()  # a threaded source already reads; a SourceReader starts here

    async def get(self) -> tuple[Frame, float]:
        while self.input is not None and not self.closed:
            try:
                frame = await asyncio.to_thread(self.input.read, 1.0)
            except SourceTimeout:  # a live source may come back
                continue
            except SourceError as exc:
                log.error("source stopped: %s", exc)
                break
            if frame is None:
                break
            if self.on_frame is not None:
                self.on_frame()
            return frame, frame.capture_time
        self.closed = True
        raise MediaStreamError

    def stop(self, timeout: float = 5.0) -> None:
        self.closed = True
        if self.input is None:
            return
        try:
            self.input.close()  # a SourceReader closes its source on its own thread
        except Exception as exc:  # noqa: BLE001
            log.warning("closing the source: %s", exc)
