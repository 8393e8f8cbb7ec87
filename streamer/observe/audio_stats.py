"""Audio's part of the run statistics (streamer.observe.stats.RunStats.audio): packets in and out, packets
dropped at a queue's time bound, the delay applied to audio (capture to written: it waits for its video),
and the A/V offset measured at each sink (how much later than its video frame the sound left, on the wall
clock, minus how much later it plays). Thread-safe; names for JSON, the status line and /metrics live here.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from typing import Any

import numpy as np

RECENT = 30  # "current" values are the median of the last this many


class AudioSinkStats:
    def __init__(self) -> None:
        self.written = 0
        self.dropped = 0
        self.offsets: deque[float] = deque(maxlen=RECENT)


class AudioStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sinks: dict[str, AudioSinkStats] = {}
        self.delays: deque[float] = deque(maxlen=RECENT)
        self.peer_packets_in = 0  # packets from WebRTC peers (serve); a source's are counted by its tap
        self.delay_now: float | None = None  # serve: the delay its streams' audio follows, the latest set

    def written(self, sink: str, delay_s: float | None, offset_s: float | None, count: int = 1) -> None:
        """``count`` packets handed to ``sink``: ``delay_s`` after their capture (None: not known per packet,
        see ``delayed``); ``offset_s`` see the module's doc."""
        with self._lock:
            s = self.sinks.setdefault(sink, AudioSinkStats())
            s.written += count
            if delay_s is not None:
                self.delays.append(delay_s)
            if offset_s is not None:
                s.offsets.append(offset_s)

    def received(self, count: int) -> None:
        """Audio packets from a WebRTC peer (a source's are counted from its tap)."""
        with self._lock:
            self.peer_packets_in += count

    def delayed(self, delay_s: float) -> None:
        """The delay now applied to a stream's audio, where it is decided per stream (serve), not per packet."""
        with self._lock:
            self.delay_now = delay_s

    def dropped(self, sink: str, count: int) -> None:
        """Packets a sink's audio queue dropped at its time bound (the sink was stuck)."""
        with self._lock:
            self.sinks.setdefault(sink, AudioSinkStats()).dropped += count

    def snapshot(self, sources: Iterable[Any] = ()) -> dict[str, Any]:
        """``packets_in`` (taken from the sources), ``dropped_in_source`` (their queues' bound), ``delay_ms``
        (current delay applied), and per sink ``written``, ``dropped``, ``av_offset_ms`` (current)."""
        taps = [source.audio for source in sources if getattr(getattr(source, "audio", None), "used", False)]
        with self._lock:
            return {
                "packets_in": self.peer_packets_in + sum(tap.queue.put_count for tap in taps),
                "dropped_in_source": sum(tap.queue.dropped + tap.pending_dropped for tap in taps),
                "packets_out": sum(s.written for s in self.sinks.values()),
                "delay_ms": _median_ms(self.delays) if self.delays else _median_ms([] if self.delay_now is None
                                                                                   else [self.delay_now]),
                "sinks": {name: {"written": s.written, "dropped": s.dropped, "av_offset_ms": _median_ms(s.offsets)}
                          for name, s in self.sinks.items()},
            }


def recent_ms(samples: deque[float]) -> float | None:
    """The median of the last RECENT samples (seconds) in ms: the current value of a series."""
    return _median_ms(list(samples)[-RECENT:])


def _median_ms(values: Iterable[float]) -> float | None:
    values = list(values)
    return round(float(np.median(values)) * 1000, 1) if values else None
