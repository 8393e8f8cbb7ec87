"""Never destroy or leave broken what the user had: the output-path check, the partial file renamed into place,
and signals, with real files, real signals and a full disk (a small tmpfs) against `python -m streamer`."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import pytest
from media import (
    AAC_FRAME_SAMPLES,
    AUDIO_RATE,
    make_clip,
    partials,
    pattern_frame,
    probe,
    wait_for_partial,
)

from streamer.media.frames import Frame
from streamer.sinks.av_sink import AvSink
from streamer.sinks.base import SinkError

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
FILE = ("--preset", "passthrough", "--no-progress")


def streamer(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamer", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env=ENV)


def start(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "streamer", *args], cwd=cwd, text=True, env=ENV,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("streamer: error: "), stderr
    return lines[0]


def finish(process: subprocess.Popen[str], timeout: float = 120) -> str:
    try:
        return process.communicate(timeout=timeout)[1]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1 s, 160x120, with AAC audio."""
    return make_clip(tmp_path_factory.mktemp("media") / "in.mp4", seconds=1, size=(160, 120), audio=True)


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 s, 320x240, with AAC audio: with x264's veryslow preset a job takes long enough to be stopped."""
    return make_clip(tmp_path_factory.mktemp("media") / "long.mp4", seconds=20, size=(320, 240), audio=True)


@pytest.mark.parametrize("spelling", ["hard link", "symlink", "file:IN", "file://IN"])
def test_output_that_is_the_input_is_refused_and_the_input_survives(tmp_path: Path, clip: Path,
                                                                     spelling: str) -> None:
    src = Path(shutil.copy(clip, tmp_path / "in.mp4"))
    before = digest(src)
    out = {"file:IN": "file:in.mp4", "file://IN": f"file://{src}"}.get(spelling, "link.mp4")
    if spelling == "hard link":
        os.link(src, tmp_path / out)
    elif spelling == "symlink":
        (tmp_path / out).symlink_to("in.mp4")
    for overwrite in ([], ["-y"]):  # not even with --overwrite
        done = streamer("file", "in.mp4", out, *FILE, *overwrite, cwd=tmp_path)
        assert done.returncode == 2
        assert "is the input file" in one_error_line(done.stderr)
    assert digest(src) == before and partials(tmp_path) == []


def test_run_refuses_a_sink_that_is_its_source(tmp_path: Path, clip: Path) -> None:
    src = Path(shutil.copy(clip, tmp_path / "in.mp4"))
    before = digest(src)
    done = streamer("run", "--source", "file:in.mp4", "--sink", "in.mp4", "-y", "--preset", "passthrough",
                    cwd=tmp_path)
    assert done.returncode == 2 and "is the input file" in one_error_line(done.stderr)
    assert digest(src) == before


def test_existing_output_needs_overwrite(tmp_path: Path, clip: Path) -> None:
    old = make_clip(tmp_path / "out.mp4", seconds=0.2, size=(64, 48))
    os.chmod(old, 0o640)
    before = digest(old)
    done = streamer("file", str(clip), "out.mp4", *FILE, cwd=tmp_path)
    assert done.returncode == 2
    assert "out.mp4 already exists; add --overwrite (-y)" in one_error_line(done.stderr)
    assert digest(old) == before
    for flag in ("-y", "--overwrite"):
        done = streamer("file", str(clip), "out.mp4", *FILE, flag, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        info = probe(old)
        assert (info.width, info.height, info.frames) == (160, 120, 30) and info.audio_packets > 0
    assert os.stat(old).st_mode & 0o777 == 0o640  # the replaced file kept its permissions
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


def test_run_sinks_and_stats_need_overwrite_too(tmp_path: Path) -> None:
    run = ("run", "--source", "testsrc:160x96@30", "--preset", "passthrough", "--duration", "1")
    (tmp_path / "old.mkv").write_bytes(b"keep me")
    (tmp_path / "s.json").write_text("{}")
    done = streamer(*run, "--sink", "old.mkv", cwd=tmp_path)
    assert done.returncode == 2 and "sink old.mkv already exists" in one_error_line(done.stderr)
    done = streamer(*run, "--sink", "new.mkv", "--stats", "s.json", cwd=tmp_path)
    assert done.returncode == 2 and "--stats s.json already exists" in one_error_line(done.stderr)
    assert (tmp_path / "old.mkv").read_bytes() == b"keep me" and not (tmp_path / "new.mkv").exists()
    done = streamer(*run, "--sink", "old.mkv", "--stats", "s.json", "-y", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert probe(tmp_path / "old.mkv").frames >= 10 and "frames_out" in (tmp_path / "s.json").read_text()
    assert partials(tmp_path) == []


@pytest.mark.parametrize(("out", "words"), [
    ("in.mp4/x.mp4", "in.mp4 is a file, not a folder"),
    ("in.mp4/deeper/x.mp4", "in.mp4 is a file, not a folder"),
    ("missing/x.mp4", "the output folder missing does not exist"),
    ("pipe:x.mp4", "looks like a pipe: URL"),
    (".", "is a folder"),
])
def test_bad_output_paths_say_the_real_problem(tmp_path: Path, clip: Path, out: str, words: str) -> None:
    shutil.copy(clip, tmp_path / "in.mp4")
    done = streamer("file", "in.mp4", out, *FILE, cwd=tmp_path)
    assert done.returncode == 2 and words in one_error_line(done.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]


@pytest.mark.slow
@pytest.mark.parametrize("old_out", [False, True])
def test_kill_9_never_leaves_a_broken_output(tmp_path: Path, long_clip: Path, old_out: bool) -> None:
    out = tmp_path / "out.mp4"
    before = digest(make_clip(out, seconds=0.2, size=(64, 48))) if old_out else None
    process = start("file", str(long_clip), str(out), *FILE, "--encoder-preset", "veryslow", "-y", cwd=tmp_path)
    try:
        partial = wait_for_partial(process, tmp_path, 60_000)
        process.kill()  # SIGKILL: nothing runs after it
    finally:
        finish(process)
    assert process.returncode == -signal.SIGKILL
    if old_out:
        assert digest(out) == before  # the old file, untouched
    else:
        assert not out.exists()
    assert partials(tmp_path) == [partial]  # the only trace; its name says what it is
    assert partial.name.startswith(".out.partial-") and partial.suffix == ".mp4"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])  # SIGINT: test_file_job's Ctrl-C test
def test_a_stop_signal_finishes_a_playable_file_in_sync(tmp_path: Path, long_clip: Path, sig: int) -> None:
    out = tmp_path / "out.mp4"
    process = start("file", str(long_clip), str(out), *FILE, "--encoder-preset", "veryslow", cwd=tmp_path)
    try:
        wait_for_partial(process, tmp_path, 60_000)
        assert not out.exists()
        process.send_signal(sig)
    finally:
        stderr = finish(process)
    assert process.returncode == 128 + sig, stderr  # 143, 129, 130
    assert "Traceback" not in stderr and "stopped early" in stderr
    source, info = probe(long_clip), probe(out)
    assert 0 < info.frames < source.frames
    # Audio in sync: the same offset between the first frame and the first sample as the input, and the
    # audio runs to the last frame (it was cut with the video, not before or long after it).
    assert info.video_start - info.audio_start == pytest.approx(source.video_start - source.audio_start, abs=1e-3)
    video_end = info.video_seconds[-1] + 1 / 30
    assert abs(info.audio_end - video_end) <= 4 * AAC_FRAME_SAMPLES / AUDIO_RATE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


@pytest.mark.slow
def test_a_second_ctrl_c_abandons_the_stop_and_leaves_nothing(tmp_path: Path, long_clip: Path) -> None:
    out = tmp_path / "out.mp4"
    process = start("file", str(long_clip), str(out), *FILE, "--encoder-preset", "veryslow", cwd=tmp_path)
    try:
        wait_for_partial(process, tmp_path, 60_000)
        process.send_signal(signal.SIGINT)
        time.sleep(0.2)  # the clean stop (draining the encoder) takes seconds here
        process.send_signal(signal.SIGINT)
    finally:
        stderr = finish(process)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    assert list(tmp_path.iterdir()) == []  # no OUT and no partial file


@pytest.fixture
def small_disk(tmp_path: Path):
    """A real 200 kB filesystem (tmpfs; needs root), unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(disk)], capture_output=True,
                             text=True, timeout=30)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=30)


@pytest.mark.parametrize("old_out", [False, True])
def test_full_disk_is_one_line_and_keeps_the_old_output(small_disk: Path, long_clip: Path, old_out: bool) -> None:
    out = small_disk / "out.mp4"
    before = digest(make_clip(out, seconds=0.2, size=(64, 48))) if old_out else None
    done = streamer("file", str(long_clip), str(out), *FILE, "-y", cwd=small_disk.parent)
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert "No space left on device" in line and ".partial" not in line
    if old_out:
        assert digest(out) == before
    else:
        assert not out.exists()
    assert partials(small_disk) == []


def test_output_that_appears_during_the_job_is_not_replaced(tmp_path: Path) -> None:
    """Without overwrite, a file someone else created at OUT meanwhile survives; the result is kept aside."""
    out = tmp_path / "out.mkv"
    sink = AvSink(str(out))
    sink.open(64, 48, 30, time_base=Fraction(1, 30))
    for i in range(5):
        sink.write(Frame(pattern_frame(i, 64, 48), pts=i, time_base=Fraction(1, 30), index=i))
    out.write_bytes(b"someone else's")
    with pytest.raises(SinkError, match="appeared while it was being written") as info:
        sink.close()
    assert "\n" not in str(info.value)
    assert out.read_bytes() == b"someone else's"
    kept = partials(tmp_path)
    assert len(kept) == 1 and probe(kept[0]).frames == 5



@pytest.mark.parametrize("command", ["file", "run"])
def test_help_gives_the_exit_status_rule_and_overwrite(tmp_path: Path, command: str) -> None:
    done = streamer(command, "--help", cwd=tmp_path)
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "-y, --overwrite" in text
    assert "exit status: 0 when the job completed" in text
    assert "SIGTERM (143) or SIGHUP (129)" in text
