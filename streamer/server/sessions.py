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
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from pipelines.config import LiveParams
from streamer.control.params import ParamsController
from streamer.engine.worker import GpuWorker
from streamer.observe.stats import RunStats, StreamStats
from streamer.server.audio import (
    AudioFeed,
    DelayedAudioTrack,
    opus_first,
    opus_payload_types,
    send_opus,
)
from streamer.server.bodies import loads_object
from streamer.server.dtls import dtls_failed, prefer_passive_dtls
from streamer.server.ice import expire_consent_after, ice_configuration, restrict_host_candidates
from streamer.server.rtp import FrameArrivals, tap_rtp
from streamer.server.sdp import OfferError, check_sdp
from streamer.server.tracks import LatestFrameSlot, SourceFeed, StylizedTrack, ViewerTrack, drain

# Other modules import these from here (they lived here before the split into sdp, ice and tracks).
__all__ = ["CapacityError", "NotFoundError", "OfferError", "SessionManager", "SourceFeed", "check_sdp",
           "ice_configuration", "restrict_host_candidates"]

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 3.0


class CapacityError(RuntimeError):
    """Too many sessions (HTTP 503)."""


class NotFoundError(LookupError):
    """No such session or stream (HTTP 404)."""


@dataclass
class Broadcast:
    """A stylized stream that viewers (WHEP, /watch) subscribe to."""

    key: str
    track: StylizedTrack
    started: float = field(default_factory=time.monotonic)
    audio: AudioFeed | None = None  # the publisher's sound, delayed as its stylized video is


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
    connected: bool = False  # the peer connection reached "connected" (ICE and DTLS done)
    params: ParamsController | None = None  # browser, whip: its live parameters (the one handler of changes)
    audio: AudioFeed | None = None  # browser, whip: the peer's Opus audio, passed on delayed (None: no audio)

    @property
    def stylizes(self) -> bool:
        return self.kind in ("browser", "whip")


class SessionManager:
    def __init__(self, worker: GpuWorker, metrics: RunStats, *, ice: RTCConfiguration,
                 max_sessions: int = 4, max_viewers: int = 32, idle_timeout: float = 10.0,
                 connect_timeout: float = 15.0, defaults: Mapping[str, Any] | None = None) -> None:
        self.worker = worker
        self.metrics = metrics
        self.defaults = dict(defaults or {})  # the parameters every stream starts with (GET-able per session)
        self.ice = ice
        self.max_sessions = max_sessions
        self.max_viewers = max_viewers
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
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

    def _dropped(self, stats: StreamStats, broadcast_key: str | None = None) -> None:
        """A frame replaced before the GPU took it. A broadcast nobody watches is not stylized at all:
        its frames are received, not dropped."""
        if broadcast_key is not None and not any(
                s.broadcast_key == broadcast_key and s.connected for s in self.sessions.values()):
            return
        stats.frame_dropped()

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        expire_consent_after(self.idle_timeout)
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

    # ---- opening sessions ------------------------------------------------------------------------
    async def open_stylizing(self, offer_sdp: str, kind: str,
                             params: dict[str, Any] | None = None) -> tuple[Session, str]:
        """A peer sends its camera; ``browser`` gets the stylized video back, ``whip`` feeds viewers."""
        await asyncio.to_thread(check_sdp, offer_sdp)  # CPU work on untrusted text: not on the loop
        if sum(s.stylizes for s in self.sessions.values()) >= self.max_sessions:
            raise CapacityError(f"the server is at its limit of {self.max_sessions} sessions; try again later")
        if params:
            LiveParams.parse(params)  # a bad value: 400 before a peer connection is made
        session = Session(id=secrets.token_urlsafe(12), kind=kind, pc=RTCPeerConnection(self.ice),
                          stats=self.metrics.stream())
        session.stream_id = f"{kind}-{session.id}"
        session.params = ParamsController(self.worker, [session.stream_id], self.defaults)
        self.sessions[session.id] = session
        self.metrics.session_started()
        pc = session.pc
        tracks: list[StylizedTrack] = []

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio" and session.audio is None and self._take_audio(session, track, offer_sdp):
                return
            if track.kind != "video" or tracks:
                # Audio (OBS sends it) or a second video: read and drop, or aiortc queues it without bound.
                session.tasks.append(asyncio.ensure_future(drain(track)))
                return
            slot = LatestFrameSlot(on_drop=lambda: self._dropped(
                session.stats, session.id if kind == "whip" else None))
            arrivals = FrameArrivals()  # the capture time of a peer's frame: when its packets arrived
            tap_rtp(pc, track, arrivals.packet)
            session.tasks.append(asyncio.ensure_future(self._pump(session, track, slot, arrivals)))
            stylized = StylizedTrack(slot, self.worker, session.stream_id, session.stats,
                                     sent_directly=kind == "browser")
            tracks.append(stylized)
            if kind == "browser":
                pc.addTrack(stylized)

        @pc.on("datachannel")
        def on_datachannel(channel: Any) -> None:
            self._serve_channel(session, channel)

        self._watch_state(session)
        try:
            if params:
                await asyncio.to_thread(session.params.apply, params)  # waits for the worker: off the loop
            await self._answer(session, offer_sdp)
            if not tracks:
                raise OfferError("the offer has no video track; send a camera or screen track")
        except BaseException:
            await self.close(session.id)
            raise
        if kind == "whip":
            self.broadcasts[session.id] = Broadcast(session.id, tracks[0], audio=session.audio)
        return session, session.pc.localDescription.sdp

    async def open_viewer(self, offer_sdp: str, key: str | None = None) -> tuple[Session, str]:
        """A peer that only receives: the named broadcast, else the newest one."""
        self._broadcast(key)  # nothing to watch: 404 whatever the offer
        await asyncio.to_thread(check_sdp, offer_sdp)  # CPU work on untrusted text: not on the loop
        broadcast = self._broadcast(key)  # again: the publisher may have left meanwhile
        if sum(s.kind == "whep" for s in self.sessions.values()) >= self.max_viewers:
            raise CapacityError(f"the server is at its limit of {self.max_viewers} viewers; try again later")
        session = Session(id=secrets.token_urlsafe(12), kind="whep", pc=RTCPeerConnection(self.ice),
                          broadcast_key=broadcast.key, stats=self.metrics.stream())
        self.sessions[session.id] = session
        self.metrics.session_started()
        session.pc.addTrack(ViewerTrack(self.relay.subscribe(broadcast.track, buffered=False), broadcast.track.stats))
        if broadcast.audio is not None and opus_payload_types(offer_sdp):  # the viewer takes Opus audio
            send_opus(session.pc, DelayedAudioTrack(broadcast.audio, session.stats.audio_sent))
        self._watch_state(session)
        try:
            await self._answer(session, offer_sdp)
        except BaseException:
            await self.close(session.id)
            raise
        return session, session.pc.localDescription.sdp

    def _take_audio(self, session: Session, track: MediaStreamTrack, offer_sdp: str) -> bool:
        """The peer's Opus track: its packets are kept (not decoded) and passed on, each after the stream's
        video delay, to the stream's viewers (whip) or back to the peer with its stylized video (browser).
        False when the offer's audio is not Opus: then it is read and dropped like any other track."""
        payload_types = opus_payload_types(offer_sdp)
        if not payload_types:
            return False
        stats = session.stats
        feed = AudioFeed(stats.video_delay, payload_types, on_packet=stats.audio_received,
                         on_delay=stats.audio_delayed)
        if not tap_rtp(session.pc, track, feed.put, keep_decoding=False):
            return False
        session.audio = feed
        if session.kind == "browser" and opus_first(offer_sdp):  # back with the stylized video, as Opus
            session.pc.addTrack(DelayedAudioTrack(feed, stats.audio_sent))
        return True

    def _broadcast(self, key: str | None) -> Broadcast:
        if not self.broadcasts:
            raise NotFoundError("nothing is being streamed yet: publish with WHIP or start with --source")
        if key is None:
            return max(self.broadcasts.values(), key=lambda b: b.started)
        if key not in self.broadcasts:
            raise NotFoundError(f"no stream {key!r}; streams: {', '.join(self.broadcasts)}")
        return self.broadcasts[key]

    def add_source(self, feed: SourceFeed) -> None:
        """A server-side source, stylized once and relayed to every viewer as stream ``source``."""
        stats = self.metrics.stream()

        def dropped() -> None:  # a source frame replaced before it was taken: received, then dropped
            stats.frame_received()
            self._dropped(stats, "source")

        feed.on_frame, feed.on_drop = stats.frame_received, dropped
        track = StylizedTrack(feed, self.worker, "source", stats)
        self.broadcasts["source"] = Broadcast("source", track)
        self._source_feed = feed

    async def _answer(self, session: Session, offer_sdp: str) -> None:
        try:
            await session.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        except Exception as exc:  # noqa: BLE001 - aiortc raises many types on bad SDP
            raise OfferError(f"malformed SDP offer: {exc or type(exc).__name__}") from None
        answer = await session.pc.createAnswer()
        # aiortc as DTLS server, so that peers with RSA certificates (GStreamer's webrtcbin) can connect.
        answer = RTCSessionDescription(sdp=prefer_passive_dtls(answer.sdp, offer_sdp), type=answer.type)
        await session.pc.setLocalDescription(answer)  # also waits for ICE gathering: no trickle needed

    # ---- running sessions ------------------------------------------------------------------------
    async def _pump(self, session: Session, track: MediaStreamTrack, slot: LatestFrameSlot,
                    arrivals: FrameArrivals) -> None:
        """Drain the incoming track continuously (aiortc buffers without bound otherwise)."""
        try:
            while True:
                frame = await track.recv()
                session.last_input = time.monotonic()
                session.stats.frame_received()
                slot.put(frame, arrivals.arrival(frame.pts, session.last_input))
        except (MediaStreamError, asyncio.CancelledError):
            pass
        finally:
            slot.close()

    def _watch_state(self, session: Session) -> None:
        @session.pc.on("connectionstatechange")
        async def on_state() -> None:
            if session.pc.connectionState == "connected":
                session.connected = True
            if session.pc.connectionState == "failed" and dtls_failed(session.pc):
                log.warning("session %s (%s): DTLS handshake failed after ICE connected (the peer's certificate "
                            "or cipher suites may be incompatible); closing", session.id, session.kind)
            if session.pc.connectionState in ("failed", "closed"):
                await self.close(session.id)

    async def _watch(self) -> None:
        """Close sessions whose peer never connected (an offer from a peer that cannot reach us, or that
        went away before connecting: each holds a slot), and stylizing sessions whose peer sends nothing
        (closed tab, lost network). A viewer that went away is closed by ICE consent (expire_consent_after)."""
        while True:
            await asyncio.sleep(min(1.0, self.idle_timeout / 4, self.connect_timeout / 4))
            now = time.monotonic()
            for session in list(self.sessions.values()):
                if not session.connected and now - session.created > self.connect_timeout:
                    log.info("session %s (%s): peer not connected after %.0f s, closing", session.id,
                             session.kind, self.connect_timeout)
                    self._in_background(self.close(session.id))
                    continue
                if session.stylizes and now - (session.last_input or session.created) > self.idle_timeout:
                    log.info("session %s: no frames for %.0f s, closing", session.id, self.idle_timeout)
                    self._in_background(self.close(session.id))

    def _serve_channel(self, session: Session, channel: Any) -> None:
        """Data channel: {"type": "params", ...} in -> {"type": "params", "ok": ...} out; stats each second."""

        @channel.on("message")
        async def on_message(message: Any) -> None:
            try:
                data = loads_object(message, "message")
                if data.pop("type", "params") != "params":  # the envelope; the rest is the change
                    raise ValueError("messages must be JSON objects with \"type\": \"params\"")
                _, reply = await self.change_params(session.id, data)
            except (ValueError, NotFoundError) as exc:
                reply = {"ok": False, "error": str(exc)}
            if channel.readyState == "open":
                channel.send(json.dumps({"type": "params", **reply}))

        async def push_stats() -> None:
            while channel.readyState != "closed":
                await asyncio.sleep(1.0)
                if channel.readyState == "open":
                    channel.send(json.dumps({"type": "stats", **session.stats.as_dict()}))

        session.tasks.append(asyncio.ensure_future(push_stats()))

    async def change_params(self, session_id: str, changes: Any) -> tuple[int, dict[str, Any]]:
        """A live change to one stylizing session: the answer of ParamsController.answer (the same as
        `streamer run --control-port` gives), or NotFoundError."""
        session = self.get(session_id, kinds=("browser", "whip"))
        assert session.params is not None
        return await asyncio.to_thread(session.params.answer, changes)  # waits for the worker: off the loop

    async def close(self, session_id: str) -> None:
        session = self.sessions.pop(session_id, None)
        if session is None:  # unknown, or already closed: close() pops it first
            return
        for task in session.tasks:
            task.cancel()
        if session.audio is not None:
            session.audio.close()
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
