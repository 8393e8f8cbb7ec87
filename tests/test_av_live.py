"""Audio through `streamer run`'s live paths, in sync with the stylized video, measured on real media: a clip
with a flash and a click on the same instants (streamer.eval.av_sync) served by a real RTSP server
(GStreamer) or played with --realtime, into real files and a real UDP stream read back with PyAV; with the
tiny preset, and with a model that adds a known delay (slower than the source, so video frames are dropped
while the audio must not be)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import StartServer, free_port

from pipelines.passthrough import PassthroughPipeline
from streamer.engine.runtime import Runtime
from streamer.engine.worker import GpuWorker
from streamer.eval.av_sync import SyncReport, decoded, make_sync_clip, measure, measure_file
from streamer.observe.prometheus import exposition
from streamer.observe.stats import RunStats
from streamer.sinks.av_sink import AvSink
from streamer.sources import open_source

REPO = Path(__file__).resolve().parents[1]
FRAME = 1 / 30  # one video frame of the clips: the sync tolerance
SLOW_MODEL_S = 0.05  # a 20 fps model behind a 30 fps source: about one frame in three dropped
# Flashes are one frame long: one the model's slot dropped is no event. On a loaded 2-core machine the tiny
# model's first calls take seconds, so only a few of a run's flashes may get through it; each that does is
# checked against the tolerance.
TINY_EVENTS = 2
UDP_OPTIONS = {"overrun_nonfatal": "1", "fifo_size": "1000000"}


def sync_clip(folder: Path, seconds: float = 12.0, fps: float = 30.0) -> Path:
    """Events every half second, none at 1.0 s, where an RTSP client's stream starts. The preset tests play
    10 fps clips: on a shared 2-core machine the tiny model keeps up with 10 fps, so most one-frame flashes
    get through (a flash the model's slot dropped is no event; the tolerance stays one 30 fps frame)."""
    return make_sync_clip(folder / "clip.mp4", seconds=seconds, fps=fps, first=0.7, every=0.5).path


def streamer(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamer", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO)})


def run_live(spec: str, target: str, *, delay: float, duration: float, realtime: bool = False,
             stats: RunStats | None = None) -> dict:
    """`streamer run`'s runtime with a model that only adds ``delay`` seconds a frame; the stats snapshot."""
    source = open_source(spec, realtime=realtime)
    worker = GpuWorker(PassthroughPipeline(delay=delay))
    try:
        return Runtime(source, [AvSink(target)], worker, duration=duration, stats=stats).run()
    finally:
        worker.close()
        source.close()


def assert_in_sync(report: SyncReport, *, events: int) -> None:
    assert report.events >= events, report.summary()
    assert report.max_abs_offset <= FRAME, (report.summary(), report.offsets)
    assert report.longest_audio_gap <= FRAME, report.summary()


class UdpReader:
    """Reads a UDP MPEG-TS stream on a thread (started before the sender) until it stops for 3 s."""

    def __init__(self, port: int) -> None:
        self.url = f"udp://127.0.0.1:{port}"
        self.report: SyncReport | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        time.sleep(0.3)

    def _read(self) -> None:
        try:
            self.report = measure_file(self.url, options=UDP_OPTIONS, timeout=(90, 3))
        except BaseException as exc:  # noqa: BLE001 - reported by result()
            self.error = exc

    def result(self) -> SyncReport:
        self._thread.join(120)
        assert self.error is None, self.error
        assert self.report is not None, "the UDP reader did not finish"
        return self.report


@pytest.fixture(params=[30.0])
def rtsp_clip(request: pytest.FixtureRequest, tmp_path: Path, start_server: StartServer) -> str:
    port = free_port()
    start_server(port, "--clip", str(sync_clip(tmp_path, seconds=16, fps=request.param)))
    return f"rtsp://127.0.0.1:{port}/test"


def test_run_keeps_a_files_audio(tmp_path: Path) -> None:
    """`run --source clip.mp4 --sink out.mp4` used to warn and drop the sound."""
    clip = sync_clip(tmp_path, seconds=3)
    out = tmp_path / "out.mp4"
    done = streamer("run", "--source", str(clip), "--sink", str(out), "--preset", "analytic", "--stats",
                    str(tmp_path / "stats.json"))
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr
    assert_in_sync(measure_file(out), events=5)
    audio = json.loads((tmp_path / "stats.json").read_text())["audio"]
    assert audio["packets_in"] == audio["packets_out"] > 100


@pytest.mark.parametrize("rtsp_clip", [10.0], indirect=True)
def test_rtsp_to_file_with_the_tiny_preset(tmp_path: Path, rtsp_clip: str) -> None:
    out = tmp_path / "out.mp4"
    done = streamer("run", "--source", rtsp_clip, "--sink", str(out), "--preset", "tiny", "--duration", "12")
    assert done.returncode == 0, done.stderr
    assert_in_sync(measure_file(out), events=TINY_EVENTS)


def test_rtsp_to_file_behind_a_slow_model_drops_video_not_audio(tmp_path: Path, rtsp_clip: str) -> None:
    out = tmp_path / "out.mp4"
    run_stats = RunStats()
    stats = run_live(rtsp_clip, str(out), delay=SLOW_MODEL_S, duration=6, stats=run_stats)
    assert stats["dropped"] > 20, stats
    audio = stats["audio"]
    assert audio["packets_out"] == audio["packets_in"] > 200 and audio["dropped_in_source"] == 0, audio
    assert audio["delay_ms"] >= SLOW_MODEL_S * 1000 * 0.8, audio  # it waited for its video
    assert abs(audio["sinks"][f"av:{out}"]["av_offset_ms"]) <= FRAME * 1000, audio
    assert stats["video_delay_ms"] >= SLOW_MODEL_S * 1000 * 0.8, stats  # what OBS's Sync Offset is set to
    assert_in_sync(measure_file(out), events=4)
    # The same numbers on /metrics (one exporter for run and serve) and the status line.
    metrics = exposition(run_stats)
    assert f'streamer_audio_packets_total{{direction="in"}} {audio["packets_in"]}' in metrics
    assert f'streamer_audio_packets_total{{direction="out"}} {audio["packets_out"]}' in metrics
    for name in ("streamer_video_delay_seconds ", "streamer_audio_delay_seconds ", "streamer_av_offset_seconds{sink="):
        assert name in metrics
    assert "video delay" in run_stats.status_line() and "audio" in run_stats.status_line()


@pytest.mark.parametrize("rtsp_clip", [10.0], indirect=True)
def test_rtsp_to_udp_with_the_tiny_preset(tmp_path: Path, rtsp_clip: str) -> None:
    port = free_port()
    reader = UdpReader(port)
    done = streamer("run", "--source", rtsp_clip, "--sink", f"udp://127.0.0.1:{port}", "--preset", "tiny",
                    "--duration", "12")
    assert done.returncode == 0, done.stderr
    assert_in_sync(reader.result(), events=TINY_EVENTS)


def test_rtsp_to_udp_behind_a_slow_model(tmp_path: Path, rtsp_clip: str) -> None:
    port = free_port()
    reader = UdpReader(port)
    stats = run_live(rtsp_clip, f"udp://127.0.0.1:{port}", delay=SLOW_MODEL_S, duration=6)
    assert stats["dropped"] > 20, stats
    assert_in_sync(reader.result(), events=4)


def test_realtime_file_to_file_with_the_tiny_preset(tmp_path: Path) -> None:
    clip = sync_clip(tmp_path, seconds=12, fps=10)  # the model's first calls are slow: most events come later
    out = tmp_path / "out.mkv"
    done = streamer("run", "--source", str(clip), "--realtime", "--sink", str(out), "--preset", "tiny")
    assert done.returncode == 0, done.stderr
    assert_in_sync(measure_file(out), events=TINY_EVENTS)


def test_realtime_file_behind_a_slow_model_into_webm_transcodes_the_audio(tmp_path: Path) -> None:
    """AAC cannot go into WebM: the live path transcodes it to Opus, still in sync."""
    clip = sync_clip(tmp_path, seconds=8)  # ~15 flashes: about half pass a model at 20 fps
    out = tmp_path / "out.webm"
    stats = run_live(str(clip), str(out), delay=SLOW_MODEL_S, duration=30, realtime=True)
    assert stats["dropped"] > 10, stats
    import av

    with av.open(str(out)) as container:
        assert container.streams.audio[0].codec_context.name == "opus"
    assert_in_sync(measure_file(out), events=4)


def test_a_reconnect_keeps_audio_on_the_videos_clock(tmp_path: Path, start_server: StartServer) -> None:
    """The RTSP server dies and comes back (its clip starts over, as a restarted camera's clock does): audio
    after the reconnect is placed on the continued video clock, so every event is in sync on both sides and
    the audio never overlaps itself; its one gap is the outage, which the video fills with "no signal"."""
    clip = sync_clip(tmp_path)
    port = free_port()
    server = start_server(port, "--clip", str(clip))
    out = tmp_path / "out.mp4"
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(
        run_live(f"rtsp://127.0.0.1:{port}/test", str(out), delay=0.0, duration=10)))
    runner.start()
    time.sleep(4)
    server.kill()
    server.wait(10)
    outage = time.monotonic()
    time.sleep(0.5)
    start_server(port, "--clip", str(clip))
    runner.join(60)
    outage = time.monotonic() - outage
    assert result["reconnects"] >= 1, result
    video, audio = decoded(out)
    report = measure(video, audio)
    assert report.events >= 10 and report.max_abs_offset <= FRAME, (report.summary(), report.offsets)
    spans = sorted((start, start + len(samples) / rate) for start, samples, rate in audio)
    gaps = [b[0] - a[1] for a, b in zip(spans, spans[1:], strict=False)]
    assert min(gaps) >= -0.002, "audio overlaps itself"
    assert len([gap for gap in gaps if gap > FRAME]) <= 1 and max(gaps) <= outage + 3.0, sorted(gaps)[-3:]


def test_a_sink_without_audio_gets_a_note_on_the_sync_offset(tmp_path: Path) -> None:
    """A virtual camera carries no sound: `run` says where the video's delay is reported (for OBS's Sync
    Offset). This machine has no v4l2loopback device, so the run then stops with the usual one-line error."""
    clip = sync_clip(tmp_path, seconds=1)
    done = streamer("run", "--source", str(clip), "--sink", "virtualcam", "--preset", "passthrough")
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("streamer: note: virtualcam carries no audio") and "Sync Offset" in lines[0], lines
    assert done.returncode == 2 and lines[1].startswith("streamer: error: virtual camera"), lines
