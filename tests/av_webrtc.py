"""Sound and picture through `streamer serve`: a flash-and-click clip (streamer.eval.av_sync) published over
WHIP and watched over WHEP, the offsets between flashes and clicks measured at the viewer.

Two viewers, two WebRTC implementations: aiortc (here) and GStreamer's webrtcbin (tests/gst_webrtc_peer.py
``play --audio``). Times at the aiortc viewer are arrival times (a frame when it is decoded, a sound when its
RTP packet arrives): what a player that shows and plays things as they come gets. webrtcbin's are its
buffers' timestamps after its jitter buffers, which sync audio and video by RTCP sender reports: what a
GStreamer player renders.

Everything runs in a loopback-only network namespace made for the purpose (``unshare -n``): the server,
and, joining it with ``nsenter``, the peers (``python tests/av_webrtc.py aiortc URL CLIP`` publishes and
watches; its report is one JSON line).

``measure_whip_to_whep(...)`` does a whole run and returns the offsets (benchmarks/bench_av_sync.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streamer.eval.av_sync import SyncReport, brightness, make_sync_clip, measure  # noqa: E402
from streamer.server.audio import OPUS_CLOCK  # noqa: E402
from streamer.server.rtp import FrameArrivals, tap_rtp  # noqa: E402
from tests.webrtc_helpers import loopback_ice, new_pc  # noqa: E402

SYSTEM_PYTHON = "/usr/bin/python3"
PORT = 8080  # the namespace is fresh: every port is free
SYNC_SETTLE = 2.0  # seconds a webrtcbin player takes to line up audio and video (RTCP sender reports)
NAMESPACE = ["unshare", "-n", "--", "sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""]


@dataclass
class AvViewer:
    """What an aiortc WHEP viewer got: (arrival, brightness) per decoded frame; (RTP timestamp, arrival,
    Opus payload) per audio packet."""

    pc: Any
    video: list[tuple[float, float]] = field(default_factory=list)
    audio: list[tuple[int, float, bytes]] = field(default_factory=list)
    tasks: list[asyncio.Task] = field(default_factory=list)

    def report(self) -> SyncReport:
        """Flashes and clicks on the arrival timeline: each packet decoded (libopus) and placed at its arrival."""
        decoder = av.CodecContext.create("libopus", "r")
        chunks = []
        for _, arrival, payload in self.audio:
            for frame in decoder.decode(av.Packet(payload)):
                samples = frame.to_ndarray().astype(np.float32)
                samples = samples[0] if frame.format.is_planar else samples.reshape(-1)[::len(frame.layout.channels)]
                if samples.dtype.kind in "iu" or np.abs(samples).max(initial=0) > 1.5:
                    samples = samples / 32768.0
                chunks.append((arrival, samples, frame.sample_rate))
        return measure(self.video, chunks)

    def content_gap(self) -> float:
        """The longest stretch of the sound's own timeline (RTP timestamps) with no packet: audio missing."""
        stamps = sorted(ts for ts, _, _ in self.audio)
        steps = np.diff(stamps) if len(stamps) > 1 else np.zeros(1)
        frame = np.median(steps) if len(steps) else 0
        return float(max(0, (steps.max() - frame)) / OPUS_CLOCK)


async def _post(url: str, sdp: str) -> str:
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=sdp, headers={"Content-Type": "application/sdp"},
                             timeout=aiohttp.ClientTimeout(total=20)) as response:
            if response.status != 201:
                raise RuntimeError(f"{url}: {response.status} {await response.text()}")
            return await response.text()


async def _negotiate(pc: Any, url: str) -> None:
    await asyncio.wait_for(pc.setLocalDescription(await pc.createOffer()), 10)
    answer = await _post(url, pc.localDescription.sdp)
    await asyncio.wait_for(pc.setRemoteDescription(RTCSessionDescription(answer, "answer")), 10)


class ClipClock:
    """One start time for a clip's tracks: each frame is handed over at start + its pts, so picture and
    sound leave together. (aiortc's MediaPlayer starts each track's clock at that track's first read:
    its audio and video were tens of milliseconds apart.)"""

    def __init__(self) -> None:
        self.start: float | None = None

    async def until(self, seconds: float) -> None:
        if self.start is None:
            self.start = time.monotonic() - seconds
        await asyncio.sleep(max(0.0, self.start + seconds - time.monotonic()))


class ClipTrack(MediaStreamTrack):
    """A decoded clip's frames of one kind, in real time on a shared ClipClock, once through."""

    def __init__(self, kind: str, frames: list[Any], clock: ClipClock) -> None:
        super().__init__()
        self.kind = kind
        self.frames = frames
        self.clock = clock
        self.index = 0

    async def recv(self) -> Any:
        if self.readyState != "live" or self.index >= len(self.frames):
            raise MediaStreamError
        frame = self.frames[self.index]
        self.index += 1
        await self.clock.until(float(frame.pts * frame.time_base))
        return frame


def clip_tracks(clip: Path) -> tuple[ClipTrack, ClipTrack]:
    """The clip decoded: video frames, and sound as 20 ms s16 stereo frames at 48 kHz (what aiortc's Opus
    encoder takes without buffering)."""
    video, audio = [], []
    resampler = av.AudioResampler(format="s16", layout="stereo", rate=OPUS_CLOCK, frame_size=OPUS_CLOCK // 50)
    with av.open(str(clip)) as container:
        for frame in container.decode(container.streams.video[0]):
            video.append(frame)
    with av.open(str(clip)) as container:
        for frame in container.decode(container.streams.audio[0]):
            audio.extend(resampler.resample(frame))
    audio.extend(resampler.resample(None))
    samples = 0
    for frame in audio:  # from 0, as the clip's sound starts with its picture
        frame.pts, frame.time_base, samples = samples, Fraction(1, OPUS_CLOCK), samples + frame.samples
    clock = ClipClock()
    return ClipTrack("video", video, clock), ClipTrack("audio", audio, clock)


class OpusPacketTrack(MediaStreamTrack):
    """Already-encoded sound, as OBS sends it: a clip's Opus packets, each handed to aiortc (which sends
    an ``av.Packet`` as it is) at its time. ``sent``: (when it was handed over, payload) for each."""

    kind = "audio"

    def __init__(self, clip: Path | None = None, *, noise_seconds: float = 3.0) -> None:
        """The clip's Opus packets; without a clip, ``noise_seconds`` of quiet noise (every packet differs)."""
        super().__init__()
        self.packets = _demuxed_opus(clip) if clip is not None else _noise_opus(noise_seconds)
        self.sent: list[tuple[float, bytes]] = []
        self.index = 0
        self.clock = ClipClock()

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        seconds, payload = self.packets[self.index % len(self.packets)]
        lap = self.index // len(self.packets)  # round and round: a live microphone never ends
        self.index += 1
        await self.clock.until(seconds + lap * (self.packets[-1][0] + 0.02))
        packet = av.Packet(payload)
        packet.pts, packet.time_base = round((seconds + lap * (self.packets[-1][0] + 0.02)) * OPUS_CLOCK), \
            Fraction(1, OPUS_CLOCK)
        self.sent.append((time.monotonic(), payload))
        return packet


    def lags(self, received: list[tuple[int, float, bytes]]) -> list[float]:
        """Arrival minus sending of each received packet whose payload occurs once in the clip (silence
        repeats), matched with its latest sending before it arrived."""
        unique = {p for p, n in Counter(p for _, p in self.packets).items() if n == 1}
        lags = []
        for _, arrival, payload in received:
            if payload in unique:
                sent = [t for t, p in self.sent if p == payload and t <= arrival]
                if sent:
                    lags.append(arrival - sent[-1])
        return lags


def _demuxed_opus(clip: Path) -> list[tuple[float, bytes]]:
    with av.open(str(clip)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "opus", stream.codec_context.name
        return [(float(p.pts * p.time_base), bytes(p)) for p in container.demux(stream) if p.pts is not None and p.size]


def _noise_opus(seconds: float) -> list[tuple[float, bytes]]:
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate, encoder.layout, encoder.format = OPUS_CLOCK, "mono", "s16"
    encoder.time_base = Fraction(1, OPUS_CLOCK)
    noise = np.random.default_rng(0).integers(-3000, 3000, size=(1, round(seconds * 50) * 960), dtype=np.int16)
    packets = []
    for start in range(0, noise.shape[1], 960):
        frame = av.AudioFrame.from_ndarray(noise[:, start:start + 960], format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = OPUS_CLOCK, start, Fraction(1, OPUS_CLOCK)
        packets += [(len(packets) * 0.02, bytes(p)) for p in encoder.encode(frame)]
    return packets


async def publish_clip(base_url: str, clip: Path) -> Any:
    """WHIP: the clip's video and sound, in real time on one clock."""
    pc = new_pc()
    for track in clip_tracks(clip):
        pc.addTransceiver(track, direction="sendonly")
    await _negotiate(pc, f"{base_url}/whip")
    return pc


async def watch(base_url: str, *, audio: bool = True) -> AvViewer:
    """WHEP: a viewer that takes video and (``audio``) Opus, recording what arrives when."""
    pc = new_pc()
    viewer = AvViewer(pc)
    pc.addTransceiver("video", direction="recvonly")
    if audio:
        pc.addTransceiver("audio", direction="recvonly")

    def on_track(track: MediaStreamTrack) -> None:
        arrivals = FrameArrivals()  # aiortc receives as usual; arrival times are taken as packets come in
        if track.kind == "audio":
            tap_rtp(pc, track, lambda p, t: viewer.audio.append((p.timestamp, t, p.payload)))
        else:
            tap_rtp(pc, track, arrivals.packet)
        viewer.tasks.append(asyncio.ensure_future(_read(track, viewer, arrivals)))

    pc.on("track", on_track)
    await _negotiate(pc, f"{base_url}/whep")
    return viewer


async def _read(track: MediaStreamTrack, viewer: AvViewer, arrivals: FrameArrivals) -> None:
    try:
        while True:
            frame = await track.recv()
            if track.kind == "video":  # placed at its packets' arrival, as the sound is
                viewer.video.append((arrivals.arrival(frame.pts, time.monotonic()), brightness(frame)))
    except (MediaStreamError, asyncio.CancelledError):
        pass


async def aiortc_round(base_url: str, clip: Path | None, seconds: float) -> dict[str, Any]:
    """Publish the clip (None: someone else does), watch it, and report: offsets (s), gaps (s), counts."""
    publisher = await publish_clip(base_url, clip) if clip is not None else None
    print("published", flush=True)
    viewer = await watch(base_url)
    try:
        await asyncio.sleep(seconds)
    finally:
        for task in viewer.tasks:
            task.cancel()
        await asyncio.wait_for(viewer.pc.close(), 10)
        if publisher is not None:
            await asyncio.wait_for(publisher.close(), 10)
    report = viewer.report()
    return summary(report, content_gap=viewer.content_gap(), packets=len(viewer.audio))


def summary(report: SyncReport, *, until: float | None = None, **extra: Any) -> dict[str, Any]:
    """The report as JSON-able data. Events before ``until`` (the viewer's time) are reported apart, as
    "early_offsets", not in "offsets"."""
    early = [float(click - flash) for flash, click in report.pairs if until is not None and flash < until]
    return {"offsets": [float(click - flash) for flash, click in report.pairs if until is None or flash >= until],
            "early_offsets": early, "pairs": [[float(f), float(c)] for f, c in report.pairs],
            "flash_times": [float(t) for t in report.flashes], "click_times": [float(t) for t in report.clicks],
            "flashes": len(report.flashes), "clicks": len(report.clicks),
            "events": report.events, "video_frames": report.video_frames, "audio_seconds": report.audio_seconds,
            "arrival_gap": report.longest_audio_gap, **extra}


# ---- a whole run: server and peers in a namespace of their own ------------------------------------------

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


def stop(process: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM its process group, SIGKILL if it lingers; reaped on return."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue


def start_aiortc_peers(server: subprocess.Popen, clip: Path | None, seconds: float) -> subprocess.Popen:
    """The aiortc publisher (unless ``clip`` is None) and viewer (one process, in the server's namespace);
    returns once the clip is published (the stream exists)."""
    command = _in_namespace(server, sys.executable, str(Path(__file__).resolve()), "aiortc",
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["aiortc"])
    parser.add_argument("url")
    parser.add_argument("clip", help="the clip to publish; - to only watch")
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args(argv)
    with loopback_ice():
        clip = None if args.clip == "-" else Path(args.clip)
        report = asyncio.run(aiortc_round(args.url, clip, args.seconds))
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
