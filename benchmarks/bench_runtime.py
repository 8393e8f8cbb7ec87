"""Runtime latency on this machine: testsrc -> passthrough -> file, and testsrc -> a 100 ms model.

Prints capture-to-output latency (p50/p95) for the first, and latency per 100-source-frame window for the
second (it must not grow: the latest frame wins, nothing queues). Target on a 2-core machine: p95 <= 45 ms
for the passthrough run.

    python benchmarks/bench_runtime.py [--seconds 10] [--size 640x360] [--fps 30]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

from pipelines.passthrough import PassthroughPipeline
from streamer.config import parse_size
from streamer.engine.runtime import Runtime
from streamer.engine.worker import GpuWorker
from streamer.media.frames import Frame
from streamer.observe.stats import RunStats
from streamer.sinks.av_sink import AvSink
from streamer.sinks.base import Sink
from streamer.sources.testsrc import TestSource, marks_age_ms, read_marks

TARGET_P95_MS = 45.0


class MarkLatencySink(Sink):
    """Reads TestSource's marks at each write: (source index, latency in ms measured from the pixels)."""

    name = "marks"

    def __init__(self) -> None:
        self.samples: list[tuple[int, int]] = []

    def open(self, width: int, height: int, fps: float) -> None:
        pass

    def write(self, frame: Frame) -> None:
        marks = read_marks(frame.image)
        if marks is not None:
            self.samples.append((marks[0], marks_age_ms(marks[1])))

    def close(self) -> None:
        pass


def passthrough_to_file(seconds: float, width: int, height: int, fps: float, folder: Path) -> dict:
    stats = RunStats()
    worker = GpuWorker(PassthroughPipeline(), on_batch=stats.batch)
    out = folder / "bench.mp4"
    try:
        snap = Runtime(TestSource(width, height, fps), [AvSink(out)], worker, stats=stats, duration=seconds).run()
    finally:
        worker.close()
    return snap


def slow_model(frames: int, width: int, height: int, fps: float, model_s: float) -> tuple[dict, list]:
    stats = RunStats()
    worker = GpuWorker(PassthroughPipeline(delay=model_s), on_batch=stats.batch)
    sink = MarkLatencySink()
    try:
        source = TestSource(width, height, fps, max_frames=frames)
        snap = Runtime(source, [sink], worker, stats=stats).run()
    finally:
        worker.close()
    return snap, sink.samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the passthrough run")
    parser.add_argument("--size", type=parse_size, default=(640, 360), metavar="WxH", help="testsrc size")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--slow-frames", type=int, default=300, help="source frames for the slow-model run")
    parser.add_argument("--model-ms", type=float, default=100.0)
    args = parser.parse_args()
    width, height = args.size
    print(f"machine: {platform.machine()}, {platform.system()}, python {platform.python_version()}, "
          f"cpus {len(__import__('os').sched_getaffinity(0))}")

    with tempfile.TemporaryDirectory() as tmp:
        snap = passthrough_to_file(args.seconds, width, height, args.fps, Path(tmp))
    lat, sink = snap["latency_ms"], next(iter(snap["sinks"].values()))
    verdict = "ok" if lat["p95"] is not None and lat["p95"] <= TARGET_P95_MS else "ABOVE TARGET"
    print(f"\n1) testsrc {width}x{height}@{args.fps:g} -> passthrough -> mp4 (libx264 crf 23), {args.seconds:g} s")
    print(f"   frames in {snap['frames_in']}, out {snap['frames_out']}, fps out {snap['fps_out']}, "
          f"dropped {snap['dropped']} {snap['dropped_at']}")
    print(f"   capture->written latency: p50 {lat['p50']} ms, p95 {lat['p95']} ms, max {lat['max']} ms "
          f"(target p95 <= {TARGET_P95_MS:g} ms: {verdict})")
    print(f"   stages mean ms: queue {snap['stages']['queue'].get('mean_ms')}, gpu {snap['stages']['gpu'].get('mean_ms')}, "
          f"file write {sink['write'].get('mean_ms')}")

    snap, samples = slow_model(args.slow_frames, width, height, args.fps, args.model_ms / 1000)
    print(f"\n2) testsrc {width}x{height}@{args.fps:g} -> {args.model_ms:g} ms model, {args.slow_frames} source frames")
    print(f"   frames in {snap['frames_in']}, out {snap['frames_out']}, dropped at capture "
          f"{snap['dropped_at']['capture']}")
    print("   source frames     out   latency p50   p95    max (ms)")
    windows = []
    for start in range(0, args.slow_frames, 100):
        lat = [age for index, age in samples if start <= index < start + 100]
        if lat:
            windows.append(np.percentile(lat, 95))
            print(f"   {start:4d}-{start + 99:<4d}       {len(lat):4d}   {np.percentile(lat, 50):8.0f} "
                  f"{np.percentile(lat, 95):6.0f} {max(lat):6.0f}")
    if len(windows) >= 2:
        growth = windows[-1] - windows[0]
        print(f"   p95 change first -> last window: {growth:+.0f} ms ({'no growth' if growth < 40 else 'GROWS'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
