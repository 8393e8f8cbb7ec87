"""`streamer run` as a user runs it: a subprocess, real files, signals, the HTTP control endpoint, stdin."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import av
import pytest

from streamer.sources.testsrc import read_marks

REPO = Path(__file__).resolve().parent.parent
SETUPS = REPO / "configs" / "setups"
TIMEOUT = 240


def streamer(*args: str, cwd: Path, timeout: float = TIMEOUT, stdin: str | None = None
             ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamer", "run", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, input=stdin, env={**os.environ, "PYTHONPATH": str(REPO)})


def start(*args: str, cwd: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "streamer", "run", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, **kwargs)


def stop(process: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 60) -> tuple[int, str]:
    """Send ``sig``, wait; kill if it hangs (the test then fails on the return code)."""
    try:
        process.send_signal(sig)
        _, err = process.communicate(timeout=timeout)
        return process.returncode, err
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate(timeout=10)
        return -9, err
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def file_indices(path: Path) -> list[int | None]:
    with av.open(str(path)) as container:
        return [(m[0] if (m := read_marks(f.to_ndarray(format="rgb24"))) else None)
                for f in container.decode(video=0)]


def http(method: str, url: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("streamer: error: ")
    return lines[0]


def test_testsrc_to_file_with_stats(tmp_path: Path) -> None:
    result = streamer("--source", "testsrc:320x180@30", "--sink", "out.mp4", "--preset", "passthrough",
                      "--duration", "3", "--stats", "stats.json", "--progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    indices = file_indices(tmp_path / "out.mp4")
    assert 80 <= len(indices) <= 100 and None not in indices
    assert all(b > a for a, b in zip(indices, indices[1:], strict=False))
    stats = json.loads((tmp_path / "stats.json").read_text())
    for key in ("frames_in", "frames_out", "dropped", "reconnects", "fps_out", "stages", "sinks"):
        assert key in stats
    assert set(stats["latency_ms"]) >= {"p50", "p95"}
    assert stats["sinks"]["av:out.mp4"]["written"] == len(indices)
    assert 2.8 < stats["elapsed_s"] < 4.0  # --duration ended the run
    assert re.search(r"\x1b\[2Kin [\d.]+ fps \| out [\d.]+ fps \| latency p50", result.stderr)  # --progress
    assert "frames in," in result.stderr  # the closing summary


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signal_stops_cleanly_and_the_file_plays(tmp_path: Path, sig: int) -> None:
    out = tmp_path / "live.mp4"
    process = start("--source", "testsrc:320x180@30", "--sink", str(out), "--preset", "passthrough",
                    cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline and not list(tmp_path.glob(".live.partial-*")):
            time.sleep(0.1)  # the partial file appears with the first frame; OUT only when it is complete
        time.sleep(1.5)
        assert not out.exists()
    finally:
        code, err = stop(process, sig)
    assert code == 128 + sig, err  # 130, 143, 129: stopped by that signal, outputs finished
    assert "stopping" in err
    indices = file_indices(out)  # an MP4 only plays when its index was written at close
    assert len(indices) >= 20 and None not in indices
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live.mp4"]  # no partial file left


def test_setup_file_with_flags_overriding(tmp_path: Path) -> None:
    setup = tmp_path / "setup.yaml"
    setup.write_text("source: testsrc:160x96@30\nsinks: [from-file.mkv]\nrun: {duration: 1.5, stats: s.json}\n"
                     "pipeline: {preset: passthrough, strength: 0.4}\n")
    result = streamer("--config", str(setup), "--sink", "from-flag.mkv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "from-flag.mkv").exists() and not (tmp_path / "from-file.mkv").exists()
    assert 30 <= len(file_indices(tmp_path / "from-flag.mkv")) <= 60
    assert json.loads((tmp_path / "s.json").read_text())["frames_out"] > 0


def test_example_setups_are_valid() -> None:
    from streamer.config import SetupConfig, pipeline_config_from_args
    from streamer.sinks.factory import make_sink

    names = sorted(p.name for p in SETUPS.glob("*.yaml"))
    assert {"webcam-to-virtualcam.yaml", "rtsp-to-file-and-preview.yaml", "file-to-network.yaml",
            "testsrc-to-file.yaml"} <= set(names)
    for name in names:
        setup = SetupConfig.read(SETUPS / name)
        assert setup.source.spec and setup.sinks, name
        args = type("Args", (), {"config": SETUPS / name, "preset": None})()
        pipeline_config_from_args(args)  # the pipeline section is a valid model config
        for spec in setup.sinks:
            if spec != "preview":  # no display here
                make_sink(spec)


@pytest.mark.parametrize(("args", "words"), [
    (["--source", "nosuch.mp4", "--sink", "out.mp4"], "no such file"),
    (["--source", "testsrc", "--sink", "out.txt"], "not something streamer can write"),
    (["--source", "testsrc"], "at least one --sink"),
    (["--sink", "out.mp4"], "give a --source"),
    (["--source", "testsrc", "--sink", "out.mp4", "--duration", "-1"], "--duration must be a number above 0, got -1"),
    (["--source", "testsrc", "--sink", "out.mp4", "--preset", "nosuch"], "unknown preset"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], words: str) -> None:
    result = streamer(*args, "--preset", "passthrough", cwd=tmp_path) if "--preset" not in args else \
        streamer(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert words in one_error_line(result.stderr)


@pytest.mark.skipif(any(Path("/dev").glob("video*")), reason="a video device exists here")
def test_missing_virtual_camera_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = streamer("--source", "testsrc:160x96@30", "--sink", "virtualcam", "--preset", "passthrough",
                      cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "modprobe v4l2loopback" in one_error_line(result.stderr)


@pytest.mark.slow
def test_tiny_preset_runs(tmp_path: Path) -> None:
    result = streamer("--source", "testsrc:128x96@15", "--sink", "tiny.mkv", "--preset", "tiny",
                      "--duration", "4", "--stats", "s.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    stats = json.loads((tmp_path / "s.json").read_text())
    with av.open(str(tmp_path / "tiny.mkv")) as container:
        assert len(list(container.decode(video=0))) == stats["sinks"]["av:tiny.mkv"]["written"] >= 2
    assert stats["stages"]["model"]["count"] >= 2


@pytest.mark.slow
def test_live_pipe_source_through_the_runtime(tmp_path: Path) -> None:
    """A live, unseekable source: ffmpeg writes MJPEG into a named pipe in real time (-re); the runtime reads
    it, stylizes with the tiny model and records; frames keep arriving at the pipe's pace."""
    fifo = tmp_path / "camera.mjpeg"
    os.mkfifo(fifo)
    feeder = subprocess.Popen(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-f", "lavfi", "-i",
         "testsrc2=size=160x120:rate=15", "-t", "60", "-f", "mjpeg", "-q:v", "5", "-y", str(fifo)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        out = tmp_path / "out.mp4"
        stats = tmp_path / "stats.json"
        done = streamer("--source", str(fifo), "--sink", str(out), "--preset", "tiny", "--device", "cpu",
                        "--duration", "6", "--stats", str(stats), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    finally:
        feeder.kill()
        feeder.wait(10)
    report = json.loads(stats.read_text())
    assert report["frames_out"] >= 10, report
    with av.open(str(out)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == report["frames_out"] and frames[0].shape == (120, 160, 3)


def test_a_stats_path_that_cannot_be_written_is_refused_before_the_run(tmp_path: Path) -> None:
    for bad in (str(tmp_path), str(tmp_path / "missing" / "stats.json")):
        done = streamer("--source", "testsrc", "--sink", str(tmp_path / "out.mp4"), "--preset", "passthrough",
                        "--duration", "30", "--stats", bad, cwd=tmp_path, timeout=60)
        assert done.returncode == 2 and "--stats" in done.stderr and "Traceback" not in done.stderr
        assert not (tmp_path / "out.mp4").exists()  # refused before anything ran
