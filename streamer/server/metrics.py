"""Server counters and their Prometheus text rendering (sessions, fps, latency, drops, batch sizes).

Everything is updated on the event loop except ``observe_batch``, which the GPU worker thread calls,
hence the lock. Latency windows and rates are streamer.stats' Series and Rate, as in `streamer run`.
"""

from __future__ import annotations

import threading
import time

from streamer.stats import WINDOW, Rate, Series

BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16)
BATCH_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LATENCY_QUANTILES = (0.5, 0.9, 0.99)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.total += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1

    def render(self, name: str, help_text: str) -> list[str]:
        lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        for bound, count in zip(self.buckets, self.counts, strict=True):
            lines.append(f'{name}_bucket{{le="{bound:g}"}} {count}')
        lines += [f'{name}_bucket{{le="+Inf"}} {self.count}', f"{name}_sum {self.total:.6f}",
                  f"{name}_count {self.count}"]
        return lines


class StreamStats:
    """Per-stream frame rate and latency over the last few seconds (for the page's readout)."""

    def __init__(self) -> None:
        self._rate = Rate()
        self.last_latency = 0.0
        self.frames = 0
        self.dropped = 0
        self.received = 0  # input frames from the peer (browser camera, WHIP publisher)

    def frame_out(self, latency: float) -> None:
        self._rate.tick(time.monotonic())
        self.frames += 1
        self.last_latency = latency

    @property
    def fps(self) -> float:
        return self._rate.per_second(time.monotonic())

    def as_dict(self) -> dict[str, float]:
        return {"fps": round(self.fps, 2), "latency_ms": round(self.last_latency * 1000, 1),
                "frames": self.frames, "dropped": self.dropped,
                "received": self.received}


class ServerMetrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.batch_seconds = Histogram(BATCH_SECONDS_BUCKETS)
        self.latency = Series()  # one sample per stylized frame sent
        self.frames_dropped = 0
        self.frames_received = 0
        self.frame_errors = 0
        self.sessions_started = 0

    def observe_batch(self, size: int, seconds: float) -> None:
        """GpuWorker.on_batch callback (runs on the worker thread)."""
        with self._lock:
            self.batch_size.observe(size)
            self.batch_seconds.observe(seconds)

    def frame_out(self, latency: float) -> None:
        self.latency.add(latency)

    @property
    def frames_out(self) -> int:
        return self.latency.count

    def render(self, sessions_by_kind: dict[str, int], streams: dict[str, StreamStats]) -> str:
        lines = ["# HELP streamer_sessions Open WebRTC sessions by kind.", "# TYPE streamer_sessions gauge"]
        for kind, count in sorted(sessions_by_kind.items()):
            lines.append(f'streamer_sessions{{kind="{kind}"}} {count}')
        lines += ["# HELP streamer_sessions_started_total Sessions accepted since start.",
                  "# TYPE streamer_sessions_started_total counter",
                  f"streamer_sessions_started_total {self.sessions_started}",
                  "# HELP streamer_frames_total Stylized frames sent.", "# TYPE streamer_frames_total counter",
                  f"streamer_frames_total {self.frames_out}",
                  "# HELP streamer_frames_received_total Input frames received from publishers (browser, WHIP).",
                  "# TYPE streamer_frames_received_total counter",
                  f"streamer_frames_received_total {self.frames_received}",
                  "# HELP streamer_frames_dropped_total Input frames replaced by a newer one before the GPU took them.",
                  "# TYPE streamer_frames_dropped_total counter",
                  f"streamer_frames_dropped_total {self.frames_dropped}",
                  "# HELP streamer_frame_errors_total Frames the pipeline failed on.",
                  "# TYPE streamer_frame_errors_total counter",
                  f"streamer_frame_errors_total {self.frame_errors}",
                  "# HELP streamer_fps Stylized frames per second, all streams together (last 2 s).",
                  "# TYPE streamer_fps gauge",
                  f"streamer_fps {sum(s.fps for s in streams.values()):.2f}"]
        recent = sorted(self.latency.samples)
        lines += [f"# HELP streamer_latency_seconds Frame arrival to stylized frame ready (last {WINDOW} frames).",
                  "# TYPE streamer_latency_seconds summary"]
        for q in LATENCY_QUANTILES:
            value = recent[min(len(recent) - 1, int(q * len(recent)))] if recent else float("nan")
            lines.append(f'streamer_latency_seconds{{quantile="{q}"}} {value:.6f}')
        lines += [f"streamer_latency_seconds_sum {self.latency.total:.6f}",
                  f"streamer_latency_seconds_count {self.latency.count}"]
        with self._lock:
            lines += self.batch_size.render("streamer_batch_size", "Frames per model call.")
            lines += self.batch_seconds.render("streamer_batch_seconds", "Seconds per model call.")
        return "\n".join(lines) + "\n"
