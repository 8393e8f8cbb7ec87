"""`streamer batch`: many real files through the real CLI, compared frame for frame with `streamer file`;
inputs, refusals, a stop by signal and the re-run that completes it. The Ray runs are in test_batch_ray.py."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from media import decode_frames, make_clip, probe, wait_for_partial, write_garbage

# One thread per model process: on a shared 2-core machine more threads only wait for each other.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
TINY = ("--preset", "tiny", "--device", "cpu", "--no-progress")
SUMMARY = "streamer-batch.json"


def streamer(*args: str, timeout: float = 240, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamer", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env=env or ENV)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 real clips with audio, one of variable frame rate, one longer, one in a subfolder."""
    folder = tmp_path_factory.mktemp("clips")
    (folder / "sub").mkdir()
    make_clip(folder / "a.mp4", seconds=1.5, size=(160, 120), audio=True)
    make_clip(folder / "sub" / "b.mov", seconds=1, size=(128, 96), audio=True)
    make_clip(folder / "vfr.mkv", pts=[0, 40, 80, 200, 210, 230, 500, 530, 1000, 1010, 1020, 1300, 1333],
              time_base=Fraction(1, 1000), size=(160, 120), audio=True)
    make_clip(folder / "long.mp4", seconds=6, size=(160, 120), audio=True)
    return folder


OUTPUTS = {"a.mp4": "a.mp4", "sub/b.mp4": "sub/b.mov", "vfr.mp4": "vfr.mkv", "long.mp4": "long.mp4"}


@pytest.fixture(scope="module")
def references(clips: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """What `streamer file` makes of each clip (tiny preset), keyed by the batch's output name."""
    folder = tmp_path_factory.mktemp("references")
    jobs = {}
    for name, source in OUTPUTS.items():
        out = folder / name.replace("/", "_")
        jobs[name] = (out, subprocess.Popen([sys.executable, "-m", "streamer", "file", str(clips / source), str(out),
                                             *TINY], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True, env=ENV))
    for _out, proc in jobs.values():
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
    return {name: out for name, (out, _) in jobs.items()}


def assert_same_as_file(out: Path, reference: Path) -> None:
    """The same frames (pixels), timestamps and audio as `streamer file` wrote."""
    a, b = probe(reference), probe(out)
    assert (b.video_pts, b.video_time_base) == (a.video_pts, a.video_time_base)
    assert (b.audio_codec, b.audio_packets) == (a.audio_codec, a.audio_packets) and a.audio_packets > 0
    frames_a, frames_b = decode_frames(reference), decode_frames(out)
    assert len(frames_a) == len(frames_b) == a.frames
    for index, (x, y) in enumerate(zip(frames_a, frames_b, strict=True)):
        assert np.array_equal(x, y), f"{out.name}: frame {index} differs from streamer file's"


def summary_of(out_dir: Path) -> dict:
    return json.loads((out_dir / SUMMARY).read_text())


@pytest.mark.slow
def test_batch_equals_file_and_a_rerun_skips(clips: Path, references: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = streamer("batch", str(clips), "--out", str(out), "--workers", "2", *TINY[:-1], "--progress")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    for name, reference in references.items():
        assert_same_as_file(out / name, reference)
    record = summary_of(out)
    assert record["finished"] and record["done"] == 4 and record["failed"] == 0
    assert set(record["files"]) == set(OUTPUTS)
    workers = set()
    for name, entry in record["files"].items():
        assert entry["status"] == "done" and entry["retries"] == 0 and entry["seconds"] > 0
        assert entry["frames"] == probe(out / name).frames
        workers.add(entry["worker"].split()[0])
    assert workers == {"worker-1", "worker-2"}  # both workers took files
    total = sum(entry["frames"] for entry in record["files"].values())
    assert f"{total}/{total}" in done.stderr  # one bar over every frame of every file, ending full
    assert not [p.name for p in out.rglob(".*partial*")]

    before = {name: (out / name).stat() for name in OUTPUTS}
    again = streamer("batch", str(clips), "--out", str(out), *TINY)
    assert again.returncode == 0, again.stderr
    assert "0 done, 4 skipped" in again.stderr
    for name, info in before.items():
        after = (out / name).stat()
        assert (after.st_ino, after.st_mtime_ns) == (info.st_ino, info.st_mtime_ns)
    assert summary_of(out)["files"]["long.mp4"]["status"] == "done"  # the earlier records are kept


def test_globs_lists_and_duplicates(tmp_path: Path) -> None:
    clips = tmp_path / "in"
    clips.mkdir()
    for name in ("x.mp4", "y.mp4", "z.mkv"):
        make_clip(clips / name, seconds=0.2, size=(64, 48))
    listing = tmp_path / "list.txt"
    listing.write_text("# two of them, one again\nin/z.mkv\n\nin/x.mp4\n")
    out = tmp_path / "out"
    done = streamer("batch", str(clips / "*.mp4"), str(listing), str(clips / "x.mp4"), "--out", str(out),
                    "--preset", "passthrough", "--ext", "mkv", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == [SUMMARY, "x.mkv", "y.mkv", "z.mkv"]
    assert all(probe(out / f"{n}.mkv").frames == 6 for n in "xyz")


@pytest.mark.parametrize("case", ["collision", "missing", "out-is-file", "empty-folder", "output-is-input",
                                  "no-match", "bad-retries", "resource-without-ray", "no-ray-there"])
def test_refusals_are_one_line_and_create_nothing(tmp_path: Path, case: str) -> None:
    clips = tmp_path / "in"
    (clips / "sub").mkdir(parents=True)
    make_clip(clips / "c.mp4", seconds=0.2, size=(64, 48))
    out, extra = tmp_path / "out", []
    if case == "collision":
        make_clip(clips / "sub" / "c.mkv", seconds=0.2, size=(64, 48))
        inputs, expect = [str(clips / "c.mp4"), str(clips / "sub" / "c.mkv")], "would both be written to"
    elif case == "missing":
        inputs, expect = [str(clips / "c.mp4"), str(clips / "nope.mp4")], "nope.mp4 does not exist"
    elif case == "out-is-file":
        out.write_text("x")
        inputs, expect = [str(clips)], "is a file; give a folder"
    elif case == "empty-folder":
        inputs, expect = [str(clips / "sub")], "holds no video files"
    elif case == "output-is-input":
        out, inputs, expect = clips, [str(clips / "c.mp4")], "is the input file"
    elif case == "no-match":
        inputs, expect = [str(clips / "*.webm")], "matches no file"
    elif case == "bad-retries":
        inputs, expect, extra = [str(clips)], "--retries must be 0 or more", ["--retries", "-1"]
    elif case == "resource-without-ray":
        inputs, expect, extra = [str(clips)], "--worker-resource needs --ray", ["--worker-resource", "gpu"]
    else:  # nothing listens on port 1: refused at once, not after Ray's minutes of retries
        inputs, expect, extra = [str(clips)], "cannot reach the Ray cluster at 127.0.0.1:1", ["--ray", "127.0.0.1:1"]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    done = streamer("batch", *inputs, "--out", str(out), "--preset", "passthrough", *extra)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("streamer: error: ") and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert expect in done.stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_an_unreadable_file_fails_alone(tmp_path: Path) -> None:
    clips = tmp_path / "in"
    clips.mkdir()
    make_clip(clips / "good.mp4", seconds=0.2, size=(64, 48))
    write_garbage(clips / "bad.mp4")
    out = tmp_path / "out"
    done = streamer("batch", str(clips), "--out", str(out), "--preset", "passthrough", "--no-progress")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "streamer: error: cannot read" in done.stderr and "bad.mp4" in done.stderr
    record = summary_of(out)
    assert record["files"]["good.mp4"]["status"] == "done" and probe(out / "good.mp4").frames == 6
    assert record["files"]["bad.mp4"]["status"] == "failed" and "cannot read" in record["files"]["bad.mp4"]["error"]
    assert not (out / "bad.mp4").exists()


def test_ray_not_installed_says_how_to_install(tmp_path: Path) -> None:
    make_clip(tmp_path / "c.mp4", seconds=0.2, size=(64, 48))
    code = ("import sys; sys.modules['ray'] = None; from streamer.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", code, "batch", str(tmp_path / "c.mp4"), "--out",
                           str(tmp_path / "out"), "--ray", "local", "--preset", "passthrough"],
                          capture_output=True, text=True, timeout=120, env=ENV)
    assert done.returncode == 2
    assert done.stderr.strip() == ('streamer: error: --ray needs Ray, which the default install leaves out: '
                                   'pip install "streamer[ray]" (or pip install "ray>=2.40")')
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_sigterm_stops_with_playable_files_and_a_rerun_completes_them(tmp_path: Path) -> None:
    clips = tmp_path / "in"
    clips.mkdir()
    for name in ("p.mp4", "q.mp4", "r.mp4"):
        make_clip(clips / name, seconds=20, size=(640, 360), audio=True)
    out = tmp_path / "out"
    # The medium encoder preset is slow enough that the job is mid-file when the signal comes.
    args = [sys.executable, "-m", "streamer", "batch", str(clips), "--out", str(out), "--preset", "passthrough",
            "--encoder-preset", "medium", "--no-progress"]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)
    try:
        wait_for_partial(proc, out, 100_000, limit=120)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr
    record = summary_of(out)
    assert record["files"]["p.mp4"]["status"] == "stopped" and not record["finished"]
    assert {record["files"][n]["status"] for n in ("q.mp4", "r.mp4")} == {"not started"}
    partial = probe(out / "p.mp4")
    assert 0 < partial.frames < 600 and partial.audio_packets > 0  # playable, ends early
    assert not list(out.glob(".*partial*"))

    done = streamer("batch", str(clips), "--out", str(out), "--preset", "passthrough", "--encoder-preset",
                    "ultrafast", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "3 done, 0 skipped" in done.stderr  # the stopped file is done again, not skipped
    for name in ("p.mp4", "q.mp4", "r.mp4"):
        assert probe(out / name).frames == 600
        assert summary_of(out)["files"][name]["status"] == "done"


# --- On Ray: a cluster of CPU workers in a loopback-only network namespace (every Ray listener on
# 127.0.0.1), the dashboard off. Everything the batch writes is in tmp_path, seen from both sides.

def ray_in_namespace(*command: str, head: bool = False) -> list[str]:
    """``command`` in a fresh loopback-only network namespace; with ``head``, a Ray head node (2 CPUs and 2
    units of the custom resource gpu_slot, standing in for GPUs) started there first and stopped after."""
    pytest.importorskip("ray", reason='Ray is an optional extra: pip install -e ".[ray]"')
    from test_browser import namespaces_work

    if not namespaces_work():
        pytest.skip("cannot create a network namespace here (unshare -n needs root or user namespaces)")
    script = 'ip link set lo up && exec "$@"'
    if head:
        ray = shlex.quote(str(Path(sys.executable).with_name("ray")))
        script = (f"ip link set lo up || exit 90; trap '{ray} stop --force >/dev/null 2>&1' EXIT; "
                  f"{ray} start --head --port 6379 --num-cpus 2 --resources '{{\"gpu_slot\": 2}}' "
                  "--include-dashboard false --disable-usage-stats >/dev/null 2>&1 || exit 91; \"$@\"")
    return ["unshare", "-n", "--", "sh", "-c", script, "sh", *command]


@pytest.mark.slow
def test_ray_actor_killed_mid_file_is_retried_and_a_rerun_skips(clips: Path, references: dict[str, Path],
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["batch", str(clips), "--out", str(out), *TINY, "--ray", "127.0.0.1:6379", "--worker-resource",
            "gpu_slot", "--worker-cpus", "0.5"]
    proc = subprocess.Popen(ray_in_namespace(sys.executable, "-m", "streamer", *args, head=True),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV, start_new_session=True)
    killed, seen = None, None
    try:
        deadline = time.monotonic() + 150
        while killed is None and proc.poll() is None and time.monotonic() < deadline:
            # The actor writing long.mp4 (180 frames, about 7 s) names its partial file with its pid; the
            # MP4 muxer holds the data until the end, so "mid-file" is 2 s after the partial file appeared.
            for partial in out.glob(".long.partial-*.mp4"):
                seen = seen or time.monotonic()
                if time.monotonic() - seen > 2:
                    killed = int(re.match(r"\.long\.partial-(\d+)", partial.name).group(1))
                    os.kill(killed, signal.SIGKILL)
            time.sleep(0.02)
        _, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert killed is not None, "no actor was caught mid-file"
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "goes to another worker (retry 1 of 2)" in stderr
    for name, reference in references.items():
        assert_same_as_file(out / name, reference)  # the retried file too: whole, as streamer file makes it
    record = summary_of(out)
    assert record["done"] == 4 and record["finished"]
    assert record["files"]["long.mp4"]["retries"] == 1
    assert f"pid {killed})" not in record["files"]["long.mp4"]["worker"]
    assert {n: e["retries"] for n, e in record["files"].items() if n != "long.mp4"} == dict.fromkeys(
        ["a.mp4", "sub/b.mp4", "vfr.mp4"], 0)
    assert not [p.name for p in out.rglob(".*partial*")]  # the killed actor's partial file is gone

    # Run again: every output is complete, so nothing starts (not even a connection to the cluster).
    again = streamer("batch", *args[1:])
    assert again.returncode == 0, again.stderr
    assert "0 done, 4 skipped" in again.stderr


@pytest.mark.slow
def test_ray_local_cluster(clips: Path, references: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = ray_in_namespace(sys.executable, "-m", "streamer", "batch", str(clips / "a.mp4"),
                               str(clips / "sub" / "b.mov"), "--out", str(out), *TINY, "--ray", "local",
                               "--workers", "2", "--worker-cpus", "0.5")
    # unshare and sh exec the command: the batch's own process has the pid Popen reports.
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)
    try:
        _, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == 0, stderr
    assert_same_as_file(out / "a.mp4", references["a.mp4"])
    assert_same_as_file(out / "b.mp4", references["sub/b.mp4"])
    record = summary_of(out)
    assert record["workers"] == ["worker-1", "worker-2"]
    for entry in record["files"].values():  # done by an actor, in a process of its own
        pid = int(re.search(r"pid (\d+)\)", entry["worker"]).group(1))
        assert pid not in (proc.pid, os.getpid())


@pytest.mark.slow
def test_ray_worker_that_cannot_load_the_model_is_one_line(clips: Path, tmp_path: Path) -> None:
    env = {**ENV, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-cache")}  # the model is nowhere
    command = ray_in_namespace(sys.executable, "-m", "streamer", "batch", str(clips / "a.mp4"), "--out",
                               str(tmp_path / "out"), "--preset", "lcm-dreamshaper", "--device", "cpu", "--ray",
                               "local", "--worker-cpus", "0.5", "--retries", "0")
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL, env=env)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("streamer: error:")]
    assert len(errors) == 1 and "a Ray worker could not load the model: offline" in errors[0], done.stderr


def test_a_file_whose_job_failed_is_done_again_not_skipped(tmp_path: Path) -> None:
    """A failed job keeps what was stylized under its output's name (as `streamer file` does); the summary
    says it failed, so the next run redoes it instead of taking the short file as done."""
    import json

    from streamer.scale.plan import SUMMARY_NAME, plan

    clips, out = tmp_path / "in", tmp_path / "out"
    clips.mkdir()
    out.mkdir()
    for name in ("a", "b"):
        (clips / f"{name}.mp4").write_bytes(b"input")
        (out / f"{name}.mp4").write_bytes(b"an earlier output")
    (out / SUMMARY_NAME).write_text(json.dumps({"files": {"a.mp4": {"status": "failed", "frames": 6},
                                                         "b.mp4": {"status": "done", "frames": 30}}}))
    files, _ = plan([str(clips)], out, ext="mp4", overwrite=False)
    status = {item.name: (item.status, item.overwrite) for item in files}
    assert status == {"a.mp4": ("pending", True), "b.mp4": ("skipped", False)}
