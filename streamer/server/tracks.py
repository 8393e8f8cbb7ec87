"""Media tracks of the server: the newest-frame slot, the stylizing track, a viewer's copy of a relayed
stream, and the server-side source's reader thread."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from streamer.frames import Frame
from streamer.stats import StreamStats
from streamer.worker import GpuWorker

log = logging.getLogger(__name__)

VIDEO_CLOCK = Fraction(1, 90_000)


class LatestFrameSlot:
    """Holds only the newest input frame; a frame replaced before anyone took it is reported to ``on_drop``
    at once (so counters stay right whether or not anyone is reading)."""

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

    def __init__(self, slot: LatestFrameSlot, worker: GpuWorker, stream_id: str, stats: StreamStats) -> None:
        super().__init__()
        self.slot = slot
        self.worker = worker
        self.stream_id = stream_id
        self.stats = stats  # this stream's counts; each event also counts into the server's totals
        self._index = 0
        self._warned = False

    async def recv(self) -> av.VideoFrame:
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
            latency = time.monotonic() - arrived
            self.stats.frame_out(latency)
            return await asyncio.to_thread(_to_video, out.image, out.pts, out.time_base)

    def _to_frame(self, item: Any, arrived: float) -> Frame:
        self._index += 1
        if isinstance(item, Frame):
            pts, time_base = item.pts, item.time_base
            if pts is None:  # the encoder needs a clock: use arrival time
                pts, time_base = int(arrived / VIDEO_CLOCK), VIDEO_CLOCK
            return Frame(item.image, pts=pts, time_base=time_base, capture_time=arrived,
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

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self.source = source

    async def recv(self) -> av.VideoFrame:
        shared = await self.source.recv()
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
    """Reads a server-side source on its own thread and keeps only its newest frame for the loop."""

    def __init__(self, source: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.source = source
        self.loop = loop
        self.slot = LatestFrameSlot()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="server-source", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    frame = self.source.read(timeout=1.0)
                except TimeoutError:  # SourceTimeout is one: a live source may come back
                    continue
                except Exception as exc:  # noqa: BLE001 - reported, the server stays up
                    log.error("source stopped: %s", exc)
                    break
                if frame is None:
                    break
                self.loop.call_soon_threadsafe(self.slot.put, frame, time.monotonic())
        finally:
            if not self.loop.is_closed():
                self.loop.call_soon_threadsafe(self.slot.close)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        try:
            self.source.close()
        except Exception as exc:  # noqa: BLE001
            log.warning("closing the source: %s", exc)
        self._thread.join(timeout)
