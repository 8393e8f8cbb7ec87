"""A publisher's sound, passed through to its viewers in step with the stylized video.

A WHIP publisher (OBS: camera and microphone) or a browser page sends Opus next to its video. The stylized
video leaves the server later than it came in (the model's time: the stream's measured capture-to-send
latency), so each audio packet is held for that same delay and then sent on unchanged: no decoding, no
re-encoding. aiortc 1.16 can send already-encoded media (a track whose ``recv()`` returns ``av.Packet``
goes through the codec's ``pack()``, not its encoder); on the receiving side it has no such option (every
packet goes through its jitter buffer into a decoder thread), so the audio receiver's RTP handler is
replaced, per session, by one that takes the Opus payloads as they arrive (streamer.server.rtp.tap_rtp).

The delay follows the video's (the median of its last frames' latency) slowly, at most ``SLEW`` seconds per
second of audio, so a change never makes a gap or a burst longer than a packet. What is held is bounded by
time (``MAX_HOLD``); audio is never dropped because video frames are.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import av
from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.sdp import SessionDescription

OPUS_CLOCK = 48_000  # RTP clock of Opus, whatever its sampling rate (RFC 7587)
OPUS_TIME_BASE = Fraction(1, OPUS_CLOCK)
MAX_HOLD = 5.0  # seconds of audio kept at most (a longer video delay than this is not matched)
MAX_PACKETS = 1000  # and packets: 5 s at the smallest Opus frame Chrome or OBS send (5 ms); a flood is cut
JUMP = 10 * OPUS_CLOCK  # a timestamp jump larger than this (forward) or than a second (back): a new timeline
FRAME = OPUS_CLOCK // 50  # 20 ms, what a new timeline continues with
SLEW = 0.25  # the applied delay moves by at most this many seconds per second of audio

_AUDIO_SECTION = re.compile(r"(?m)^m=audio ")


def _audio_sections(sdp: str) -> list[Any]:
    if not _AUDIO_SECTION.search(sdp):
        return []
    # Port 0 too: a peer that bundles everything (webrtcbin) offers its later sections "bundle-only", port 0.
    return [media for media in SessionDescription.parse(sdp).media if media.kind == "audio"]


def opus_payload_types(sdp: str) -> set[int]:
    """The RTP payload types that mean Opus in the audio sections of ``sdp`` (empty: no Opus audio)."""
    return {codec.payloadType for media in _audio_sections(sdp) for codec in media.rtp.codecs
            if codec.name.lower() == "opus"}


def opus_first(sdp: str) -> bool:
    """The first audio section of an offer puts Opus first: an answer sending audio back will send Opus."""
    sections = _audio_sections(sdp)
    return bool(sections and sections[0].rtp.codecs and sections[0].rtp.codecs[0].name.lower() == "opus")


def send_opus(pc: RTCPeerConnection, track: MediaStreamTrack) -> Any:
    """Add ``track`` (packets of Opus) to ``pc`` to send, before the offer is applied, with Opus as the only
    codec it may negotiate."""
    transceiver = pc.addTransceiver(track, direction="sendonly")
    capabilities = RTCRtpSender.getCapabilities("audio")
    transceiver.setCodecPreferences([c for c in capabilities.codecs if c.mimeType.lower() == "audio/opus"])
    return transceiver


class AudioFeed:
    """One stream's audio: Opus payloads in arrival order, each released ``delay`` seconds after it
    arrived, to any number of readers (DelayedAudioTrack). ``video_delay()`` is the stream's current
    capture-to-send latency of its video (None until a stylized frame has gone out)."""

    def __init__(self, video_delay: Callable[[], float | None], payload_types: set[int],
                 on_packet: Callable[[], None] | None = None,
                 on_delay: Callable[[float], None] | None = None) -> None:
        self.video_delay = video_delay
        self.payload_types = payload_types
        self.on_packet = on_packet  # a packet came in
        self.on_delay = on_delay  # the delay applied changed
        self.packets: deque[tuple[float, int, bytes]] = deque()  # (arrival, pts in 1/48000 s, payload)
        self.first = 0  # the stream index of packets[0]
        self.delay: float | None = None  # applied now
        self.closed = False
        self._origin: int | None = None  # the first packet's RTP timestamp
        self._last_raw = 0
        self._last_pts = -1
        self._last_arrival: float | None = None
        self._arrived = asyncio.get_running_loop().create_future()

    def put(self, packet: Any, arrival: float) -> None:
        """An RTP packet from the publisher (on the loop). Not Opus, late or repeated: ignored."""
        if self.closed or packet.payload_type not in self.payload_types or not packet.payload:
            return
        raw = packet.timestamp
        if self._origin is None:
            self._origin, self._last_raw = raw, raw
        step = (raw - self._last_raw) % 2**32
        step = step - 2**32 if step >= 2**31 else step  # RTP timestamps wrap around
        if step > JUMP or step <= -OPUS_CLOCK:  # the publisher restarted its clock: carry on from here
            step = FRAME
        pts = self._last_pts + step if self._last_pts >= 0 else 0
        if pts <= self._last_pts:
            return  # out of order (already sent past it) or a duplicate
        self._last_raw, self._last_pts = raw, pts
        if self.on_packet is not None:
            self.on_packet()
        self._follow_video(arrival)
        self.packets.append((arrival, pts, packet.payload))
        while self.packets and (arrival - self.packets[0][0] > MAX_HOLD or len(self.packets) > MAX_PACKETS):
            self.packets.popleft()
            self.first += 1
        if not self._arrived.done():
            self._arrived.set_result(None)
        self._arrived = asyncio.get_running_loop().create_future()

    def _follow_video(self, now: float) -> None:
        target = self.video_delay()
        elapsed = 0.0 if self._last_arrival is None else max(0.0, now - self._last_arrival)
        self._last_arrival = now
        if target is None:
            return
        target = min(target, MAX_HOLD)
        if self.delay is None:
            delay = target  # nothing sent yet: start at the video's delay
        else:
            step = SLEW * max(elapsed, 0.02)
            delay = self.delay + max(-step, min(step, target - self.delay))
        if delay != self.delay:
            self.delay = delay
            if self.on_delay is not None:
                self.on_delay(delay)

    def start(self) -> int:
        """Where a new reader starts: the first packet not yet due (the newest ones while no delay is known)."""
        if self.delay is None:
            return self.first + len(self.packets)
        now = time.monotonic()
        for offset, (arrival, _, _) in enumerate(self.packets):
            if arrival + self.delay >= now:
                return self.first + offset
        return self.first + len(self.packets)

    async def take(self, index: int) -> tuple[int, int, bytes]:
        """The packet at ``index`` (or the oldest kept, if that one is gone) once it is due:
        (its index, pts, payload)."""
        while True:
            if self.closed:
                raise MediaStreamError
            index = max(index, self.first)
            position = index - self.first
            if position >= len(self.packets) or self.delay is None:
                await asyncio.shield(self._arrived)
                continue
            arrival, pts, payload = self.packets[position]
            wait = arrival + self.delay - time.monotonic()
            if wait <= 0:
                return index, pts, payload
            try:  # a newer delay may come with the next packet: look again then
                await asyncio.wait_for(asyncio.shield(self._arrived), wait)
            except TimeoutError:
                pass

    def close(self) -> None:
        self.closed = True
        if not self._arrived.done():
            self._arrived.set_result(None)


class DelayedAudioTrack(MediaStreamTrack):
    """One receiver's copy of an AudioFeed: Opus packets, pts in 1/48000 s, sent as they are."""

    kind = "audio"

    def __init__(self, feed: AudioFeed, on_sent: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.feed = feed
        self.on_sent = on_sent
        self.index: int | None = None

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        if self.index is None:
            self.index = self.feed.start()
        index, pts, payload = await self.feed.take(self.index)
        self.index = index + 1
        packet = av.Packet(payload)
        packet.pts, packet.time_base = pts, OPUS_TIME_BASE
        if self.on_sent is not None:
            self.on_sent()
        return packet
