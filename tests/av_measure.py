"""A whole WHIP -> WHEP run with sound, measured: `streamer serve` alone in a loopback-only network
namespace made for the purpose (``unshare -n``), the peers joining it with ``nsenter``: the aiortc publisher
and viewer (tests/av_webrtc.py), GStreamer's webrtcbin as publisher or viewer (tests/gst_webrtc_peer.py).

``measure_whip_to_whep(...)`` does one run and returns the offsets per viewer (tests/test_server_audio.py,
benchmarks/bench_av_sync.py); ``sync_report()`` turns a viewer's result back into a SyncReport.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streamer.eval.av_sync import SyncReport, make_sync_clip, measure  # noqa: E402
from tests.av_webrtc import summary  # noqa: E402
from tests.servers import stop_group as stop  # noqa: E402

SYSTEM_PYTHON = "/usr/bin/python3"
PORT = 8080  # the namespace is fresh: every port is free
SYNC_SETTLE = 2.0  # seconds a webrtcbin player takes to line up audio and video (RTCP sender reports)
NAMESPACE = ["unshare", "-n", "--", "sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""]
PEERS = ROOT / "tests" / "av_webrtc.py"


def _in_namespace(server: subprocess.Popen, *command: str) -> list[str]:
    return ["nsenter", f"--net=/proc/{server.pid}/ns/net", *command]


def start_server(log: Path, *, delay: float = 0.0, preset: str | None = None, args: Sequence[str] = (),
                 timeout: float = 180) -> subprocess.Popen:
    """`streamer serve --preset P` or, without a preset, the test server with a model that takes ``delay``
    seconds per call (tests/webrtc_helpers.py serve), alone in a new loopback-only namespace."""
    if preset is not None:
        program = [sys.executable, "-m", "streamer", "serve", "--preset", preset, *args]
    else:
        program = [sys.executable, str(ROOT / "tests" / "webrtc_helpers.py"), "serve", "--delay", str(delay)]
    with open(log, "wb") as err:
        process = subprocess.Popen([*NAMESPACE, *program, "--port", str(PORT), "--ice-address", "127.0.0.1"],
                                   stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT, start_new_session=True,
                                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + timeout
    while "serving on" not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            raise RuntimeError(f"the server never started: {log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)
    return process


def start_aiortc_peers(server: subprocess.Popen, clip: Path | None, seconds: float) -> subprocess.Popen:
    """The aiortc publisher (unless ``clip`` is None) and viewer (one process, in the server's namespace);
    returns once the clip is published (the stream exists)."""
    command = _in_namespace(server, sys.executable, str(PEERS), "aiortc",
                            f"http://127.0.0.1:{PORT}", str(clip or "-"), "--seconds", str(seconds))
    peers = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)
    assert peers.stdout is not None
    line = peers.stdout.readline()  # "published", or nothing if it failed
    if line.strip() != "published":
        stop(peers)
        raise RuntimeError(f"aiortc peers failed: {line} {peers.stderr.read()[-3000:] if peers.stderr else ''}")
    return peers


def aiortc_result(peers: subprocess.Popen, seconds: float) -> dict[str, Any]:
    try:
        out, err = peers.communicate(timeout=seconds + 60)
    finally:
        stop(peers)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if peers.returncode != 0 or not lines:
        raise RuntimeError(f"aiortc peers failed ({peers.returncode}): {err[-3000:]}")
    return json.loads(lines[-1])


def start_gst_viewer(server: subprocess.Popen, seconds: float, work: Path) -> subprocess.Popen:
    """webrtcbin plays the newest stream, with its sound, for ``seconds``."""
    command = _in_namespace(server, SYSTEM_PYTHON, str(ROOT / "tests" / "gst_webrtc_peer.py"), "play",
                            f"http://127.0.0.1:{PORT}/whep", "--audio-out", str(work / "gst-audio.f32"),
                            "--seconds", str(seconds), "--frames", "0")
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            start_new_session=True)


def gst_result(viewer: subprocess.Popen, seconds: float, work: Path) -> dict[str, Any]:
    try:
        out, _ = viewer.communicate(timeout=seconds + 60)
    finally:
        stop(viewer)
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    if viewer.returncode != 0:
        raise RuntimeError(f"webrtcbin viewer failed ({viewer.returncode}): {out[-3000:]}")
    raw = work / "gst-audio.f32"
    samples = np.fromfile(raw, dtype=np.float32) if raw.exists() else np.zeros(0, np.float32)
    video = [(e["t"], e["level"]) for e in events if e["event"] == "video"]
    chunks, start = [], 0
    for e in (e for e in events if e["event"] == "audio"):
        chunks.append((e["t"], samples[start:start + e["n"]], e["rate"]))
        start += e["n"]
    # webrtcbin lines audio and video up by RTCP sender reports, which come about once a second: its first
    # seconds of play are not in sync yet, in any player built on it.
    until = video[0][0] + SYNC_SETTLE if video else None
    return summary(measure(video, chunks), until=until)


def start_gst_publisher(server: subprocess.Popen, clip: Path, seconds: float, work: Path) -> subprocess.Popen:
    """webrtcbin publishes the (VP8 + Opus) clip's packets; returns once the server answered."""
    out = work / "gst-publish.jsonl"
    with open(out, "wb") as stdout:
        publisher = subprocess.Popen(
            _in_namespace(server, SYSTEM_PYTHON, str(ROOT / "tests" / "gst_webrtc_peer.py"), "publish",
                          f"http://127.0.0.1:{PORT}/whip", "--clip", str(clip), "--seconds", str(seconds)),
            stdout=stdout, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    deadline = time.monotonic() + 60
    while '"answered"' not in out.read_text(errors="replace"):
        if publisher.poll() is not None or time.monotonic() > deadline:
            stop(publisher)
            raise RuntimeError(f"webrtcbin publisher failed: {out.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)
    return publisher


def sync_report(result: dict[str, Any]) -> SyncReport:
    """One viewer's result of measure_whip_to_whep as a SyncReport (pairs before ``until`` left out)."""
    until_pairs = [(f, c) for f, c in result["pairs"] if c - f in result["offsets"]]
    return SyncReport(flashes=result["flash_times"], clicks=result["click_times"], pairs=until_pairs,
                      longest_audio_gap=result["arrival_gap"], video_frames=result["video_frames"],
                      audio_seconds=result["audio_seconds"])


def measure_whip_to_whep(*, delay: float = 0.0, preset: str | None = None, server_args: Sequence[str] = (),
                         viewers: tuple[str, ...] = ("aiortc",), publisher: str = "aiortc", seconds: float = 8.0,
                         clip: Path | None = None, work: Path | None = None) -> dict[str, dict[str, Any]]:
    """One run of the WHIP -> WHEP path with sound, through `streamer serve --preset PRESET SERVER_ARGS`
    or, without a preset, the test server whose model takes ``delay`` seconds a frame.

    A flash-and-click clip (``clip``, any container PyAV reads, else one is made) is published over WHIP by
    ``publisher`` ("aiortc": decoded and sent encoded again; "webrtcbin": a VP8 + Opus clip's packets as they
    are, as OBS sends its encoders' output; it makes its own clip) and watched over WHEP by each of
    ``viewers`` ("aiortc", "webrtcbin") for ``seconds``. Returns, per viewer: "offsets" (audio minus video,
    s, one per flash seen; webrtcbin's first seconds apart in "early_offsets"), "arrival_gap" (aiortc: the
    longest silence between audio packets as they arrived; webrtcbin: in its audio's timeline, s), counts,
    and what sync_report() turns back into a SyncReport; and "server": its /metrics samples. Needs root (or
    user namespaces) for the network namespace, and GStreamer's WebRTC plugins for "webrtcbin"."""
    with tempfile.TemporaryDirectory(dir=work) as folder:
        folder_path = Path(folder)
        if clip is None or publisher == "webrtcbin":
            name, codec = ("clip.webm", "libvpx") if publisher == "webrtcbin" else ("clip.mkv", None)
            clip = make_sync_clip(folder_path / name, seconds=seconds + 4, size=(320, 240), first=2.5, every=0.7,
                                  video_codec=codec).path
        server = start_server(folder_path / "server.log", delay=delay, preset=preset, args=server_args)
        gst_publisher = None
        try:
            if publisher == "webrtcbin":
                gst_publisher = start_gst_publisher(server, clip, seconds + 4, folder_path)
            peers = start_aiortc_peers(server, None if gst_publisher else clip, seconds)
            gst = start_gst_viewer(server, seconds - 1.0, folder_path) if "webrtcbin" in viewers else None
            results = {"aiortc": aiortc_result(peers, seconds)}
            if gst is not None:
                results["webrtcbin"] = gst_result(gst, seconds, folder_path)
            results = {name: result for name, result in results.items() if name in viewers}
            results["server"] = server_metrics(server)
        finally:
            if gst_publisher is not None:
                stop(gst_publisher)
            stop(server)
        return results


def server_metrics(server: subprocess.Popen) -> dict[str, float]:
    """The server's /metrics samples (name{labels} -> value), read from inside its namespace."""
    fetch = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"
    result = subprocess.run(_in_namespace(server, sys.executable, "-c", fetch, f"http://127.0.0.1:{PORT}/metrics"),
                            capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"/metrics: {result.stderr[-2000:]}")
    samples = {}
    for line in result.stdout.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples
