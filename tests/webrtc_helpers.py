"""WebRTC test peers and a visibly-changing pipeline for the server tests (and a subprocess entry point).

``python tests/webrtc_helpers.py serve --port P ...`` runs the real server (``run_server``) with the
inverting pipeline; ``python tests/webrtc_helpers.py client URL`` streams a pattern to ``/offer`` until
killed (the "vanished peer" test SIGKILLs it); ``... viewer URL`` plays ``/whep`` until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.frames import FramePipeline  # noqa: E402

TIME_BASE = Fraction(1, 90_000)
BRIGHT, DARK = 200, 40


class InvertingPipeline(FramePipeline):
    """A FramePipeline whose effect is obvious after VP8: strength 1 inverts, 0.5 gives flat grey; a prompt
    containing "red" keeps only the red channel. ``delay`` seconds per call stand in for a model's time."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.params: dict[str, dict[str, Any]] = {}
        self.batch_sizes: list[int] = []
        self.removed: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, frames: np.ndarray, stream_ids: Sequence[str] | None = None) -> np.ndarray:
        ids = list(stream_ids or ["default"] * len(frames))
        self.batch_sizes.append(len(frames))
        if self.delay:
            time.sleep(self.delay)
        out = np.empty_like(frames)
        for i, stream_id in enumerate(ids):
            params = self.params.get(stream_id, {})
            strength = params.get("strength", 1.0)
            image = frames[i].astype(np.float32)
            image = image + strength * (255.0 - 2.0 * image)
            if "red" in params.get("prompt", ""):
                image[..., 1:] = 0
            out[i] = np.clip(image, 0, 255).astype(np.uint8)
        return out

    def update(self, stream_id: str = "default", **params: Any) -> None:
        self.params.setdefault(stream_id, {}).update({k: v for k, v in params.items() if v is not None})

    def remove_stream(self, stream_id: str) -> None:
        self.params.pop(stream_id, None)
        self.removed.append(stream_id)


def split_image(width: int, height: int) -> np.ndarray:
    """Left half bright grey, right half dark grey (RGB)."""
    image = np.full((height, width, 3), DARK, dtype=np.uint8)
    image[:, : width // 2] = BRIGHT
    return image


def write_y4m(path: Path, width: int, height: int, frames: int = 30, fps: int = 30) -> Path:
    """A clip for Chromium's fake camera: the split picture, I420, full range."""
    y = np.full((height, width), DARK, dtype=np.uint8)
    y[:, : width // 2] = BRIGHT
    chroma = np.full((height // 2) * (width // 2), 128, dtype=np.uint8).tobytes()
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            f.write(b"FRAME\n" + y.tobytes() + chroma + chroma)
    return path


def sent_pts(index: int) -> int:
    """Irregular spacing, so a server that renumbers frames cannot match it by chance."""
    return 3000 * index + 17 * (index * index % 7)


class PatternTrack(MediaStreamTrack):
    """A live camera stand-in: the split picture at ``fps``, pts from ``sent_pts``."""

    kind = "video"

    def __init__(self, width: int = 320, height: int = 240, fps: float = 30.0) -> None:
        super().__init__()
        self.image = split_image(width, height)
        self.fps = fps
        self.index = 0
        self.start: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self.start is None:
            self.start = time.monotonic()
        await asyncio.sleep(max(0.0, self.start + self.index / self.fps - time.monotonic()))
        frame = av.VideoFrame.from_ndarray(self.picture(self.index), format="rgb24")
        frame.pts, frame.time_base = self.pts(self.index), TIME_BASE
        self.index += 1
        return frame

    def picture(self, index: int) -> np.ndarray:
        """The RGB picture of frame ``index`` (a subclass may move things)."""
        return self.image

    def pts(self, index: int) -> int:
        """Frame ``index``'s pts, asked as it is sent."""
        return sent_pts(index)


@dataclass
class Received:
    pts: int
    left: np.ndarray  # mean RGB of the left half
    right: np.ndarray
    when: float


@dataclass
class Peer:
    pc: RTCPeerConnection
    frames: list[Received] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    session_id: str | None = None
    location: str | None = None
    channel: Any = None
    tasks: list[asyncio.Task] = field(default_factory=list)
    tracks: list[MediaStreamTrack] = field(default_factory=list)  # every track received
    audio_packets: int = 0  # audio frames decoded from the received audio track

    async def wait_frames(self, count: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.frames) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"got {len(self.frames)} of {count} frames in {timeout} s "
                                   f"(connection {self.pc.connectionState})")
            await asyncio.sleep(0.05)

    async def wait_until(self, predicate, timeout: float = 10.0) -> Received:
        """Wait for a frame received from now on that satisfies ``predicate``."""
        seen = len(self.frames)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for frame in self.frames[seen:]:
                if predicate(frame):
                    return frame
            seen = len(self.frames)
            await asyncio.sleep(0.05)
        last = self.frames[-1] if self.frames else None
        raise TimeoutError(f"no matching frame in {timeout} s; last: {last}")

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.wait_for(self.pc.close(), 5)


def new_pc() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


def _collect(peer: Peer, track: MediaStreamTrack) -> None:
    peer.tracks.append(track)
    if track.kind == "audio":
        peer.tasks.append(asyncio.ensure_future(_count_audio(peer, track)))
        return

    async def run() -> None:
        try:
            while True:
                frame = await track.recv()
                image = frame.to_ndarray(format="rgb24")
                half = image.shape[1] // 2
                # Leave a margin around the edge between halves (codec ringing).
                margin = max(2, image.shape[1] // 16)
                peer.frames.append(Received(frame.pts, image[:, : half - margin].reshape(-1, 3).mean(0),
                                            image[:, half + margin:].reshape(-1, 3).mean(0), time.monotonic()))
        except (MediaStreamError, asyncio.CancelledError):
            pass

    peer.tasks.append(asyncio.ensure_future(run()))


async def _count_audio(peer: Peer, track: MediaStreamTrack) -> None:
    try:
        while True:
            await track.recv()
            peer.audio_packets += 1
    except (MediaStreamError, asyncio.CancelledError):
        pass


async def _gathered_offer(pc: RTCPeerConnection) -> str:
    await asyncio.wait_for(pc.setLocalDescription(await pc.createOffer()), 10)
    return pc.localDescription.sdp


async def open_browser_like(base_url: str, *, headers: dict[str, str] | None = None, width: int = 320,
                            height: int = 240, fps: float = 30.0, channel: bool = True,
                            audio: MediaStreamTrack | None = None) -> Peer:
    """Like the page: camera (and ``audio``, its microphone) out, stylized video (and the sound) back, a
    "control" data channel, signalling via /offer."""
    pc = new_pc()
    peer = Peer(pc)
    pc.addTrack(PatternTrack(width, height, fps))
    if audio is not None:
        pc.addTrack(audio)
    pc.on("track", lambda track: _collect(peer, track))
    if channel:
        peer.channel = pc.createDataChannel("control")
        peer.channel.on("message", peer.messages.append)
    offer = await _gathered_offer(pc)
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.post(f"{base_url}/offer", json={"sdp": offer, "type": "offer"},
                             timeout=aiohttp.ClientTimeout(total=15)) as response:
            if response.status != 200:
                await pc.close()
                raise RuntimeError(f"/offer: {response.status} {await response.text()}")
            answer = await response.json()
    peer.session_id = answer["session_id"]
    await asyncio.wait_for(pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"])), 10)
    return peer


async def _whip_like(url: str, pc: RTCPeerConnection, peer: Peer, headers: dict[str, str] | None) -> Peer:
    offer = await _gathered_offer(pc)
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.post(url, data=offer, headers={"Content-Type": "application/sdp"},
                             timeout=aiohttp.ClientTimeout(total=15)) as response:
            if response.status != 201:
                await pc.close()
                raise RuntimeError(f"{url}: {response.status} {await response.text()}")
            assert response.content_type == "application/sdp"
            peer.location = response.headers["Location"]
            answer = await response.text()
    await asyncio.wait_for(pc.setRemoteDescription(RTCSessionDescription(answer, "answer")), 10)
    return peer


async def whip_publish(base_url: str, headers: dict[str, str] | None = None, **track: Any) -> Peer:
    pc = new_pc()
    pc.addTransceiver(PatternTrack(**track), direction="sendonly")
    return await _whip_like(f"{base_url}/whip", pc, Peer(pc), headers)


async def whep_play(base_url: str, headers: dict[str, str] | None = None, stream: str | None = None) -> Peer:
    pc = new_pc()
    peer = Peer(pc)
    pc.addTransceiver("video", direction="recvonly")
    pc.on("track", lambda track: _collect(peer, track))
    query = f"?stream={stream}" if stream else ""
    return await _whip_like(f"{base_url}/whep{query}", pc, peer, headers)


@contextlib.contextmanager
def loopback_ice() -> Iterator[None]:
    """ICE host candidates on 127.0.0.1 only, for every peer in this process, restored afterwards."""
    import aioice.ice

    from streamer.server.sessions import restrict_host_candidates

    original = aioice.ice.get_host_addresses
    restrict_host_candidates(["127.0.0.1"])
    try:
        yield
    finally:
        aioice.ice.get_host_addresses = original


async def _stream_forever(base_url: str) -> None:
    peer = await open_browser_like(base_url, channel=False)
    print(f"session {peer.session_id}", flush=True)
    while True:
        await asyncio.sleep(1)


async def _watch_forever(base_url: str) -> None:
    peer = await whep_play(base_url)
    await peer.wait_frames(3)
    print(f"watching {peer.location}", flush=True)
    while True:
        await asyncio.sleep(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--delay", type=float, default=0.0)
    serve.add_argument("--idle-timeout", type=float, default=10.0)
    serve.add_argument("--ice-address", action="append", default=[])
    serve.add_argument("--token", default=None)
    client = sub.add_parser("client")
    client.add_argument("url")
    viewer = sub.add_parser("viewer")
    viewer.add_argument("url")
    args = parser.parse_args(argv)
    if args.mode == "serve":
        from streamer.server.app import ServerOptions, run_server

        options = ServerOptions(host=args.host, port=args.port, idle_timeout=args.idle_timeout, token=args.token,
                                ice_addresses=args.ice_address,
                                defaults={"prompt": "", "strength": 1.0, "seed": 0, "smoothing": True})
        return run_server(options, InvertingPipeline(args.delay))
    with loopback_ice():
        asyncio.run(_stream_forever(args.url) if args.mode == "client" else _watch_forever(args.url))
    return 0


if __name__ == "__main__":
    sys.exit(main())
