"""Sound and picture through `streamer serve`: a flash-and-click clip (streamer.eval.av_sync) published over
WHIP and watched over WHEP, the offsets between flashes and clicks measured at the viewer.

Two viewers, two WebRTC implementations: aiortc (here) and GStreamer's webrtcbin (tests/gst_webrtc_peer.py
``play --audio-out``). Times at the aiortc viewer are arrival times (a frame when its first RTP packet
arrived, a sound when its packet arrived): what a player that shows and plays things as they come gets. webrtcbin's are its
buffers' timestamps after its jitter buffers, which sync audio and video by RTCP sender reports: what a
GStreamer player renders.

The peers run in the server's loopback-only network namespace (tests/av_measure.py makes it):
``python tests/av_webrtc.py aiortc URL CLIP`` publishes (CLIP ``-``: someone else does) and watches; its
report is one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
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

from streamer.eval.av_sync import SyncReport, brightness, measure  # noqa: E402
from streamer.server.audio import OPUS_CLOCK  # noqa: E402
from streamer.server.rtp import FrameArrivals, tap_rtp  # noqa: E402
from tests.webrtc_helpers import loopback_ice, new_pc  # noqa: E402


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
