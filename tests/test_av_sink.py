"""AvSink: real encoded files and real network streams on 127.0.0.1, read back with PyAV or ffmpeg."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import free_port
from media import pattern_frame, probe

from streamer.media.frames import Frame
from streamer.sinks.av_sink import AvSink
from streamer.sinks.base import SinkError


def frame(index: int, pts: int | None, *, size: tuple[int, int] = (160, 96), tb: Fraction = Fraction(1, 1000),
          capture: float | None = None) -> Frame:
    image = pattern_frame(index, *size)
    return Frame(image, pts=pts, time_base=tb, capture_time=time.monotonic() if capture is None else capture,
                 index=index)


def test_file_keeps_pts_in_copy_mode(tmp_path: Path) -> None:
    pts = [0, 33, 90, 100, 250, 251, 400]  # variable frame rate, ms
    out = tmp_path / "vfr.mp4"
    sink = AvSink(str(out))
    sink.open(160, 96, 30, time_base=Fraction(1, 1000))
    for i, p in enumerate(pts):
        sink.write(frame(i, p))
    sink.close()
    info = probe(out)
    assert (info.width, info.height) == (160, 96)
    assert [round(s * 1000) for s in info.video_seconds] == pts


def test_live_timing_starts_at_zero_and_never_goes_back(tmp_path: Path) -> None:
    """Source pts far from zero, a repeated pts, a clock reset and frames without pts all give a valid,
    strictly increasing timeline."""
    out = tmp_path / "live.mkv"
    t0 = 1000.0
    frames = [
        frame(0, 50_000, capture=t0), frame(1, 50_040, capture=t0 + 0.04),
        frame(2, 50_040, capture=t0 + 0.08),  # repeated pts -> from capture time
        frame(3, 10, capture=t0 + 0.12),  # source restarted its clock -> from capture time
        frame(4, 50, capture=t0 + 0.16),  # continues on the new clock, 40 ms later
        frame(5, None, capture=t0 + 0.20),  # no pts -> one frame period later
    ]
    with AvSink(str(out)) as sink:
        sink.open(160, 96, 25)
        for f in frames:
            sink.write(f)
    seconds = probe(out).video_seconds
    assert len(seconds) == 6
    assert seconds[0] == pytest.approx(0.0, abs=0.002)
    assert seconds[1] == pytest.approx(0.040, abs=0.002)
    assert all(b > a for a, b in zip(seconds, seconds[1:], strict=False))
    assert seconds[2] == pytest.approx(0.080, abs=0.002)
    assert seconds[3] == pytest.approx(0.120, abs=0.002)
    assert seconds[4] == pytest.approx(0.160, abs=0.002)
    assert seconds[5] == pytest.approx(0.200, abs=0.002)


def test_odd_size_becomes_even_yuv420p_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "odd.mp4"
    with AvSink(str(out)) as sink:
        sink.open(161, 97, 30)
        for i in range(5):
            sink.write(frame(i, i, size=(161, 97), tb=Fraction(1, 30)))
    assert (sink.width, sink.height) == (160, 96)
    info = probe(out)
    assert (info.width, info.height, info.frames) == (160, 96, 5)
    with av.open(str(out)) as container:  # yuv444p H.264 would not play in browsers or QuickTime
        assert container.streams.video[0].codec_context.pix_fmt == "yuv420p"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "161x97" in warnings[0] and "160x96" in warnings[0]


def test_interrupted_writer_still_leaves_a_playable_file(tmp_path: Path) -> None:
    out = tmp_path / "cut.mp4"
    with pytest.raises(KeyboardInterrupt), AvSink(str(out)) as sink:
        sink.open(160, 96, 30)
        for i in range(100):
            sink.write(frame(i, i, tb=Fraction(1, 30)))
            if i == 20:
                raise KeyboardInterrupt
    assert probe(out).frames == 21


@pytest.mark.parametrize("target, message", [
    ("{tmp}/missing/out.mp4", "does not exist"),
    ("{tmp}/out.unknownext", "extension .unknownext"),
    ("{tmp}", "is a folder"),
])
def test_bad_file_targets_say_what_is_wrong(tmp_path: Path, target: str, message: str) -> None:
    with pytest.raises(SinkError, match=message) as err:
        AvSink(target.format(tmp=tmp_path)).open(64, 64, 30)
    assert "\n" not in str(err.value)


def test_bad_codec_says_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(SinkError, match="unknown encoder 'nope264'"):
        AvSink(str(tmp_path / "a.mp4"), codec="nope264").open(64, 64, 30)
    with pytest.raises(SinkError, match="webm"):
        AvSink(str(tmp_path / "a.webm"), codec="libx264").open(64, 64, 30)  # webm takes no H.264
    assert not (tmp_path / "a.webm").exists() or (tmp_path / "a.webm").stat().st_size == 0


def _read_stream(url: str, want: int, result: dict, options: dict[str, str], fmt: str | None) -> None:
    """Reader thread: decode up to ``want`` frames; every wait is bounded by timeouts."""
    try:
        with av.open(url, format=fmt, options=options, timeout=(10, 5)) as container:
            for f in container.decode(video=0):
                result.setdefault("sizes", []).append((f.width, f.height))
                if len(result["sizes"]) >= want:
                    break
    except Exception as exc:  # reported to the test thread
        result["error"] = exc


def _write_until(sink: AvSink, reader: threading.Thread, *, size: tuple[int, int], seconds: float) -> int:
    """Write frames at ~50 fps until the reader has what it wants or time runs out."""
    deadline = time.monotonic() + seconds
    i = 0
    while reader.is_alive() and time.monotonic() < deadline:
        sink.write(frame(i, None, size=size))
        i += 1
        time.sleep(0.02)
    return i


@pytest.mark.slow
def test_udp_stream_arrives(tmp_path: Path) -> None:
    port = free_port(socket.SOCK_DGRAM)
    result: dict = {}
    # The reader listens first: UDP has no connection, packets sent before it binds are lost.
    reader = threading.Thread(
        target=_read_stream, daemon=True,
        args=(f"udp://127.0.0.1:{port}?timeout=5000000&fifo_size=100000", 10, result,
              {"probesize": "500000", "analyzeduration": "1000000"}, "mpegts"))
    reader.start()
    time.sleep(0.3)
    sink = AvSink(f"udp://127.0.0.1:{port}?pkt_size=1316")
    try:
        sink.open(320, 180, 30)
        assert sink.low_latency
        _write_until(sink, reader, size=(320, 180), seconds=20)
    finally:
        sink.close()
        reader.join(timeout=15)
    assert not reader.is_alive()
    assert "error" not in result, result.get("error")
    assert len(result["sizes"]) >= 10
    assert set(result["sizes"]) == {(320, 180)}


@pytest.mark.slow
def test_srt_stream_arrives_or_says_srt_is_missing(tmp_path: Path) -> None:
    port = free_port(socket.SOCK_DGRAM)
    sink = AvSink(f"srt://127.0.0.1:{port}?mode=listener")
    result: dict = {}
    reader = threading.Thread(
        target=_read_stream, daemon=True,
        args=(f"srt://127.0.0.1:{port}?mode=caller", 10, result, {}, "mpegts"))
    # Listener opens (blocks until the caller connects), so start the caller a moment later in a thread.
    timer = threading.Timer(0.5, reader.start)
    timer.start()
    try:
        try:
            sink.open(320, 180, 30)
        except SinkError as exc:
            if "no SRT support" not in str(exc):
                raise
            assert "\n" not in str(exc) and "udp://" in str(exc)
            return  # this av wheel has no libsrt: the message says so and what to use instead
        _write_until(sink, reader, size=(320, 180), seconds=20)
        reader.join(timeout=15)
        assert "error" not in result, result.get("error")
        assert set(result["sizes"]) == {(320, 180)}
    finally:
        timer.cancel()
        sink.close()
        if reader.is_alive():
            reader.join(timeout=15)


FFMPEG = shutil.which("ffmpeg")


def open_when_listening(sink: AvSink, seconds: float = 10.0, size: tuple[int, int] = (320, 180)) -> None:
    """Open a publishing sink once the listener subprocess has bound its port."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            sink.open(*size, 30)
            return
        except SinkError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.skipif(FFMPEG is None, reason="needs the ffmpeg program as an RTSP listener")
def test_rtsp_publish_arrives_and_a_dead_server_gives_an_error(tmp_path: Path) -> None:
    port = free_port()
    received = tmp_path / "received.mkv"
    assert FFMPEG is not None
    server = subprocess.Popen(
        [FFMPEG, "-hide_banner", "-loglevel", "error", "-rtsp_flags", "listen", "-timeout", "20",
         "-i", f"rtsp://127.0.0.1:{port}/live", "-c", "copy", "-frames:v", "20", "-y", str(received)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sink = AvSink(f"rtsp://127.0.0.1:{port}/live")
    try:
        open_when_listening(sink)
        started = time.monotonic()
        # The server records 20 frames and hangs up: the peer disappears mid-stream.
        with pytest.raises(SinkError, match="broke") as err:
            for i in range(3000):
                sink.write(frame(i, None, size=(320, 180)))
                time.sleep(0.01)
        assert time.monotonic() - started < 20
        assert "\n" not in str(err.value)
    finally:
        try:
            sink.close()
        except SinkError:
            pass
        if server.poll() is None:
            server.kill()
            server.wait(timeout=10)
    info = probe(received)
    assert info.frames > 0
    assert (info.width, info.height) == (320, 180)


def test_write_before_open_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SinkError, match="before open"):
        AvSink(str(tmp_path / "x.mp4")).write(Frame(np.zeros((8, 8, 3), np.uint8)))


@pytest.mark.slow
def test_rtsp_server_that_never_answers_fails_open_in_seconds() -> None:
    with socket.socket() as listener:  # accepts TCP connections (backlog) but never says a word
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(SinkError, match="cannot stream to .*RTSP server") as err:
            AvSink(f"rtsp://127.0.0.1:{port}/live").open(320, 180, 30)
        assert time.monotonic() - started < 15
        assert "\n" not in str(err.value)


@pytest.mark.slow
@pytest.mark.skipif(FFMPEG is None, reason="needs the ffmpeg program as an RTSP listener")
def test_rtsp_receiver_that_stops_reading_does_not_block_forever(tmp_path: Path) -> None:
    port = free_port()
    assert FFMPEG is not None
    server = subprocess.Popen(
        [FFMPEG, "-hide_banner", "-loglevel", "error", "-rtsp_flags", "listen", "-timeout", "20",
         "-i", f"rtsp://127.0.0.1:{port}/live", "-c", "copy", "-f", "null", "-"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sink = AvSink(f"rtsp://127.0.0.1:{port}/live")
    try:
        open_when_listening(sink, size=(640, 360))
        server.send_signal(signal.SIGSTOP)  # alive but not reading: TCP buffers fill, writes block
        started = time.monotonic()
        with pytest.raises(SinkError, match="stopped reading") as err:
            for i in range(100_000):
                sink.write(frame(i, None, size=(640, 360)))
                assert time.monotonic() - started < 60, "write() kept going without the receiver reading"
        assert time.monotonic() - started < 30
        assert "\n" not in str(err.value)
    finally:
        server.kill()  # SIGKILL also ends a stopped process
        server.wait(timeout=10)
        try:
            sink.close()
        except SinkError:
            pass


@pytest.mark.slow
def test_rtmp_publish_arrives(tmp_path: Path) -> None:
    """rtmp:// is published as FLV to a real RTMP listener (ffmpeg -listen 1) on 127.0.0.1."""
    assert FFMPEG is not None, "ffmpeg is needed as the RTMP listener"
    port = free_port()
    received = tmp_path / "received.flv"
    server = subprocess.Popen(
        [FFMPEG, "-hide_banner", "-loglevel", "error", "-listen", "1", "-timeout", "20",
         "-i", f"rtmp://127.0.0.1:{port}/live/stream", "-c", "copy", "-y", str(received)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sink = AvSink(f"rtmp://127.0.0.1:{port}/live/stream")
    try:
        open_when_listening(sink)
        for i in range(45):
            sink.write(frame(i, None, size=(320, 180)))
            time.sleep(0.01)
        sink.close()
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=10)
    info = probe(received)
    assert info.frames >= 30 and (info.width, info.height) == (320, 180)
