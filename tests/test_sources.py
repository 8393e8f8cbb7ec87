"""open_source: which source each spec gives, files (fast, real time, looped), a live pipe, bad inputs."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import free_port

from streamer.sources import SourceError, SourceTimeout, open_source
from streamer.sources.files import FileSource, PipeSource, RealtimeFileSource
from streamer.sources.network import NetworkSource
from streamer.sources.webcam import WebcamSource

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg CLI not installed (apt-get install ffmpeg)")


def make_clip(path: Path, frames: int = 30, fps: int = 30, size: tuple[int, int] = (160, 96)) -> Path:
    """An H.264 MP4 whose frame i is filled with gray level 8*i (so order can be checked)."""
    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "10"}
        for i in range(frames):
            image = np.full((height, width, 3), (8 * i) % 256, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("media") / "clip.mp4")


# ---------------------------------------------------------------------------------------------------------
# Which source a spec gives


@pytest.mark.parametrize(
    "spec",
    ["rtsp://127.0.0.1:8554/cam", "rtsps://127.0.0.1/x", "http://127.0.0.1:8080/mjpeg",
     "https://127.0.0.1/live.m3u8", "srt://127.0.0.1:9000", "udp://127.0.0.1:1234", "rtmp://127.0.0.1/live/x"],
)
def test_network_specs_give_network_sources(spec: str) -> None:
    source = open_source(spec, transport="udp", timeout=3.0)
    assert isinstance(source, NetworkSource)
    assert (source.url, source.timeout, source.live) == (spec, 3.0, True)


@pytest.mark.parametrize("spec", ["webcam", "webcam:0", "webcam:2", "/dev/video0"])
def test_camera_specs_give_webcam_sources(spec: str) -> None:
    assert isinstance(open_source(spec, width=640, height=480, fps=30), WebcamSource)


def test_testsrc_spec_sets_size_and_rate() -> None:
    source = open_source("testsrc:320x240@15")
    assert type(source).__name__ == "TestSource"
    assert (source.width, source.height, source.fps) == (320, 240, 15.0)
    default = open_source("testsrc", width=128, height=96)
    assert (default.width, default.height, default.fps) == (128, 96, 30.0)


def test_file_specs(clip: Path, tmp_path: Path) -> None:
    assert isinstance(open_source(str(clip)), FileSource)
    assert isinstance(open_source(f"file://{clip}"), FileSource)
    assert isinstance(open_source(str(clip), realtime=True), RealtimeFileSource)
    fifo = tmp_path / "live.mjpeg"
    os.mkfifo(fifo)
    assert isinstance(open_source(str(fifo)), PipeSource)
    assert isinstance(open_source("pipe:"), PipeSource)


# ---------------------------------------------------------------------------------------------------------
# Files


def test_file_reads_every_frame_in_order(clip: Path) -> None:
    with open_source(str(clip)) as source:
        assert source.live is False and source.fps == pytest.approx(30)
        frames = []
        while (frame := source.read()) is not None:
            frames.append(frame)
        assert source.read() is None  # stays ended
    assert len(frames) == 30
    assert [f.index for f in frames] == list(range(30))
    levels = [int(f.image.mean()) for f in frames]
    assert all(abs(level - 8 * i) <= 3 for i, level in enumerate(levels)), levels
    pts = [f.pts for f in frames]
    assert all(b > a for a, b in zip(pts, pts[1:], strict=False))
    assert float((pts[-1] - pts[0]) * frames[0].time_base) == pytest.approx(29 / 30, abs=1e-3)


def test_file_scaled_on_read(clip: Path) -> None:
    with open_source(str(clip), width=80, height=48) as source:
        assert source.read().image.shape == (48, 80, 3)


def test_realtime_file_paces_at_its_rate(clip: Path) -> None:
    with open_source(str(clip), realtime=True) as source:
        assert source.live
        started = time.monotonic()
        frames = []
        while (frame := source.read(timeout=2.0)) is not None:
            frames.append(frame)
        elapsed = time.monotonic() - started
    # 30 frames at 30 fps: the last one is due 29/30 s after the first (read right after open).
    assert 0.8 < elapsed < 1.6, f"30 frames at 30 fps took {elapsed:.2f} s"
    assert len(frames) >= 25, "a reader this fast should get nearly every frame"
    spacing = np.median(np.diff([f.capture_time for f in frames]))
    assert spacing == pytest.approx(1 / 30, abs=0.01)


def test_realtime_loop_keeps_going_with_increasing_pts(clip: Path) -> None:
    with open_source(str(clip), realtime=True, loop=True) as source:
        frames = []
        end = time.monotonic() + 2.3
        while time.monotonic() < end:
            frames.append(source.read(timeout=2.0))
    assert len(frames) >= 55, "2.3 s of a looped 1 s clip at 30 fps"
    seconds = [f.seconds for f in frames]
    assert all(b > a for a, b in zip(seconds, seconds[1:], strict=False)), "pts increase across loops"
    assert seconds[-1] - seconds[0] > 2.0
    # The picture really started over: gray level falls back to the first frame's.
    levels = [int(f.image.mean()) for f in frames]
    assert min(levels[35:]) < 10 and max(levels) > 200


def test_fast_loop_never_drops_and_keeps_pts_increasing(clip: Path) -> None:
    with open_source(str(clip), loop=True) as source:
        frames = [source.read() for _ in range(75)]
    assert all(f is not None for f in frames)
    levels = [int(f.image.mean()) for f in frames]
    assert all(abs(level - 8 * (i % 30)) <= 3 for i, level in enumerate(levels))
    pts = [f.pts for f in frames]
    assert all(b > a for a, b in zip(pts, pts[1:], strict=False))
    steps = set(np.diff(pts))
    assert len(steps) == 1, f"the loop joins with one frame's step, got steps {steps}"


# ---------------------------------------------------------------------------------------------------------
# A live, unseekable pipe


@pytest.fixture
def ffmpeg_into_fifo(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen]]:
    fifo = tmp_path / "camera.mjpeg"
    os.mkfifo(fifo)
    proc = subprocess.Popen(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30",
         "-t", "30", "-f", "mjpeg", "-q:v", "5", "-y", str(fifo)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        yield fifo, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


@needs_ffmpeg
def test_fifo_is_read_live_and_ends_with_its_writer(ffmpeg_into_fifo: tuple[Path, subprocess.Popen]) -> None:
    fifo, writer = ffmpeg_into_fifo
    source = open_source(str(fifo), timeout=5.0)
    started = time.monotonic()
    with source:
        first_s = time.monotonic() - started
        frames = [source.read(timeout=3.0) for _ in range(30)]
        writer.send_signal(signal.SIGINT)  # ffmpeg finishes the file and closes the pipe
        writer.wait(timeout=10)
        ended = None
        for _ in range(200):
            try:
                if source.read(timeout=0.5) is None:
                    ended = True
                    break
            except SourceTimeout:
                continue
    assert first_s < 3.0, f"probing a live pipe took {first_s:.1f} s"
    assert all(f is not None and f.image.shape == (240, 320, 3) for f in frames)
    spacing = np.median(np.diff([f.capture_time for f in frames]))
    assert spacing == pytest.approx(1 / 30, abs=0.015), "frames arrive at the writer's live pace"
    # Raw MJPEG has no timestamps: pts come from the capture clock, not FFmpeg's invented 25 fps.
    pts_step = np.median(np.diff([f.seconds for f in frames]))
    assert pts_step == pytest.approx(1 / 30, abs=0.005)
    assert ended, "read() returns None once the writer closed the pipe"


def test_fifo_without_writer_fails_within_timeout(tmp_path: Path) -> None:
    fifo = tmp_path / "nobody.mjpeg"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(SourceError, match="nothing was written") as error:
        open_source(str(fifo), timeout=1.0).open()
    assert time.monotonic() - started < 5
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------------------------------------------------
# Bad inputs: one line, quickly


@pytest.fixture
def silent_tcp_server() -> Iterator[int]:
    """A TCP server on 127.0.0.1 that accepts connections and never sends a byte."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        server.close()


def assert_one_line_error(spec: str, match: str, **kwargs: object) -> str:
    started = time.monotonic()
    with pytest.raises(SourceError, match=match) as error:
        source = open_source(spec, **kwargs)
        try:
            source.open()
        finally:
            source.close()
    elapsed = time.monotonic() - started
    message = str(error.value)
    assert "\n" not in message and message.strip() == message and message
    assert elapsed < 15, f"{spec}: took {elapsed:.1f} s to fail"
    return message


def test_missing_file(tmp_path: Path) -> None:
    assert_one_line_error(str(tmp_path / "nope.mp4"), "no such file")


def test_not_a_video_file(tmp_path: Path) -> None:
    junk = tmp_path / "notes.mp4"
    junk.write_text("not a video")
    assert_one_line_error(str(junk), "cannot read .*notes.mp4")


def test_missing_camera() -> None:
    message = assert_one_line_error("/dev/video9", "no camera at /dev/video9")
    assert "v4l2-ctl --list-devices" in message
    assert_one_line_error("webcam:9", "no camera at /dev/video9")
    assert_one_line_error("webcam:front", "use webcam:N")


@pytest.mark.parametrize("spec", ["ftp://127.0.0.1/x.mp4", "foo:bar", ""])
def test_unsupported_spec(spec: str) -> None:
    message = assert_one_line_error(spec, "rtsp://")
    assert "webcam:N" in message and "testsrc" in message


def test_refused_host() -> None:
    port = free_port()
    assert_one_line_error(f"rtsp://127.0.0.1:{port}/x", f"cannot open rtsp://127.0.0.1:{port}/x: Connection refused")


def test_server_that_never_answers(silent_tcp_server: int) -> None:
    url = f"rtsp://127.0.0.1:{silent_tcp_server}/x"
    message = assert_one_line_error(url, f"cannot open {url}: no answer within 5 s")
    assert url in message


def test_bad_transport() -> None:
    with pytest.raises(SourceError, match="use tcp or udp"):
        open_source("rtsp://127.0.0.1/x", transport="http")


def test_read_before_open_and_after_close(clip: Path) -> None:
    source = open_source(str(clip), realtime=True)
    with pytest.raises(SourceError, match="before open"):
        source.read()
    source.open()
    source.close()
    # At most the frame already waiting, then the end: a closed source never blocks or raises.
    after_close = [source.read(timeout=0.5) for _ in range(2)]
    assert after_close[-1] is None


# ---------------------------------------------------------------------------------------------------------
# Network streams other than RTSP (RTSP has its own file), sent by ffmpeg on 127.0.0.1


@pytest.fixture
def ffmpeg_sender() -> Iterator[list[subprocess.Popen]]:
    procs: list[subprocess.Popen] = []
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


LAVFI_INPUT = ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-f", "lavfi", "-i",
               "testsrc2=size=320x240:rate=30", "-t", "30"]


@needs_ffmpeg
def test_http_mjpeg_stream(ffmpeg_sender: list[subprocess.Popen]) -> None:
    url = f"http://127.0.0.1:{free_port()}/cam.mjpg"
    ffmpeg_sender.append(subprocess.Popen(
        [*LAVFI_INPUT, "-f", "mpjpeg", "-q:v", "5", "-listen", "1", url],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    ))
    deadline = time.monotonic() + 10
    while True:  # ffmpeg serves one client, so wait for it to listen by retrying the open itself
        source = open_source(url, timeout=3.0)
        try:
            source.open()
            break
        except SourceError as error:
            if "refused" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    with source:
        frames = [source.read(timeout=3.0) for _ in range(20)]
    assert all(f.image.shape == (240, 320, 3) for f in frames)
    assert np.median(np.diff([f.seconds for f in frames])) == pytest.approx(1 / 30, abs=0.01)


@needs_ffmpeg
def test_udp_mpegts_stream(ffmpeg_sender: list[subprocess.Popen]) -> None:
    url = f"udp://127.0.0.1:{free_port()}"
    ffmpeg_sender.append(subprocess.Popen(
        [*LAVFI_INPUT, "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "30",
         "-f", "mpegts", f"{url}?pkt_size=1316"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    ))
    with open_source(url, timeout=5.0) as source:
        frames = [source.read(timeout=3.0) for _ in range(20)]
    assert all(f.image.shape == (240, 320, 3) for f in frames)
    assert frames[0].time_base == Fraction(1, 90_000)
    pts_steps = np.diff([f.pts for f in frames])
    assert np.median(pts_steps) == 3000, "MPEG-TS pts are kept (90 kHz, 30 fps)"
