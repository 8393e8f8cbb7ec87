"""What arrives on a peer connection, packet by packet, before aiortc's jitter buffers and decoders.

aiortc hands a video frame on only when the first packet of the *next* frame has come (its jitter buffer
cannot tell a frame is complete before): a frame's decode time is about one frame interval after its
packets arrived. The audio passed through (streamer.server.audio) is timed by its packets' arrival; so the
video's delay it follows must count from its packets' arrival too, not from the decoded frame's.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamTrack

MAX_AGE = 2.0  # an arrival older than this when its frame is decoded is not believed (a wrong match)


def tap_rtp(pc: RTCPeerConnection, track: MediaStreamTrack,
            on_packet: Callable[[Any, float], None], *, keep_decoding: bool = True) -> bool:
    """Hand every RTP packet of ``track``'s receiver to ``on_packet(packet, arrival)`` (monotonic seconds)
    as it arrives. Without ``keep_decoding`` the receiver does nothing more with it (no jitter buffer, no
    decoder: its track yields nothing). False if no receiver of ``pc`` has that track.

    aiortc has no public hook for received packets: the receiver's handler, which its DTLS transport calls
    for each one, is wrapped on this receiver only."""
    receiver = next((t.receiver for t in pc.getTransceivers() if t.receiver.track is track), None)
    if receiver is None:
        return False
    original = receiver._handle_rtp_packet

    async def handle(packet: Any, arrival_time_ms: int) -> None:
        on_packet(packet, time.monotonic())
        if keep_decoding:
            await original(packet, arrival_time_ms)

    receiver._handle_rtp_packet = handle
    return True


class FrameArrivals:
    """When the first packet of each of a video track's recent frames arrived, by RTP timestamp; looked up
    by a decoded frame's pts, which aiortc counts from the first frame's RTP timestamp."""

    def __init__(self, keep: int = 128) -> None:
        self.keep = keep
        self.first: OrderedDict[int, float] = OrderedDict()
        self.origin: int | None = None
        self._earliest: int | None = None

    def packet(self, packet: Any, arrival: float) -> None:
        if self._earliest is None:
            self._earliest = packet.timestamp
        if packet.timestamp not in self.first:
            self.first[packet.timestamp] = arrival
            while len(self.first) > self.keep:
                self.first.popitem(last=False)

    def arrival(self, pts: int | None, now: float) -> float:
        """When the packets of the decoded frame with ``pts`` began to arrive; ``now`` if not known."""
        if pts is None:
            return now
        if self.origin is None:
            if pts != 0 or self._earliest is None:
                return now
            self.origin = self._earliest  # the first frame decoded is the first one that arrived
        arrived = self.first.get((pts + self.origin) % 2**32)
        return arrived if arrived is not None and 0.0 <= now - arrived <= MAX_AGE else now
