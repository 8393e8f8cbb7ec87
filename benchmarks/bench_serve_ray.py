"""`streamer serve --ray`: sessions per replica. For 1 and 2 replicas, open 1, 2, ... sessions per replica
(real aiortc peers sending a test pattern through the ingress) and report the stylized frames per second
each session gets back.

    # here (2 cores, tiny preset on CPU), inside a loopback-only network namespace as the tests run Ray:
    unshare -n sh -c 'ip link set lo up && exec "$@"' sh python benchmarks/bench_serve_ray.py
    # on a machine with 2 GPUs (each replica takes one), a real model at 512x512, 30 fps peers:
    python benchmarks/bench_serve_ray.py --preset lcm-dreamshaper --device cuda --replica-cpus 2 \\
        --sessions 1 2 4 8 --size 512x512 --fps 30

Numbers are the peers' own counts of frames received over ``--seconds`` after a warm-up; a session that
gets fewer than the sent fps is where the replica's GPU (or CPU) is full.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from webrtc_helpers import Peer, loopback_ice, open_browser_like  # noqa: E402


def start(replicas: int, args: argparse.Namespace, log: Path) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "streamer", "serve", "--ray", args.ray, "--replicas", str(replicas),
               "--max-sessions", str(max(args.sessions)), "--preset", args.preset, "--device", args.device,
               "--port", str(args.port), "--ice-address", "127.0.0.1", "--replica-cpus", str(args.replica_cpus)]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    if args.device == "cpu":
        env.setdefault("OMP_NUM_THREADS", "1")
    with open(log, "wb") as err:
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True)
    deadline = time.monotonic() + 600
    while not (found := re.search(r"serving on (http://\S+?)/ ", log.read_text(errors="replace"))):
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            sys.exit(f"streamer serve --ray did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.5)
    return server, found.group(1)


def stop(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=10)


async def measure(base: str, replicas: int, args: argparse.Namespace) -> list[dict]:
    width, height = args.size
    peers: list[Peer] = []
    rows = []
    try:
        for per_replica in sorted(args.sessions):
            while len(peers) < per_replica * replicas:
                peers.append(await open_browser_like(base, channel=False, width=width, height=height, fps=args.fps))
            await asyncio.sleep(args.warmup)
            counts = [len(p.frames) for p in peers]
            await asyncio.sleep(args.seconds)
            fps = [(len(p.frames) - c) / args.seconds for p, c in zip(peers, counts, strict=True)]
            spread = {}
            for p in peers:
                spread[p.session_id.split(".")[0]] = spread.get(p.session_id.split(".")[0], 0) + 1
            rows.append({"replicas": replicas, "per_replica": per_replica, "sessions": len(peers),
                         "fps_mean": statistics.mean(fps), "fps_min": min(fps), "total_fps": sum(fps),
                         "spread": sorted(spread.values())})
            print(f"  {replicas} replica(s), {len(peers)} sessions {sorted(spread.values())}: "
                  f"{statistics.mean(fps):.1f} fps per session (min {min(fps):.1f}), {sum(fps):.1f} in all",
                  file=sys.stderr, flush=True)
    finally:
        for peer in peers:
            await peer.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ray", default="local", help="local (default), auto or HOST:PORT")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 2], help="sessions per replica to try")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--replica-cpus", type=float, default=0.4)
    parser.add_argument("--size", type=lambda s: tuple(int(v) for v in s.split("x")), default=(160, 120))
    parser.add_argument("--fps", type=float, default=15.0, help="frames per second each peer sends")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, loopback_ice():
        for replicas in args.replicas:
            server, base = start(replicas, args, Path(tmp) / f"serve-{replicas}.log")
            try:
                rows += asyncio.run(measure(base, replicas, args))
            finally:
                stop(server)
    print(f"preset {args.preset} on {args.device}, peers send {args.size[0]}x{args.size[1]} at {args.fps:g} fps")
    print("| replicas | sessions | per replica | fps per session (mean / min) | fps in all |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['replicas']} | {row['sessions']} | {row['per_replica']} | {row['fps_mean']:.1f} / "
              f"{row['fps_min']:.1f} | {row['total_fps']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
