"""A/V sync through the live paths: a clip with a white flash and a click on the same instants goes through
each path, and the offsets between each flash and its click are measured at the output
(streamer.eval.av_sync). Target on every path: |offset| within one video frame (33 ms at 30 fps), and no
audio gap longer than a frame, also while video frames are dropped (the slow model).

Paths (``PATHS``, in order):
  rtsp->file, rtsp->udp, realtime-file->file: `streamer run`'s runtime, the source a real RTSP server
      (GStreamer, tests/rtsp_server.py under /usr/bin/python3) or the clip played with --realtime;
  each with two models: "slow" (passes frames through after SLOW_MODEL_S: a known delay, slower than the
      source, so frames are dropped) and "tiny" (the tiny preset: stylized, random weights).
  The server's paths (WHIP -> WHEP, /watch) plug in through ``SERVER_PATHS``: a function
      ``(clip: Path, workdir: Path) -> PathResult`` per name (see ``register``).

    python benchmarks/bench_av_sync.py [--seconds 10] [--paths rtsp->file,rtsp->udp] [--models slow,tiny]
"""

from __future__ import annotations

import argparse
import math
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines import load_pipeline
from pipelines.passthrough import PassthroughPipeline
from streamer.engine.runtime import Runtime
from streamer.engine.worker import GpuWorker
from streamer.eval.av_sync import SyncReport, make_sync_clip, measure_file
from streamer.sinks.av_sink import AvSink
from streamer.sources import open_source

REPO = Path(__file__).resolve().parents[1]
RTSP_SERVER = REPO / "tests" / "rtsp_server.py"
SYSTEM_PYTHON = "/usr/bin/python3"
SLOW_MODEL_S = 0.05  # a 20 fps model behind a 30 fps source
FRAME_S = 1 / 30


@dataclass
class PathResult:
    report: SyncReport
    dropped: int  # video frames dropped on the way (the newest-frame-wins slots)


PathFn = Callable[[Path, Path, str, float], PathResult]  # (clip, workdir, model, seconds)
SERVER_PATHS: dict[str, Callable[[Path, Path], PathResult]] = {}  # WHIP->WHEP etc.: added by register()


def register(name: str, run: Callable[[Path, Path], PathResult]) -> None:
    """Add a server path (e.g. "whip->whep"): ``run(clip, workdir)`` publishes ``clip`` and measures what a
    viewer got (``streamer.eval.av_sync.measure`` on its decoded frames and samples)."""
    SERVER_PATHS[name] = run


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_for(model: str) -> GpuWorker:
    pipeline = PassthroughPipeline(delay=SLOW_MODEL_S) if model == "slow" else load_pipeline(model)
    return GpuWorker(pipeline)


def run_live(spec: str, target: str, model: str, seconds: float, *, realtime: bool = False) -> dict[str, Any]:
    source = open_source(spec, realtime=realtime)
    worker = worker_for(model)
    try:
        return Runtime(source, [AvSink(target, overwrite=True)], worker, duration=seconds).run()
    finally:
        worker.close()
        source.close()


class RtspServer:
    def __init__(self, clip: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([SYSTEM_PYTHON, str(RTSP_SERVER), "--port", str(self.port), "--clip", str(clip)],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("READY"):
            self.close()
            raise RuntimeError(f"the RTSP test server did not start: {line!r}")
        self.url = f"rtsp://127.0.0.1:{self.port}/test"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def rtsp_to_file(clip: Path, workdir: Path, model: str, seconds: float) -> PathResult:
    server = RtspServer(clip)
    try:
        out = workdir / f"rtsp-{model}.mp4"
        stats = run_live(server.url, str(out), model, seconds)
    finally:
        server.close()
    return PathResult(measure_file(out), stats["dropped"])


def rtsp_to_udp(clip: Path, workdir: Path, model: str, seconds: float) -> PathResult:
    server = RtspServer(clip)
    port = free_port(socket.SOCK_DGRAM)
    got: dict[str, Any] = {}

    def read() -> None:
        try:
            got["report"] = measure_file(f"udp://127.0.0.1:{port}", options={"overrun_nonfatal": "1",
                                         "fifo_size": "1000000"}, timeout=(60, 3))
        except Exception as exc:  # noqa: BLE001 - shown in the table
            got["error"] = exc

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(0.3)
    try:
        stats = run_live(server.url, f"udp://127.0.0.1:{port}", model, seconds)
    finally:
        server.close()
    reader.join(90)
    if "report" not in got:
        raise RuntimeError(f"the UDP reader got nothing: {got.get('error')}")
    return PathResult(got["report"], stats["dropped"])


def realtime_file_to_file(clip: Path, workdir: Path, model: str, seconds: float) -> PathResult:
    out = workdir / f"realtime-{model}.mkv"
    stats = run_live(str(clip), str(out), model, seconds, realtime=True)
    return PathResult(measure_file(out), stats["dropped"])


PATHS: dict[str, PathFn] = {"rtsp->file": rtsp_to_file, "rtsp->udp": rtsp_to_udp,
                            "realtime-file->file": realtime_file_to_file}


def _whip_to_whep(viewer: str, publisher: str = "aiortc") -> Callable[[Path, Path], PathResult]:
    """`streamer serve` (its test server, a model taking SLOW_MODEL_S a frame) in a loopback-only network
    namespace: ``publisher`` sends the clip over WHIP, ``viewer`` watches over WHEP (tests/av_measure.py)."""

    def run(clip: Path, workdir: Path) -> PathResult:
        sys.path.insert(0, str(REPO))
        from tests.av_measure import measure_whip_to_whep, sync_report

        results = measure_whip_to_whep(delay=SLOW_MODEL_S, viewers=(viewer,), publisher=publisher, clip=clip,
                                       work=workdir, seconds=SERVER_SECONDS)
        dropped = int(results["server"].get('streamer_frames_dropped_total{where="capture"}', 0))
        return PathResult(sync_report(results[viewer]), dropped)

    return run


SERVER_SECONDS = 10.0
register("whip->whep (aiortc viewer)", _whip_to_whep("aiortc"))
register("whip->whep (webrtcbin viewer)", _whip_to_whep("webrtcbin"))
register("whip (webrtcbin)->whep (aiortc)", _whip_to_whep("aiortc", publisher="webrtcbin"))


def row(name: str, result: PathResult | None, error: str = "") -> str:
    if result is None:
        return f"{name:<28} failed: {error}"
    r = result.report
    mean = "-" if math.isnan(r.mean_abs_offset) else f"{r.mean_abs_offset * 1000:.1f}"
    worst = "-" if math.isnan(r.max_abs_offset) else f"{r.max_abs_offset * 1000:.1f}"
    ok = r.events > 0 and r.max_abs_offset <= FRAME_S and r.longest_audio_gap <= FRAME_S
    return (f"{name:<28} {r.events:>6} {mean:>10} {worst:>9} {r.longest_audio_gap * 1000:>12.1f} "
            f"{result.dropped:>8}  {'ok' if ok else 'OUT OF SYNC' if r.events else 'no events'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="how long each path runs")
    parser.add_argument("--paths", default=",".join([*PATHS, *SERVER_PATHS]))
    parser.add_argument("--models", default="slow,tiny")
    args = parser.parse_args()
    global SERVER_SECONDS
    SERVER_SECONDS = args.seconds
    workdir = Path(tempfile.mkdtemp(prefix="bench-av-sync-"))
    clip = make_sync_clip(workdir / "clip.mp4", seconds=args.seconds + 4, first=0.7, every=0.5).path
    print(f"clip: {clip.name}, 30 fps, a flash and a click every 0.5 s; tolerance {FRAME_S * 1000:.1f} ms")
    print(f"{'path (model)':<28} {'events':>6} {'mean |ms|':>10} {'max |ms|':>9} {'audio gap ms':>12} "
          f"{'dropped':>8}")
    for name in args.paths.split(","):
        if name in SERVER_PATHS:
            try:
                print(row(name, SERVER_PATHS[name](clip, workdir)), flush=True)
            except Exception as exc:  # noqa: BLE001 - one failed path does not hide the others
                print(row(name, None, str(exc).splitlines()[0] if str(exc) else type(exc).__name__), flush=True)
            continue
        for model in args.models.split(","):
            label = f"{name} ({model})"
            try:
                print(row(label, PATHS[name](clip, workdir, model, args.seconds)), flush=True)
            except Exception as exc:  # noqa: BLE001
                print(row(label, None, str(exc).splitlines()[0] if str(exc) else type(exc).__name__), flush=True)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
