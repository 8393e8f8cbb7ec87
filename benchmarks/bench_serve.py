"""`streamer serve` end to end with 1, 4, 8 aiortc sessions: fps per session, p95 capture-to-return latency,
frames per model call.

    python benchmarks/bench_serve.py --preset sd15-random --device cuda --sessions 1,4,8 --seconds 20 \\
        --size 512 [--submit-ahead] [--json out.json] [--serve-arg=--graph --serve-arg=seams]

Starts `python -m streamer serve` on 127.0.0.1 (a free port; ICE on loopback; compiling at start-up for the
largest session count), then for each session count runs that many client processes, one per session, so
each encodes and decodes its own VP8 on its own core. A client sends a camera-like picture (a square moving
over a gradient, so smoothing never skips) at --fps for --seconds and times each frame that comes back by
its pts: capture (the moment the client's track produced it) to return (decoded at the client). The first
--settle seconds of each run are left out. Frames per model call come from the server's /metrics
(``streamer_batch_size``), as the difference over each run. Prints one line per count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch_totals(url: str) -> tuple[float, float]:
    """(sum, count) of the server's frames-per-model-call histogram."""
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    found = {m.group(1): float(m.group(2)) for m in re.finditer(r"^streamer_batch_size_(sum|count)\S* (\S+)$",
                                                                 text, re.M)}
    return found.get("sum", 0.0), found.get("count", 0.0)


async def _client(url: str, seconds: float, size: int, fps: float, settle: float) -> dict:
    import numpy as np
    from aiortc.mediastreams import MediaStreamError
    from webrtc_helpers import PatternTrack as _Base
    from webrtc_helpers import Peer, _gathered_offer, new_pc

    sent: dict[int, float] = {}
    back: list[tuple[float, float]] = []  # (sent, returned)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    base = np.stack([np.add.outer(ramp, ramp) / 2, np.tile(ramp, (size, 1)),
                     np.tile(ramp[:, None], (1, size))], axis=-1)

    class Camera(_Base):
        """The test camera's pacing, with a square moving over a smooth picture (smoothing never skips it)
        and each frame's send time kept by its pts."""

        def picture(self, index: int) -> np.ndarray:
            side = size // 8
            x = (index * 4) % (size - side)
            image = base.copy()
            image[x:x + side, x:x + side] = 255 - image[x:x + side, x:x + side]
            return image.astype(np.uint8)

        def pts(self, index: int) -> int:
            sent[3000 * index] = time.monotonic()
            return 3000 * index

    import aiohttp

    pc = new_pc()
    peer = Peer(pc)
    pc.addTrack(Camera(size, size, fps))

    def on_track(track) -> None:
        async def run() -> None:
            try:
                while True:
                    frame = await track.recv()
                    if frame.pts in sent:
                        back.append((sent[frame.pts], time.monotonic()))
            except (MediaStreamError, asyncio.CancelledError):
                pass

        peer.tasks.append(asyncio.ensure_future(run()))

    pc.on("track", on_track)
    offer = await _gathered_offer(pc)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/offer", json={"sdp": offer, "type": "offer"},
                             timeout=aiohttp.ClientTimeout(total=30)) as response:
            if response.status != 200:
                raise RuntimeError(f"/offer: {response.status} {await response.text()}")
            answer = await response.json()
    from aiortc import RTCSessionDescription

    await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
    started = time.monotonic()
    await asyncio.sleep(seconds)
    await peer.close()
    window = [(s, r) for s, r in back if s >= started + settle]
    span = max(1e-9, seconds - settle)
    latencies = sorted(r - s for s, r in window)

    def pct(q: float) -> float | None:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 1) if latencies else None

    return {"sent": len(sent), "returned": len(back), "fps": round(len(window) / span, 2),
            "latency_p50_ms": pct(0.5), "latency_p95_ms": pct(0.95)}


def client_main(args: argparse.Namespace) -> int:
    from webrtc_helpers import loopback_ice

    with loopback_ice():
        result = asyncio.run(_client(args.url, args.seconds, args.size, args.fps, args.settle))
    print(json.dumps(result), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    client = argv[:1] == ["client"]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    if client:
        parser.add_argument("mode")
        parser.add_argument("url")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--size", type=int, default=512, help="square frame side the clients send")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds at the start of a run left out")
    parser.add_argument("--preset", default="sd15-random")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sessions", default="1,4,8")
    parser.add_argument("--submit-ahead", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--start-timeout", type=float, default=400.0, help="seconds the server may take to start")
    parser.add_argument("--serve-arg", action="append", default=[], dest="serve_args",
                        help="one more `streamer serve` argument, repeatable (--serve-arg=--graph --serve-arg=seams)")
    args = parser.parse_args(argv)
    if client:
        return client_main(args)
    from servers import start_streamer

    counts = [int(n) for n in args.sessions.split(",")]
    port = _free_port()
    folder = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    served = start_streamer(
        ["serve", "--preset", args.preset, "--device", args.device, "--port", str(port), "--ice-address",
         "127.0.0.1", "--max-sessions", str(max(counts)), "--max-batch", str(max(counts)),
         "--resolution", f"{args.size}x{args.size}",
         *(["--submit-ahead"] if args.submit_ahead else []), *args.serve_args],
        folder / "serve.log", r"serving on (http://127\.0\.0\.1:\d+)/", timeout=args.start_timeout, cwd=ROOT,
        env={"STREAMER_TOKEN": ""})
    rows = []
    try:
        print(f"server ready: {served.url} ({args.preset} on {args.device})", flush=True)
        for count in counts:
            before = _batch_totals(served.url)
            clients = [subprocess.Popen(
                [sys.executable, __file__, "client", served.url, "--seconds", str(args.seconds), "--size",
                 str(args.size), "--fps", str(args.fps), "--settle", str(args.settle)],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(count)]
            results = []
            for proc in clients:
                out, _ = proc.communicate(timeout=args.seconds + 90)
                lines = [line for line in out.splitlines() if line.startswith("{")]
                results.append(json.loads(lines[-1]) if lines else {"error": f"client exit {proc.returncode}"})
            after = _batch_totals(served.url)
            calls = after[1] - before[1]
            ok = [r for r in results if "fps" in r]
            p95s = [r["latency_p95_ms"] for r in ok if r["latency_p95_ms"] is not None]
            row = {"sessions": count, "fps_per_session": [r["fps"] for r in ok],
                   "min_fps": min((r["fps"] for r in ok), default=0.0),
                   "p95_latency_ms": max(p95s, default=None),
                   "frames_per_model_call": round((after[0] - before[0]) / calls, 2) if calls else None,
                   "clients": results}
            rows.append(row)
            print(f"{count} session(s): fps per session {row['fps_per_session']} (min {row['min_fps']}), "
                  f"p95 capture-to-return {row['p95_latency_ms']} ms (worst session), "
                  f"{row['frames_per_model_call']} frames per model call", flush=True)
            if args.json is not None:
                args.json.write_text(json.dumps({"preset": args.preset, "size": args.size, "fps": args.fps,
                                                 "submit_ahead": args.submit_ahead, "rows": rows}, indent=2))
            time.sleep(2)  # sessions close; their slots free
    finally:
        served.stop()
        log = (folder / "serve.log").read_text(errors="replace")
        lines = [line for line in log.splitlines() if not line.startswith("DEBUG")]
        print("server log (last lines):\n" + "\n".join(lines[-8:]), flush=True)
    return 0 if all(r["fps_per_session"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
