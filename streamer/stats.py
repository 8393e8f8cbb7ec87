"""Every runtime metric in one place: counts, rates, stage times, latency; as JSON, a status line, Prometheus.

Threads report events (a frame captured, dropped, written; a batch run) and read snapshots; all state is
behind one lock. Time series keep a bounded window, so memory stays flat however long a run lasts.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

WINDOW = 4096  # samples kept per series for percentiles
RATE_WINDOW_S = 2.0  # live fps is measured over this many seconds


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
    """Collects what the live runtime reports; thread-safe. (The WebRTC server, with many sessions, keeps
    its own counters in streamer/server/metrics.py, built on the same Rate.)"""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.frames_in = 0
        self.frames_out = 0
        self.dropped_capture = 0
        self.no_signal = False
        self._sources: list[Any] = []  # sources that may count ``reconnects`` and ``dropped``
        self.rate_in, self.rate_out = Rate(), Rate()
        self.stages = {"queue": Series(), "gpu": Series(), "model": Series()}
        self.latency = Series()
        self.batch_sizes: dict[int, int] = {}
        self.sinks: dict[str, SinkStats] = {}

    # --- events -------------------------------------------------------------------------------------
    def watch_source(self, source: Any) -> None:
        """Report ``source.reconnects`` and ``source.dropped`` (frames its own reader replaced before they
        were read) in every snapshot, for sources that count them."""
        self._sources.append(source)

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

    def batch(self, size: int, seconds: float) -> None:
        """GpuWorker's on_batch callback."""
        with self._lock:
            self.stages["model"].add(seconds)
            self.batch_sizes[size] = self.batch_sizes.get(size, 0) + 1

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
                self.latency.add(latency_s)

    def sink_dropped(self, name: str, count: int = 1) -> None:
        with self._lock:
            self.sinks.setdefault(name, SinkStats()).dropped += count

    def sink_failed(self, name: str) -> None:
        with self._lock:
            self.sinks.setdefault(name, SinkStats()).errors += 1

    # --- reports ------------------------------------------------------------------------------------
    def reconnects(self) -> int:
        return sum(int(getattr(s, "reconnects", 0) or 0) for s in self._sources)

    def dropped_in_source(self) -> int | None:
        counts = [int(s.dropped) for s in self._sources if isinstance(getattr(s, "dropped", None), int)]
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
                "dropped": sum(dropped_at.values()),
                "dropped_at": dropped_at,
                "reconnects": self.reconnects(),
                "no_signal": self.no_signal,
                "fps_in": round(self.frames_in / elapsed, 2),
                "fps_out": round(self.frames_out / elapsed, 2),
                "fps_in_now": round(self.rate_in.per_second(now), 2),
                "fps_out_now": round(self.rate_out.per_second(now), 2),
                "latency_ms": _latency(latency),
                "stages": {name: series.summary() for name, series in self.stages.items()},
                "batch_sizes": dict(sorted(self.batch_sizes.items())),
                "sinks": sinks,
            }

    def write_json(self, path: Path | str, *, overwrite: bool = True) -> None:
        """The snapshot as JSON, written whole or not at all (streamer.outputs.write_text)."""
        from streamer.outputs import write_text

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
        if snap["reconnects"]:
            parts.append(f"reconnects {snap['reconnects']}")
        if snap["no_signal"]:
            parts.append("NO SIGNAL")
        return " | ".join(parts)

    def prometheus(self, prefix: str = "streamer") -> str:
        """The Prometheus text exposition format (for a /metrics route)."""
        snap = self.snapshot()
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP {prefix}_{name} {help_text}")
            lines.append(f"# TYPE {prefix}_{name} {kind}")
            for labels, value in samples:
                lines.append(f"{prefix}_{name}{labels} {value:g}")

        metric("frames_in_total", "counter", "Frames captured.", [("", snap["frames_in"])])
        metric("frames_out_total", "counter", "Frames stylized.", [("", snap["frames_out"])])
        metric("fps", "gauge", "Frames per second over the last seconds.",
               [('{direction="in"}', snap["fps_in_now"]), ('{direction="out"}', snap["fps_out_now"])])
        metric("dropped_frames_total", "counter", "Frames dropped, by where.",
               [(f'{{where="{_label(k)}"}}', v) for k, v in snap["dropped_at"].items()])
        metric("reconnects_total", "counter", "Source reconnections.", [("", snap["reconnects"])])
        lat = snap["latency_ms"]
        if lat["p50"] is not None:
            metric("latency_ms", "gauge", "Capture-to-output latency percentiles.",
                   [('{quantile="0.5"}', lat["p50"]), ('{quantile="0.95"}', lat["p95"])])
        stage_samples = [(f'{{stage="{k}"}}', v["mean_ms"]) for k, v in snap["stages"].items() if v["count"]]
        if stage_samples:
            metric("stage_ms", "gauge", "Mean time per stage.", stage_samples)
        metric("batches_total", "counter", "Model calls, by batch size.",
               [(f'{{size="{k}"}}', v) for k, v in snap["batch_sizes"].items()])
        return "\n".join(lines) + "\n"


def _latency(summary: dict[str, Any]) -> dict[str, float | None]:
    return {"p50": summary.get("p50_ms"), "p95": summary.get("p95_ms"), "max": summary.get("max_ms"),
            "mean": summary.get("mean_ms")}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')
