"""`streamer file` and stylize_file on real clips made in tmp_path: frames, timing, audio, damage, Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from media import (
    AAC_FRAME_SAMPLES,
    AUDIO_RATE,
    corrupt_copy,
    decode_frames,
    make_audio_only,
    make_clip,
    probe,
    truncate_copy,
    wait_for_partial,
    write_garbage,
)

from pipelines.frames import FramePipeline
from pipelines.passthrough import PassthroughPipeline
from streamer.engine.file_job import stylize_file
from streamer.sources.base import SourceError

ONE_AUDIO_FRAME = AAC_FRAME_SAMPLES / AUDIO_RATE


def streamer(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run the real CLI as a subprocess."""
    return subprocess.run([sys.executable, "-m", "streamer", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


class InvertPipeline(FramePipeline):
    """A FramePipeline that visibly changes pixels; records the batch sizes it saw."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, frames: np.ndarray, stream_ids: Sequence[str] | None = None) -> np.ndarray:
        self.batches.append(len(frames))
        return 255 - frames

    def update(self, stream_id: str = "default", **params: Any) -> None:
        pass

    def remove_stream(self, stream_id: str) -> None:
        pass


@pytest.fixture(scope="module")
def clip_with_audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 s, 640x360, 30 fps H.264 with AAC audio."""
    return make_clip(tmp_path_factory.mktemp("media") / "clip.mp4", seconds=10, fps=30, size=(640, 360),
                     audio=True)


def assert_same_timing(src: Path, out: Path, *, exact: bool = True) -> None:
    """Same frames at the same times, audio of the same length starting at the same offset from video.

    ``exact=False`` allows one shift of the whole file: Matroska cannot store the negative start of
    AAC priming that MP4 has, so its muxer moves every stream by the same amount.
    """
    a, b = probe(src), probe(out)
    assert b.frames == a.frames
    if exact:
        assert b.video_pts == a.video_pts and b.video_time_base == a.video_time_base
    shift = b.video_start - a.video_start
    tick = 1e-6 if exact else 0.001  # Matroska counts milliseconds
    assert b.video_seconds == pytest.approx([t + shift for t in a.video_seconds], abs=tick)
    assert b.audio_codec == a.audio_codec == "aac"
    assert b.audio_packets == a.audio_packets
    assert abs(b.audio_duration - a.audio_duration) <= ONE_AUDIO_FRAME
    # A/V start aligned: the offset between the first video frame and the first audio sample is unchanged.
    assert (b.video_start - b.audio_start) == pytest.approx(a.video_start - a.audio_start, abs=0.001)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["passthrough", "tiny"])
def test_cli_keeps_every_frame_pts_and_audio(clip_with_audio: Path, tmp_path: Path, preset: str) -> None:
    out = tmp_path / "out.mp4"
    done = streamer("file", str(clip_with_audio), str(out), "--preset", preset, "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "300 frames" in done.stderr and "decode" in done.stderr and "fps" in done.stderr
    assert_same_timing(clip_with_audio, out)
    info = probe(out)
    assert (info.width, info.height) == (640, 360)


def test_library_with_a_pixel_changing_pipeline(clip_with_audio: Path, tmp_path: Path) -> None:
    out = tmp_path / "inverted.mp4"
    pipeline = InvertPipeline()
    summary = stylize_file(clip_with_audio, out, pipeline, batch=4)
    assert summary.frames == 300 and not summary.interrupted and summary.problem() is None
    assert set(pipeline.batches) == {4}
    assert_same_timing(clip_with_audio, out)
    assert summary.audio_packets == probe(out).audio_packets
    source, result = decode_frames(clip_with_audio, limit=3), decode_frames(out, limit=3)
    for a, b in zip(source, result, strict=True):
        # Inverted up to compression error.
        assert np.abs((255 - a.astype(int)) - b.astype(int)).mean() < 6


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_variable_frame_rate_keeps_pts(tmp_path: Path, suffix: str) -> None:
    pts = [0, 40, 80, 200, 210, 230, 500, 530, 1000, 1010, 1020]  # ms; 11 frames, not a batch multiple
    src = make_clip(tmp_path / f"vfr{suffix}", pts=pts, time_base=Fraction(1, 1000), size=(320, 240))
    out = tmp_path / f"out{suffix}"
    summary = stylize_file(src, out, InvertPipeline(), batch=4)
    assert summary.frames == len(pts)
    assert probe(out).video_seconds == pytest.approx(probe(src).video_seconds, abs=1e-6)
    assert [round(s * 1000) for s in probe(out).video_seconds] == pts


def test_odd_size_is_rounded_to_even_and_size_option_scales(tmp_path: Path) -> None:
    src = make_clip(tmp_path / "odd.mkv", seconds=0.5, size=(321, 241))
    kept = stylize_file(src, tmp_path / "kept.mp4", PassthroughPipeline())
    info = probe(tmp_path / "kept.mp4")
    assert (info.width, info.height, info.frames) == (320, 240, 15) and kept.width == 320
    done = streamer("file", str(src), str(tmp_path / "small.mp4"), "--preset", "passthrough",
                    "--size", "160x120", "--no-progress")
    assert done.returncode == 0, done.stderr
    info = probe(tmp_path / "small.mp4")
    assert (info.width, info.height, info.frames) == (160, 120, 15)


def test_truncated_input_keeps_decodable_frames_and_warns(tmp_path: Path) -> None:
    full = make_clip(tmp_path / "full.mp4", seconds=4, size=(320, 240), audio=True, faststart=True)
    cut = truncate_copy(full, tmp_path / "cut.mp4", keep=0.6)
    done = streamer("file", str(cut), str(tmp_path / "out.mp4"), "--preset", "passthrough", "--no-progress")
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "cut short" in warnings[0] and "of about 120 frames" in warnings[0]
    frames = probe(tmp_path / "out.mp4").frames
    assert 30 < frames < 120
    assert f"{frames} of about 120" in warnings[0]


def test_mp4_into_mkv_keeps_timing_and_sync(clip_with_audio: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.mkv"
    stylize_file(clip_with_audio, out, PassthroughPipeline(), batch=3)
    assert_same_timing(clip_with_audio, out, exact=False)


def test_corrupt_middle_keeps_what_can_be_read(tmp_path: Path) -> None:
    full = make_clip(tmp_path / "full.mkv", seconds=4, size=(320, 240))
    bad = corrupt_copy(full, tmp_path / "bad.mkv", at=0.5, nbytes=20_000)
    summary = stylize_file(bad, tmp_path / "out.mkv", PassthroughPipeline())
    problem = summary.problem()
    assert problem is not None and "damaged" in problem and "\n" not in problem
    assert 30 < probe(tmp_path / "out.mkv").frames == summary.frames < 120


@pytest.mark.parametrize("case, message", [
    ("garbage", "not a video file"),
    ("missing", "does not exist"),
    ("audio_only", "no video stream"),
    ("no_out_folder", "output folder"),
])
def test_bad_input_or_output_is_one_line_exit_2(tmp_path: Path, clip_with_audio: Path, case: str,
                                                message: str) -> None:
    src, out = clip_with_audio, tmp_path / "out.mp4"
    if case == "garbage":
        src = write_garbage(tmp_path / "garbage.mp4")
    elif case == "missing":
        src = tmp_path / "nope.mp4"
    elif case == "audio_only":
        src = make_audio_only(tmp_path / "tone.m4a")
    else:
        out = tmp_path / "no" / "such" / "folder" / "out.mp4"
    done = streamer("file", str(src), str(out), "--preset", "passthrough", timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("streamer: error:") and message in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists()


def test_library_errors_are_typed(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        stylize_file(tmp_path / "nope.mp4", tmp_path / "o.mp4", PassthroughPipeline())
    src = make_clip(tmp_path / "a.mkv", seconds=0.2, size=(64, 64))
    with pytest.raises(ValueError, match="is the input file"):
        stylize_file(src, src, PassthroughPipeline())
    with pytest.raises(ValueError, match="batch"):
        stylize_file(src, tmp_path / "o.mkv", PassthroughPipeline(), batch=0)

    class WrongShape(InvertPipeline):
        def __call__(self, frames: np.ndarray, stream_ids: Sequence[str] | None = None) -> np.ndarray:
            return frames[:, ::2]

    with pytest.raises(ValueError, match="same shape"):
        stylize_file(src, tmp_path / "o.mkv", WrongShape())


def test_stop_event_finishes_in_flight_frames_and_file_plays(tmp_path: Path) -> None:
    src = make_clip(tmp_path / "a.mp4", seconds=4, size=(160, 120))
    stop = threading.Event()

    class StopAfterTwoBatches(InvertPipeline):
        def __call__(self, frames: np.ndarray, stream_ids: Sequence[str] | None = None) -> np.ndarray:
            time.sleep(0.05)  # slower than decoding: decoded frames wait in the queue when the stop comes
            if len(self.batches) == 1:
                stop.set()
            return super().__call__(frames, stream_ids)

    summary = stylize_file(src, tmp_path / "out.mp4", StopAfterTwoBatches(), batch=4, stop=stop)
    assert summary.interrupted
    assert summary.frames == 8  # the two batches stylized before the stop, nothing after it
    assert probe(tmp_path / "out.mp4").frames == summary.frames


def test_a_failing_pipeline_stops_every_stage(tmp_path: Path) -> None:
    src = make_clip(tmp_path / "a.mkv", seconds=4, size=(160, 120))
    threads_before = threading.active_count()

    class Breaks(InvertPipeline):
        def __call__(self, frames: np.ndarray, stream_ids: Sequence[str] | None = None) -> np.ndarray:
            if len(self.batches) == 3:
                raise RuntimeError("model exploded")
            return super().__call__(frames, stream_ids)

    with pytest.raises(RuntimeError, match="model exploded"):
        stylize_file(src, tmp_path / "out.mkv", Breaks(), batch=2)
    assert threading.active_count() == threads_before
    assert probe(tmp_path / "out.mkv").frames == 6  # what was stylized before the failure is kept


@pytest.mark.slow
def test_ctrl_c_leaves_a_playable_file_and_exits_130(tmp_path: Path) -> None:
    src = make_clip(tmp_path / "long.mp4", seconds=40, size=(640, 360), audio=True)
    out = tmp_path / "out.mp4"
    # medium encodes slowly enough that the job is mid-way when the signal comes.
    proc = subprocess.Popen([sys.executable, "-m", "streamer", "file", str(src), str(out), "--preset",
                             "passthrough", "--encoder-preset", "medium", "--no-progress"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # OUT gets its name only when complete: the job writes .out.partial-PID.mp4 until then.
        wait_for_partial(proc, tmp_path, 200_000, limit=120)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "stopped early" in stderr
    info = probe(out)
    assert 0 < info.frames < 1200
    assert info.audio_packets > 0


@pytest.mark.slow
def test_cli_tiny_preset_stylizes(tmp_path: Path) -> None:
    src = make_clip(tmp_path / "a.mp4", seconds=0.4, fps=30, size=(128, 96))
    out = tmp_path / "styled.mp4"
    done = streamer("file", str(src), str(out), "--preset", "tiny", "--device", "cpu", "--no-progress")
    assert done.returncode == 0, done.stderr
    before, after = decode_frames(src), decode_frames(out)
    assert len(after) == len(before) == 12
    assert after[0].shape == before[0].shape
    assert np.mean([np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(before, after, strict=True)]) > 10


def test_cli_help_mentions_the_options() -> None:
    done = streamer("file", "--help", timeout=60)
    assert done.returncode == 0
    for option in ("--size", "--batch", "--codec", "--crf", "--preset", "--prompt", "--no-progress"):
        assert option in done.stdout
