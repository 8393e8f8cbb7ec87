"""`streamer batch` throughput with 1 and 2 workers on the same generated files: files/s and frames/s.

    python benchmarks/bench_batch.py [--files 8] [--seconds 3] [--preset tiny] [--device cpu]
    python benchmarks/bench_batch.py --ray local --worker-cpus 0.5       # Ray actors on a local cluster
    python benchmarks/bench_batch.py --ray local --preset lcm-dreamshaper --workers 1 2 --batch 8  # GPUs

Each run is the real CLI into a fresh output folder; the numbers come from its summary JSON (the batch's
own clock: workers starting and loading the model included, so short runs favour fewer workers). On this
project's 2-core CI machine run it in a loopback-only network namespace, as the tests do:
``unshare -n sh -c 'ip link set lo up && exec "$@"' sh python benchmarks/bench_batch.py --ray local``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from media import make_clip  # noqa: E402


def run(clips: Path, out: Path, workers: int, args: argparse.Namespace) -> dict:
    command = [sys.executable, "-m", "streamer", "batch", str(clips), "--out", str(out), "--preset", args.preset,
               "--device", args.device, "--batch", str(args.batch), "--workers", str(workers), "--no-progress"]
    if args.ray:
        command += ["--ray", args.ray, "--worker-cpus", str(args.worker_cpus)]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    if args.device == "cpu":
        env.setdefault("OMP_NUM_THREADS", "1")  # one thread per worker: workers do not fight over cores
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"streamer batch failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary = json.loads((out / "streamer-batch.json").read_text())
    file_seconds = [entry["seconds"] for entry in summary["files"].values()]
    return {"workers": workers, "wall_s": wall, "batch_s": summary["seconds"], "files": summary["done"],
            "frames": summary["frames"], "files_per_s": summary["done"] / summary["seconds"],
            "frames_per_s": summary["frames"] / summary["seconds"],
            "busy_frames_per_s": summary["frames"] / sum(file_seconds) * workers}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=8, help="generated clips (default 8)")
    parser.add_argument("--seconds", type=float, default=3.0, help="clip length at 30 fps (default 3)")
    parser.add_argument("--size", default="320x240", help="clip size (default 320x240)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to compare")
    parser.add_argument("--ray", default=None, metavar="ADDRESS", help="local, auto or HOST:PORT (default: threads)")
    parser.add_argument("--worker-cpus", type=float, default=0.5)
    parser.add_argument("--json", action="store_true", help="one JSON line per run instead of the table")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        clips = Path(tmp) / "clips"
        clips.mkdir()
        for index in range(args.files):
            make_clip(clips / f"clip{index:02d}.mp4", seconds=args.seconds, size=(width, height), audio=True)
        where = f"Ray ({args.ray})" if args.ray else "local threads"
        if not args.json:
            print(f"{args.files} files x {args.seconds:g} s {args.size}, preset {args.preset} on {args.device}, {where}")
            print(f"{'workers':>7} {'batch s':>8} {'files/s':>8} {'frames/s':>9} {'busy fr/s':>9}")
        for workers in args.workers:
            result = run(clips, Path(tmp) / f"out-{workers}", workers, args)
            if args.json:
                print(json.dumps(result))
            else:
                print(f"{workers:>7} {result['batch_s']:>8.1f} {result['files_per_s']:>8.3f} "
                      f"{result['frames_per_s']:>9.1f} {result['busy_frames_per_s']:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
