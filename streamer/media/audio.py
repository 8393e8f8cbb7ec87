"""The live paths' audio: packets taken beside the video, placed on the video's clock, and queued by time.

Audio never goes through the newest-frame-wins slots (those drop video frames when the model is slower than
the source); it takes this separate path instead:

- a source's reader hands each audio packet to its :class:`AudioTap`, which places it on the source's video
  clock (the one PtsClock, so a reconnect or a loop moves audio exactly as it moves video) and puts it in
  the source's :class:`AudioQueue`; packets that come before the first video frame of a connection wait
  there for it (the clock's new offset is known only then);
- the runtime moves packets on to each sink as the video they go with comes out of the model (so audio is
  delayed by just what the model delays the video), re-timed to the runtime's output clock;
- each sink's writer writes them after the video frame they follow.

Every queue is bounded by time, not by packets: it holds at most ``max_seconds`` of audio (by pts). A put
beyond that drops the oldest packets and counts them (``dropped``); only a reader, runtime or sink stuck for
that long gets there. Before that, audio that waited ``AUDIO_HOLD_S`` for its video goes on without it.
"""

from __future__ import annotations

import io
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction

import av

from streamer.media.frames import PtsClock

AUDIO_HOLD_S = 2.0  # audio waits at most this long (since capture) for the video it goes with
QUEUE_SECONDS = 5.0  # a queue holds at most this much audio; beyond it the oldest is dropped, counted
PENDING_PACKETS = 256  # audio of a new connection waiting for its first video frame (~5 s of AAC)


@dataclass(slots=True)
class AudioChunk:
    """One encoded audio packet and where it plays on the clock of the video frames it travels with."""

    packet: av.Packet
    seconds: float  # its pts on the video's clock
    duration: float  # seconds (0 when the packet does not say)
    capture_time: float = field(default_factory=time.monotonic)

    @property
    def end(self) -> float:
        return self.seconds + self.duration


def packet_duration(packet: av.Packet) -> float:
    """The packet's length in seconds, 0 when unknown."""
    if packet.duration and packet.time_base:
        return float(packet.duration * packet.time_base)
    return 0.0


class AudioFormat:
    """What an input's audio stream is, kept after its container closes (a reconnect closes it while its
    packets are still on their way): ``stream`` is a copy of the stream's parameters in a container that is
    never written, a template a sink copies or transcodes from (``AvSink.open(audio_from=...)``)."""

    def __init__(self, stream: av.audio.stream.AudioStream) -> None:
        self._holder = av.open(io.BytesIO(), "w", format="matroska")  # never written: it only keeps `stream`
        self.stream = self._holder.add_stream_from_template(stream)
        self.codec = stream.codec_context.name

    def __repr__(self) -> str:
        return f"AudioFormat({self.codec})"


class AudioQueue:
    """Audio chunks in order, at most ``max_seconds`` of them (see the module's doc); thread-safe."""

    def __init__(self, max_seconds: float = QUEUE_SECONDS) -> None:
        self.max_seconds = max_seconds
        self.dropped = 0
        self.put_count = 0
        self._chunks: deque[AudioChunk] = deque()
        self._lock = threading.Lock()

    def put(self, chunk: AudioChunk) -> int:
        """Add ``chunk``; return how many of the oldest chunks it pushed out (over ``max_seconds``)."""
        with self._lock:
            self._chunks.append(chunk)
            self.put_count += 1
            dropped = 0
            while len(self._chunks) > 1 and chunk.end - self._chunks[0].seconds > self.max_seconds:
                self._chunks.popleft()
                dropped += 1
            self.dropped += dropped
            return dropped

    def take(self, until: float | None = None, *, waited: float | None = None, now: float | None = None) -> list[AudioChunk]:
        """The chunks, oldest first, that start before ``until`` seconds (all when None), and those captured
        more than ``waited`` seconds before ``now`` (they have waited long enough for their video)."""
        now = time.monotonic() if now is None else now
        out: list[AudioChunk] = []
        with self._lock:
            while self._chunks:
                first = self._chunks[0]
                due = until is None or first.seconds < until
                stale = waited is not None and now - first.capture_time >= waited
                if not (due or stale):
                    break
                out.append(self._chunks.popleft())
        return out

    def __len__(self) -> int:
        with self._lock:
            return len(self._chunks)


class AudioTap:
    """A source's audio: the input's audio stream (what a sink copies or transcodes) and the queue its
    packets wait in, placed on the source's video clock (``clock``)."""

    def __init__(self, clock: PtsClock, max_seconds: float = QUEUE_SECONDS) -> None:
        self.clock = clock
        self.queue = AudioQueue(max_seconds)
        self.format: AudioFormat | None = None  # the first connection's: sinks open with it
        self.used = False  # a runtime takes from the queue (counted in the stats); else it just stays bounded
        self.pending_dropped = 0
        self._pending: deque[tuple[av.Packet, float]] = deque()

    def connected(self, stream: av.audio.stream.AudioStream | None) -> None:
        """A (re)connection: its audio stream (None: this one has none); packets from before wait for video."""
        if self.format is None and stream is not None:
            self.format = AudioFormat(stream)
        self._pending.clear()

    def packet(self, packet: av.Packet, capture_time: float | None = None) -> None:
        """One audio packet as the demuxer gave it (one without a pts or a dts is skipped)."""
        if packet.pts is None or packet.dts is None or packet.time_base is None:
            return
        now = time.monotonic() if capture_time is None else capture_time
        seconds = self.clock.seconds_of(packet.pts, packet.time_base)
        if seconds is None:  # the clock waits for this connection's first video frame
            self._pending.append((packet, now))
            if len(self._pending) > PENDING_PACKETS:
                self._pending.popleft()
                self.pending_dropped += 1
            return
        self.queue.put(AudioChunk(packet, seconds, packet_duration(packet), now))

    def video_placed(self) -> None:
        """The clock placed a video frame: packets waiting for it go to the queue."""
        if self.clock.seconds_of(0, Fraction(1)) is None:
            return
        while self._pending:
            packet, captured = self._pending.popleft()
            self.packet(packet, captured)
