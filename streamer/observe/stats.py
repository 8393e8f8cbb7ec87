"""Every runtime metric in one place, for `streamer run` and `streamer serve` alike: counts, rates, stage
times, latency. Read as JSON (``--stats``, GET /stats), a status line, or Prometheus text (streamer.observe.prometheus).

Threads report events (a frame captured or received, dropped, stylized, written or sent; a batch run) and
read snapshots; all state is behind one lock. Time series keep a bounded window, so memory stays flat however
long a run lasts.

Latency is one thing everywhere: from the frame's capture time (a WebRTC frame: its arrival at the server)
to the moment it left, written by a sink (`run`) or handed to the peer connection (`serve`).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from streamer.observe.audio_stats import AudioStats, recent_ms

WINDOW = 4096  # samples kept per series for percentiles
RATE_WINDOW_S = 2.0  # live fps is measured over this many seconds
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)  # seconds
MODEL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)  # seconds per model call
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16)  # frames per model call
LATENCY_FOLLOW = 15  # a stream's video delay (which its audio follows) is the median of this many frames


class Series:
    """The last ``WINDOW`` samples of one quantity (seconds), summarized in milliseconds."""

    def __init__(self) -> None:
        self.samples: deque[float] = deque(maxlen=WINDOW)
        self.count = 0
        self.total = 0.0

    def add(self, seconds: float) -> None:
        self.samples.append(seconds)
        self.count += 1
        self.total += seconds

    def summary(self) -> dict[str, float | int]:
        if not self.samples:
            return {"count": 0}
        arr = np.asarray(self.samples) * 1000.0
        return {
            "count": self.count,
            "mean_ms": round(self.total / self.count * 1000.0, 2),
            "p50_ms": round(float(np.percentile(arr, 50)), 2),
            "p95_ms": round(float(np.percentile(arr, 95)), 2),
            "max_ms": round(float(arr.max()), 2),
        }


class Rate:
    """Events per second over the last ``RATE_WINDOW_S`` seconds."""

    def __init__(self) -> None:
        self.times: deque[float] = deque()

    def tick(self, now: float) -> None:
        self.times.append(now)
        self._trim(now)

    def per_second(self, now: float) -> float:
        self._trim(now)
        if len(self.times) < 2:
            return 0.0
        return (len(self.times) - 1) / max(self.times[-1] - self.times[0], 1e-6)

    def _trim(self, now: float) -> None:
        while self.times and now - self.times[0] > RATE_WINDOW_S:
            self.times.popleft()


class Histogram:
    """Cumulative counts of observations at or below each bound, as Prometheus histograms have them."""

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

    def copy(self) -> Histogram:
        other = Histogram(self.buckets)
        other.counts, other.count, other.total = list(self.counts), self.count, self.total
        return other


class SinkStats:
    def __init__(self) -> None:
        self.written = 0
        self.dropped = 0
        self.repeated = 0  # frames re-sent while the source had no signal
        self.errors = 0
        self.write = Series()
        self.latency = Series()
        self.rate = Rate()


class RunStats:
    """Collects what the live paths report; thread-safe. One per process: `streamer run`'s runtime (one
    source, its sinks) or `streamer serve`'s sessions (each stream also keeps a StreamStats view of its own).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.frames_in = 0
        self.frames_out = 0
        self.frame_errors = 0
        self.dropped_capture = 0
        self.sessions_started = 0
        self.no_signal = False
        self._sources: list[Any] = []  # sources whose ``reconnects`` are reported
        self._drop_sources: list[Any] = []  # ... and those whose own ``dropped`` count is reported
        self.rate_in, self.rate_out = Rate(), Rate()
        self.stages = {"queue": Series(), "gpu": Series(), "model": Series()}
        self.latency = Series()
        self.batch_sizes: dict[int, int] = {}
        self.sinks: dict[str, SinkStats] = {}
        self.histograms = {"latency_seconds": Histogram(LATENCY_BUCKETS), "batch_size": Histogram(BATCH_BUCKETS),
                           "model_seconds": Histogram(MODEL_BUCKETS)}
        self.audio = AudioStats()  # audio packets in/out, delay applied, A/V offset per sink

    # --- events -------------------------------------------------------------------------------------
    def watch_source(self, source: Any, *, drops: bool = True) -> None:
        """Report ``source.reconnects`` and, with ``drops``, ``source.dropped`` (frames its own reader replaced
        before they were read) in every snapshot. ``serve`` counts those drops itself as they happen (only
        while someone watches), so it watches reconnects only: each drop is counted once."""
        self._sources.append(source)
        if drops:
            self._drop_sources.append(source)

    def captured(self, now: float | None = None) -> None:
        with self._lock:
            self.frames_in += 1
            self.rate_in.tick(now or time.monotonic())

    def dropped_at_capture(self, count: int = 1) -> None:
        with self._lock:
            self.dropped_capture += count

    def processed(self, queue_s: float, gpu_s: float, now: float | None = None) -> None:
        """A frame came back from the model: time it waited in the slot, and submit -> result."""
        with self._lock:
            self.frames_out += 1
            self.rate_out.tick(now or time.monotonic())
            self.stages["queue"].add(queue_s)
            self.stages["gpu"].add(gpu_s)

    def failed(self) -> None:
        """The pipeline failed on a frame (it is skipped, the stream goes on)."""
        with self._lock:
            self.frame_errors += 1

    def sent(self, latency_s: float, now: float | None = None) -> None:
        """A stylized frame left without a sink (`serve`: handed to the peer connection)."""
        with self._lock:
            self.frames_out += 1
            self.rate_out.tick(now or time.monotonic())
            self._delivered(latency_s)

    def audio_event(self, received: int = 0, sent: int = 0, delay_s: float | None = None,
                    offset_s: float | None = None) -> None:
        """Audio packets received and sent on; the delay now applied to audio (to match the video's); the A/V
        offset at the output (audio minus video, seconds: positive, the sound comes late). Serve's peers; kept
        in ``self.audio`` with the runtime's sinks, whose output is named ``webrtc`` here."""
        if received:
            self.audio.received(received)
        if sent or offset_s is not None:
            self.audio.written("webrtc", None, offset_s, count=sent)
        if delay_s is not None:
            self.audio.delayed(delay_s)

    def session_started(self) -> None:
        with self._lock:
            self.sessions_started += 1

    def batch(self, size: int, seconds: float) -> None:
        """GpuWorker's on_batch callback."""
        with self._lock:
            self.stages["model"].add(seconds)
            self.batch_sizes[size] = self.batch_sizes.get(size, 0) + 1
            self.histograms["batch_size"].observe(size)
            self.histograms["model_seconds"].observe(seconds)

    def _delivered(self, latency_s: float) -> None:  # under the lock
        self.latency.add(latency_s)
        self.histograms["latency_seconds"].observe(latency_s)

    def add_sink(self, name: str) -> None:
        with self._lock:
            self.sinks.setdefault(name, SinkStats())

    def sink_written(self, name: str, write_s: float, latency_s: float | None, now: float | None = None) -> None:
        with self._lock:
            s = self.sinks.setdefault(name, SinkStats())
            s.written += 1
            s.write.add(write_s)
            s.rate.tick(now or time.monotonic())
            if latency_s is None:
                s.repeated += 1
            else:
                s.latency.add(latency_s)
                self._delivered(latency_s)

    def sink_dropped(self, name: str, count: int = 1) -> None:
        with self._lock:
            self.sinks.setdefault(name, SinkStats()).dropped += count

    def sink_failed(self, name: str) -> None:
        with self._lock:
            self.sinks.setdefault(name, SinkStats()).errors += 1

    # --- reports ------------------------------------------------------------------------------------
    def reconnects(self) -> int:
        return sum(s.reconnects for s in self._sources)

    def dropped_in_source(self) -> int | None:
        counts = [s.dropped for s in self._drop_sources if s.dropped is not None]
        return sum(counts) if counts else None

    def snapshot(self) -> dict[str, Any]:
        """Everything as plain JSON-able data (the --stats file, GET /stats)."""
        now = time.monotonic()
        in_source = self.dropped_in_source()
        with self._lock:
            elapsed = max(now - self.started, 1e-6)
            latency = self.latency.summary()
            sinks = {
                name: {
                    "written": s.written,
                    "dropped": s.dropped,
                    "repeated": s.repeated,
                    "errors": s.errors,
                    "fps": round(s.rate.per_second(now), 2),
                    "write": s.write.summary(),
                    "latency_ms": _latency(s.latency.summary()),
                }
                for name, s in self.sinks.items()
            }
            dropped_at = {"capture": self.dropped_capture, **{name: s.dropped for name, s in self.sinks.items()}}
            if in_source is not None:
                dropped_at = {"source": in_source, **dropped_at}
            return {
                "elapsed_s": round(elapsed, 3),
                "frames_in": self.frames_in,
                "frames_out": self.frames_out,
                "frame_errors": self.frame_errors,
                "dropped": sum(dropped_at.values()),
                "dropped_at": dropped_at,
                "reconnects": self.reconnects(),
                "no_signal": self.no_signal,
                "fps_in": round(self.frames_in / elapsed, 2),
                "fps_out": round(self.frames_out / elapsed, 2),
                "fps_in_now": round(self.rate_in.per_second(now), 2),
                "fps_out_now": round(self.rate_out.per_second(now), 2),
                "latency_ms": _latency(latency),
                # The video's current delay (capture to written/sent, median of the last frames): what a
                # sink without audio (virtual camera, window) is behind the sound, e.g. OBS's Sync Offset.
                "video_delay_ms": recent_ms(self.latency.samples),
                "stages": {name: series.summary() for name, series in self.stages.items()},
                "batch_sizes": dict(sorted(self.batch_sizes.items())),
                "sinks": sinks,
                "audio": self.audio.snapshot(self._sources),
            }

    def write_json(self, path: Path | str, *, overwrite: bool = True) -> None:
        """The snapshot as JSON, written whole or not at all (streamer.engine.outputs.write_text)."""
        from streamer.engine.outputs import write_text

        write_text(path, json.dumps(self.snapshot(), indent=2) + "\n", overwrite=overwrite)

    def status_line(self) -> str:
        """One terminal line, refreshed in place."""
        snap = self.snapshot()
        lat = snap["latency_ms"]
        model = snap["stages"]["model"].get("mean_ms")
        parts = [
            f"in {snap['fps_in_now']:.1f} fps",
            f"out {snap['fps_out_now']:.1f} fps",
            f"latency p50 {lat['p50']:.0f} ms p95 {lat['p95']:.0f} ms" if lat["p50"] is not None else "latency -",
            f"model {model:.0f} ms" if model is not None else "model -",
            f"dropped {snap['dropped']} (capture {snap['dropped_at']['capture']})",
        ]
        if snap["video_delay_ms"] is not None:
            parts.append(f"video delay {snap['video_delay_ms']:.0f} ms")
        audio = snap["audio"]
        if audio["packets_in"]:
            parts.append(f"audio {audio['packets_in']} in {audio['packets_out']} out")
        if snap["reconnects"]:
            parts.append(f"reconnects {snap['reconnects']}")
        if snap["no_signal"]:
            parts.append("NO SIGNAL")
        return " | ".join(parts)

    def histogram_copies(self) -> dict[str, Histogram]:
        """The Prometheus histograms (latency_seconds, batch_size, model_seconds), copied under the lock."""
        with self._lock:
            return {name: h.copy() for name, h in self.histograms.items()}

    def stream(self) -> StreamStats:
        """A view of one stream (a WebRTC session) that also counts into these totals."""
        return StreamStats(self)


class StreamStats:
    """One stream's own counts, frame rate and last latency (the page's readout, /sessions); every event is
    counted once more into the process's RunStats (``parent``), which keeps it after the stream is gone.
    Updated on the server's event loop."""

    def __init__(self, parent: RunStats | None = None) -> None:
        self.parent = parent
        self._rate = Rate()
        self.last_latency = 0.0
        self.frames = 0
        self.dropped = 0
        self.received = 0  # input frames from the peer (browser camera, WHIP publisher)
        self._latencies: deque[float] = deque(maxlen=LATENCY_FOLLOW)
        self._sent_on: deque[float] = deque(maxlen=LATENCY_FOLLOW)  # handed over -> encoded and sent
        self.audio_in = self.audio_out = 0  # audio packets from the peer; sent (to a viewer; back to a browser)
        self.audio_delay: float | None = None  # applied to this stream's audio now
        self.av_offset: float | None = None  # the applied audio delay minus the last frame's latency and encoding

    def frame_received(self) -> None:
        self.received += 1
        if self.parent is not None:
            self.parent.captured()

    def frame_dropped(self) -> None:
        """Replaced by a newer frame before the model took it."""
        self.dropped += 1
        if self.parent is not None:
            self.parent.dropped_at_capture()

    def frame_failed(self) -> None:
        if self.parent is not None:
            self.parent.failed()

    def frame_out(self, latency: float) -> None:
        now = time.monotonic()
        self._rate.tick(now)
        self.frames += 1
        self.last_latency = latency
        self._latencies.append(latency)
        if self.parent is not None:
            self.parent.sent(latency, now)
        if self.audio_delay is not None:  # the sound of this frame's instant leaves audio_delay after it came
            self.av_offset = self.audio_delay - latency - (float(np.median(self._sent_on)) if self._sent_on else 0.0)
            if self.parent is not None:
                self.parent.audio_event(offset_s=self.av_offset)

    def frame_sent_on(self, seconds: float) -> None:
        """A frame handed to a peer connection (or a viewer's copy) was encoded and sent ``seconds`` later."""
        self._sent_on.append(seconds)

    def video_delay(self) -> float | None:
        """This stream's video delay now, arrival to sent: the median latency of its last frames plus the
        median time their encoding took (None before the first frame)."""
        if not self._latencies:
            return None
        return float(np.median(self._latencies)) + (float(np.median(self._sent_on)) if self._sent_on else 0.0)

    def audio_received(self) -> None:
        self.audio_in += 1
        if self.parent is not None:
            self.parent.audio_event(received=1)

    def audio_sent(self) -> None:
        self.audio_out += 1
        if self.parent is not None:
            self.parent.audio_event(sent=1)

    def audio_delayed(self, seconds: float) -> None:
        self.audio_delay = seconds
        if self.parent is not None:
            self.parent.audio_event(delay_s=seconds)

    @property
    def fps(self) -> float:
        return self._rate.per_second(time.monotonic())

    def as_dict(self) -> dict[str, float]:
        return {"fps": round(self.fps, 2), "latency_ms": round(self.last_latency * 1000, 1),
                "frames": self.frames, "dropped": self.dropped, "received": self.received,
                "audio_in": self.audio_in, "audio_out": self.audio_out, "audio_delay_ms": _ms(self.audio_delay),
                "av_offset_ms": _ms(self.av_offset)}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _latency(summary: dict[str, Any]) -> dict[str, float | None]:
    return {"p50": summary.get("p50_ms"), "p95": summary.get("p95_ms"), "max": summary.get("max_ms"),
            "mean": summary.get("mean_ms")}
