"""WebRTC sessions: each incoming video track is read latest-frame-wins, stylized on the shared GPU worker
and sent back (browser) or fanned out to viewers (WHIP ingest, a server-side source).

One event loop owns everything here; the only other threads are the GPU worker (model calls) and, with
``--source``, one reader thread for the server-side source.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from pipelines.config import LiveParams
from pipelines.frames import LIVE_PARAMS
from streamer.frames import Frame
from streamer.server.metrics import ServerMetrics, StreamStats
from streamer.worker import GpuWorker

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 3.0
PARAMS_TIMEOUT = 10.0
VIDEO_CLOCK = Fraction(1, 90_000)


class OfferError(ValueError):
    """The client's SDP offer cannot be used (HTTP 400)."""


class CapacityError(RuntimeError):
    """Too many sessions (HTTP 503)."""


class NotFoundError(LookupError):
    """No such session or stream (HTTP 404)."""


def restrict_host_candidates(addresses: list[str]) -> None:
    """Gather ICE host candidates only on ``addresses``.

    aioice always leaves 127.0.0.1 out and offers every other interface; a server meant for peers on the
    same machine (or a test) needs exactly loopback. aioice has no option for it, so the module function
    it calls is replaced, for this process.
    """
    import aioice.ice

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in addresses if (use_ipv6 if ":" in a else use_ipv4)]

    aioice.ice.get_host_addresses = host_addresses


def ice_configuration(urls: list[str], username: str | None = None,
                      credential: str | None = None) -> RTCConfiguration:
    """Only the configured ICE servers: aiortc's default would contact a public STUN server."""
    servers = [RTCIceServer(urls=url, username=username if url.startswith("turn") else None,
                            credential=credential if url.startswith("turn") else None) for url in urls]
    return RTCConfiguration(iceServers=servers)


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

    def __init__(self, slot: LatestFrameSlot, worker: GpuWorker, stream_id: str, stats: StreamStats,
                 metrics: ServerMetrics) -> None:
        super().__init__()
        self.slot = slot
        self.worker = worker
        self.stream_id = stream_id
        self.stats = stats
        self.metrics = metrics
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
                self.metrics.frame_errors += 1
                if not self._warned:
                    log.warning("stream %s: frame failed: %s", self.stream_id, exc)
                    self._warned = True
                continue
            latency = time.monotonic() - arrived
            self.stats.frame_out(latency)
            self.metrics.frame_out(latency)
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


@dataclass
class Broadcast:
    """A stylized stream that viewers (WHEP, /watch) subscribe to."""

    key: str
    track: StylizedTrack
    started: float = field(default_factory=time.monotonic)


@dataclass
class Session:
    id: str
    kind: str  # "browser" (camera in, stylized back), "whip" (ingest), "whep" (viewer)
    pc: RTCPeerConnection
    stream_id: str | None = None
    stats: StreamStats = field(default_factory=StreamStats)
    created: float = field(default_factory=time.monotonic)
    last_input: float | None = None
    tasks: list[asyncio.Task] = field(default_factory=list)
    broadcast_key: str | None = None  # whep: what it watches

    @property
    def stylizes(self) -> bool:
        return self.kind in ("browser", "whip")


class SessionManager:
    def __init__(self, worker: GpuWorker, metrics: ServerMetrics, *, ice: RTCConfiguration,
                 max_sessions: int = 4, max_viewers: int = 32, idle_timeout: float = 10.0) -> None:
        self.worker = worker
        self.metrics = metrics
        self.ice = ice
        self.max_sessions = max_sessions
        self.max_viewers = max_viewers
        self.idle_timeout = idle_timeout
        self.sessions: dict[str, Session] = {}
        self.broadcasts: dict[str, Broadcast] = {}
        self.relay = MediaRelay()
        self._watchdog: asyncio.Task | None = None
        self._source_feed: SourceFeed | None = None
        self._background: set[asyncio.Task] = set()  # referenced until done, or the loop may drop them

    def get(self, session_id: str, *, kinds: tuple[str, ...] | None = None) -> Session:
        """The open session with this id (and one of ``kinds``), else NotFoundError (a 404 over HTTP)."""
        session = self.sessions.get(session_id)
        if session is None or (kinds is not None and session.kind not in kinds):
            raise NotFoundError(f"no such session {session_id!r} (already ended?)")
        return session

    def _in_background(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _dropped(self, stats: StreamStats) -> None:
        stats.dropped += 1
        self.metrics.frames_dropped += 1

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    async def close_all(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        await asyncio.gather(*(self.close(s.id) for s in list(self.sessions.values())))
        if self._source_feed is not None:
            await asyncio.to_thread(self._source_feed.stop)

    def counts(self) -> dict[str, int]:
        counts = {"browser": 0, "whip": 0, "whep": 0}
        for session in self.sessions.values():
            counts[session.kind] += 1
        return counts

    def stream_stats(self) -> dict[str, StreamStats]:
        stats = {s.id: s.stats for s in self.sessions.values() if s.stylizes}
        for key, broadcast in self.broadcasts.items():
            stats.setdefault(key, broadcast.track.stats)
        return stats

    # ---- opening sessions ------------------------------------------------------------------------
    async def open_stylizing(self, offer_sdp: str, kind: str,
                             params: dict[str, Any] | None = None) -> tuple[Session, str]:
        """A peer sends its camera; ``browser`` gets the stylized video back, ``whip`` feeds viewers."""
        check_sdp(offer_sdp)
        if sum(s.stylizes for s in self.sessions.values()) >= self.max_sessions:
            raise CapacityError(f"the server is at its limit of {self.max_sessions} sessions; try again later")
        if params:
            params = live_params(params)
        session = Session(id=secrets.token_urlsafe(12), kind=kind, pc=RTCPeerConnection(self.ice))
        session.stream_id = f"{kind}-{session.id}"
        self.sessions[session.id] = session
        self.metrics.sessions_started += 1
        pc = session.pc
        tracks: list[StylizedTrack] = []

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind != "video" or tracks:
                # Audio (OBS sends it) or a second video: read and drop, or aiortc queues it without bound.
                session.tasks.append(asyncio.ensure_future(_drain(track)))
                return
            slot = LatestFrameSlot(on_drop=lambda: self._dropped(session.stats))
            session.tasks.append(asyncio.ensure_future(self._pump(session, track, slot)))
            stylized = StylizedTrack(slot, self.worker, session.stream_id, session.stats, self.metrics)
            tracks.append(stylized)
            if kind == "browser":
                pc.addTrack(stylized)

        @pc.on("datachannel")
        def on_datachannel(channel: Any) -> None:
            self._serve_channel(session, channel)

        self._watch_state(session)
        try:
            if params:
                await self.apply_params(session.id, params)
            await self._answer(session, offer_sdp)
            if not tracks:
                raise OfferError("the offer has no video track; send a camera or screen track")
        except BaseException:
            await self.close(session.id)
            raise
        if kind == "whip":
            self.broadcasts[session.id] = Broadcast(session.id, tracks[0])
        return session, session.pc.localDescription.sdp

    async def open_viewer(self, offer_sdp: str, key: str | None = None) -> tuple[Session, str]:
        """A peer that only receives: the named broadcast, else the newest one."""
        check_sdp(offer_sdp)
        if not self.broadcasts:
            raise NotFoundError("nothing is being streamed yet: publish with WHIP or start with --source")
        if key is None:
            broadcast = max(self.broadcasts.values(), key=lambda b: b.started)
        elif key in self.broadcasts:
            broadcast = self.broadcasts[key]
        else:
            raise NotFoundError(f"no stream {key!r}; streams: {', '.join(self.broadcasts)}")
        if sum(s.kind == "whep" for s in self.sessions.values()) >= self.max_viewers:
            raise CapacityError(f"the server is at its limit of {self.max_viewers} viewers; try again later")
        session = Session(id=secrets.token_urlsafe(12), kind="whep", pc=RTCPeerConnection(self.ice),
                          broadcast_key=broadcast.key)
        self.sessions[session.id] = session
        self.metrics.sessions_started += 1
        session.pc.addTrack(ViewerTrack(self.relay.subscribe(broadcast.track, buffered=False)))
        self._watch_state(session)
        try:
            await self._answer(session, offer_sdp)
        except BaseException:
            await self.close(session.id)
            raise
        return session, session.pc.localDescription.sdp

    def add_source(self, feed: SourceFeed) -> None:
        """A server-side source, stylized once and relayed to every viewer as stream ``source``."""
        stats = StreamStats()
        feed.slot.on_drop = lambda: self._dropped(stats)
        track = StylizedTrack(feed.slot, self.worker, "source", stats, self.metrics)
        self.broadcasts["source"] = Broadcast("source", track)
        self._source_feed = feed

    async def _answer(self, session: Session, offer_sdp: str) -> None:
        try:
            await session.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        except Exception as exc:  # noqa: BLE001 - aiortc raises many types on bad SDP
            raise OfferError(f"malformed SDP offer: {exc or type(exc).__name__}") from None
        answer = await session.pc.createAnswer()
        await session.pc.setLocalDescription(answer)  # also waits for ICE gathering: no trickle needed

    # ---- running sessions ------------------------------------------------------------------------
    async def _pump(self, session: Session, track: MediaStreamTrack, slot: LatestFrameSlot) -> None:
        """Drain the incoming track continuously (aiortc buffers without bound otherwise)."""
        try:
            while True:
                frame = await track.recv()
                session.last_input = time.monotonic()
                slot.put(frame, session.last_input)
        except (MediaStreamError, asyncio.CancelledError):
            pass
        finally:
            slot.close()

    def _watch_state(self, session: Session) -> None:
        @session.pc.on("connectionstatechange")
        async def on_state() -> None:
            if session.pc.connectionState in ("failed", "closed"):
                await self.close(session.id)

    async def _watch(self) -> None:
        """Close stylizing sessions whose peer sends nothing (closed tab, lost network)."""
        while True:
            await asyncio.sleep(min(1.0, self.idle_timeout / 4))
            now = time.monotonic()
            for session in list(self.sessions.values()):
                if session.stylizes and now - (session.last_input or session.created) > self.idle_timeout:
                    log.info("session %s: no frames for %.0f s, closing", session.id, self.idle_timeout)
                    self._in_background(self.close(session.id))

    def _serve_channel(self, session: Session, channel: Any) -> None:
        """Data channel: {"type": "params", ...} in -> {"type": "params", "ok": ...} out; stats each second."""

        @channel.on("message")
        async def on_message(message: Any) -> None:
            try:
                data = json.loads(message)
                if not isinstance(data, dict) or data.get("type", "params") != "params":
                    raise ValueError("messages must be JSON objects with \"type\": \"params\"")
                applied = await self.apply_params(session.id, data)
                reply = {"type": "params", "ok": True, "params": applied}
            except Exception as exc:  # noqa: BLE001 - every failure is the client's answer, not a lost reply
                reply = {"type": "params", "ok": False, "error": str(exc) or type(exc).__name__}
            if channel.readyState == "open":
                channel.send(json.dumps(reply))

        async def push_stats() -> None:
            while channel.readyState != "closed":
                await asyncio.sleep(1.0)
                if channel.readyState == "open":
                    channel.send(json.dumps({"type": "stats", **session.stats.as_dict()}))

        session.tasks.append(asyncio.ensure_future(push_stats()))

    async def apply_params(self, session_id: str, data: Any) -> dict[str, Any]:
        session = self.get(session_id, kinds=("browser", "whip"))
        params = live_params(data)
        future = self.worker.update(session.stream_id, **params)
        await asyncio.wait_for(asyncio.wrap_future(future), PARAMS_TIMEOUT)
        return params

    async def close(self, session_id: str) -> None:
        session = self.sessions.pop(session_id, None)
        if session is None:  # unknown, or already closed: close() pops it first
            return
        for task in session.tasks:
            task.cancel()
        if session.kind == "whip":
            self.broadcasts.pop(session.id, None)
            for viewer in [s for s in self.sessions.values() if s.broadcast_key == session.id]:
                self._in_background(self.close(viewer.id))
        try:
            await asyncio.wait_for(session.pc.close(), CLOSE_TIMEOUT)
        except (TimeoutError, Exception) as exc:  # noqa: BLE001 - closing must not fail the caller
            log.warning("session %s: close: %s", session.id, exc or type(exc).__name__)
        if session.stylizes:
            self.worker.remove_stream(session.stream_id)
        log.info("session %s (%s) closed", session.id, session.kind)


async def _drain(track: MediaStreamTrack) -> None:
    try:
        while True:
            await track.recv()
    except (MediaStreamError, asyncio.CancelledError):
        pass


def live_params(data: Any) -> dict[str, Any]:
    """The one check of live parameters (LiveParams), plus: a message's "type" key is not a parameter, and
    an empty change is an error rather than a silent no-op."""
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k != "type"}
    params = LiveParams.parse(data).changes()
    if not params:
        raise ValueError(f"no parameters given; send some of: {', '.join(LIVE_PARAMS)}")
    return params


def check_sdp(sdp: object) -> None:
    if not isinstance(sdp, str) or not sdp.lstrip().startswith("v=0"):
        raise OfferError("malformed SDP offer: it must be SDP text starting with 'v=0'")
    if "m=" not in sdp:
        raise OfferError("malformed SDP offer: it has no media section (m=)")


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
