"""The one threaded-source base: frames converted only when taken, reconnect with backoff for network
streams and cameras alike, and a file played in real time paced by the one Pacer (re-anchored after a
stall or a pts jump). Real files, real OpenCV captures, a real process stopped with SIGSTOP."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
from media import make_clip

from pipelines.passthrough import PassthroughPipeline
from streamer.engine.runtime import Runtime
from streamer.engine.worker import GpuWorker
from streamer.media.frames import Frame
from streamer.sinks.base import Sink
from streamer.sources.base import SourceError
from streamer.sources.files import RealtimeFileSource
from streamer.sources.threaded import ThreadedSource
from streamer.sources.webcam import WebcamSource

ROOT = Path(__file__).resolve().parent.parent


class CountingRealtimeFile(RealtimeFileSource):
    """A file played in real time that counts its RGB conversions."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.conversions = 0

    def _to_rgb(self, raw):
        self.conversions += 1
        return super()._to_rgb(raw)


class CountingSink(Sink):
    name = "count"

    def __init__(self) -> None:
        self.frames = 0

    def open(self, width: int, height: int, fps: float) -> None:
        pass

    def write(self, frame: Frame) -> None:
        self.frames += 1

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def clip30(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("media") / "clip30.mp4", seconds=4.0, fps=30, size=(160, 96))


def test_frames_dropped_before_the_model_are_never_converted(clip30: Path) -> None:
    """A 100 ms model takes a third of a 30 fps source: only the frames it takes are converted to RGB."""
    source = CountingRealtimeFile(str(clip30))
    worker = GpuWorker(PassthroughPipeline(delay=0.1))
    sink = CountingSink()
    try:
        snap = Runtime(source, [sink], worker, duration=2.5).run()
    finally:
        worker.close()
    print(f"decoded {source.frames_decoded}, converted {source.conversions}, out {snap['frames_out']}, "
          f"dropped {snap['dropped_at']}")
    assert source.frames_decoded >= 45
    assert source.conversions <= snap["frames_out"] + 2  # the frames the model got, no more
    assert source.frames_decoded >= 2 * source.conversions
    # Every frame is accounted for: out, or dropped in the source's slot before the model.
    assert snap["frames_in"] >= source.frames_decoded - 2  # all but those waiting at the end
    assert snap["dropped_at"]["source"] + snap["frames_out"] == snap["frames_in"]
    assert snap["dropped_at"]["capture"] == 0  # one slot before the model, not two


def test_serve_source_converts_nothing_nobody_takes(clip30: Path) -> None:
    """`serve --source` reads through the same slot: a feed nobody watches decodes but converts nothing."""
    from streamer.server.tracks import SourceFeed

    source = CountingRealtimeFile(str(clip30), loop=True)
    source.open()

    async def scenario() -> None:
        feed = SourceFeed(source, asyncio.get_running_loop())
        feed.start()
        try:
            await asyncio.sleep(1.0)
            assert source.frames_decoded >= 15 and source.conversions == 0
            frame, captured = await feed.get()
            assert source.conversions == 1 and captured == frame.capture_time
            assert time.monotonic() - captured < 0.5
        finally:
            await asyncio.to_thread(feed.stop)

    asyncio.run(scenario())


def test_realtime_file_does_not_wait_out_a_gap_in_its_pts(tmp_path: Path) -> None:
    """A recording with a 10 s hole in its timestamps (a paused recorder) plays on after the hole."""
    tb = Fraction(1, 10)
    clip = make_clip(tmp_path / "gap.mkv", fps=10, size=(160, 96), time_base=tb,
                     pts=[*range(10), *range(100, 110)])
    with RealtimeFileSource(str(clip), timeout=3.0) as source:
        started = time.monotonic()
        frames = []
        while (frame := source.read(timeout=3.0)) is not None:
            frames.append((time.monotonic(), frame.seconds))
        elapsed = time.monotonic() - started
        reanchored = source.pacer.reanchored
    print(f"20 frames with a 10 s pts gap played in {elapsed:.2f} s")
    assert len(frames) >= 18 and reanchored >= 1
    assert 1.4 < elapsed < 5.0
    second_half = [t for t, s in frames if s >= 10]
    assert second_half[-1] - second_half[0] > 0.6  # still paced at 10 fps after the gap


STALL_READER = """
import sys, time
from streamer.sources.files import RealtimeFileSource
with RealtimeFileSource(sys.argv[1], timeout=5.0) as source:
    while (frame := source.read(timeout=5.0)) is not None:
        print(f"{time.monotonic():.4f} {frame.seconds:.4f}", flush=True)
"""


def test_realtime_file_re_anchors_after_a_stall(tmp_path: Path) -> None:
    """The process stalls for 2 s (SIGSTOP) mid-file: play resumes where it was at the file's own rate,
    instead of rushing through the 2 s of frames that came due meanwhile."""
    clip = make_clip(tmp_path / "ten.mp4", seconds=4.0, fps=10, size=(160, 96))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    reader = subprocess.Popen([sys.executable, "-c", STALL_READER, str(clip)], stdout=subprocess.PIPE, text=True,
                              env=env, cwd=ROOT)
    lines: list[str] = []
    try:
        assert reader.stdout is not None
        while len(lines) < 8:
            line = reader.stdout.readline()
            assert line, "the reader ended early"
            lines.append(line)
        reader.send_signal(signal.SIGSTOP)
        time.sleep(2.0)
        reader.send_signal(signal.SIGCONT)
        out, _ = reader.communicate(timeout=30)
        lines += out.splitlines()
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    samples = np.array([[float(x) for x in line.split()] for line in lines if line.strip()])
    wall, seconds = samples[:, 0], samples[:, 1]
    wall_span, pts_span = wall[-1] - wall[0], seconds[-1] - seconds[0]
    print(f"{len(samples)} frames, {pts_span:.2f} s of video took {wall_span:.2f} s with a 2 s stall")
    assert pts_span > 3.0
    assert wall_span > pts_span + 1.2  # the stall was not made up for by rushing
    # After the stall no burst: a second of video still takes about a second.
    after = wall > wall[7] + 1.5
    if after.sum() >= 10:
        rate = (seconds[after][-1] - seconds[after][0]) / (wall[after][-1] - wall[after][0])
        assert rate < 1.5, f"played {rate:.1f}x real time after the stall"


class FileCamera(WebcamSource):
    """A camera whose every connection is a real OpenCV capture of a short clip, so it "unplugs" at the
    clip's end; ``plugged`` says, per connection attempt, whether the device is there (this machine has no
    /dev/video*: a real camera cannot be used)."""

    def __init__(self, clip: Path, plugged: list[bool], **kwargs) -> None:
        super().__init__("webcam:0", **kwargs)
        self.clip = clip
        self.plugged = plugged
        self.attempts: list[float] = []

    def open(self) -> None:
        ThreadedSource.open(self)  # no /dev/video0 check: the device is the clip

    def _connect(self, first: bool) -> cv2.VideoCapture:
        self.attempts.append(time.monotonic())
        attempt = len(self.attempts) - 1
        if attempt < len(self.plugged) and not self.plugged[attempt]:
            raise SourceError(f"cannot open camera {self.name}: unplugged")
        capture = cv2.VideoCapture(str(self.clip), cv2.CAP_FFMPEG)
        assert capture.isOpened()
        return capture


def test_camera_reconnects_with_backoff_through_the_one_base(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "cam.mp4", seconds=0.5, fps=30, size=(160, 96))
    # Connection 1 delivers the clip then drops; 2 and 3 find no device; 4 and later work again.
    camera = FileCamera(clip, [True, False, False, True], timeout=3.0)
    camera.open()
    frames = []
    try:
        deadline = time.monotonic() + 15
        while camera.reconnects < 2 and time.monotonic() < deadline:
            try:
                frames.append(camera.read(timeout=3.0))
            except SourceError:
                continue
    finally:
        camera.close()
    gaps = np.diff(camera.attempts[:5])
    print(f"attempt gaps {np.round(gaps, 2)}, reconnects {camera.reconnects}, frames {len(frames)}")
    assert camera.reconnects >= 2
    # Backoff doubles while the device is missing and starts over once frames came back.
    for gap, nominal in zip(gaps, (0.5, 1.0, 2.0, 0.5), strict=True):
        assert nominal - 0.05 <= gap <= nominal + 0.8
    pts = [f.pts for f in frames if f is not None]
    assert all(b > a for a, b in zip(pts, pts[1:], strict=False))
    assert frames[0].image.shape == (96, 160, 3)


def test_camera_that_cannot_open_fails_in_one_line(tmp_path: Path) -> None:
    camera = FileCamera(tmp_path / "none.mp4", [False])
    with pytest.raises(SourceError, match=r"^cannot open camera webcam:0: unplugged$"):
        camera.open()
    camera.close()
