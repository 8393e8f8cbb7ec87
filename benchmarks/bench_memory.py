"""Memory over a long run: N frames through the frame step, memory sampled every K frames.

Host memory (resident set) always; on CUDA also allocated and reserved GPU memory. Memory must stay flat:
the script prints the growth between the first and the last quarter of the run.

    python benchmarks/bench_memory.py [--preset tiny] [--frames 10000] [--batch 1] [--device auto]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

from pipelines import load_pipeline
from streamer.config import parse_size


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--every", type=int, default=500, help="sample memory every this many frames")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=parse_size, default=(512, 512), metavar="WxH", help="input frame size WxH (default 512x512)")
    args = parser.parse_args()
    width, height = args.size
    pipe = load_pipeline(args.preset, device=args.device, compile_batch_sizes=[args.batch])
    cuda = torch.cuda.is_available() and str(getattr(pipe, "device", "cpu")).startswith("cuda")
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (args.batch, height, width, 3), dtype=np.uint8)
    samples: list[tuple[int, float, float, float]] = []
    started = time.perf_counter()
    done = 0
    while done < args.frames:
        frames = np.roll(base, done % width, axis=2)  # a moving picture: smoothing does real work
        pipe(frames, [f"s{i}" for i in range(args.batch)])
        done += args.batch
        if done % args.every < args.batch:
            gpu = torch.cuda.memory_allocated() / 2**20 if cuda else 0.0
            reserved = torch.cuda.memory_reserved() / 2**20 if cuda else 0.0
            samples.append((done, rss_mb(), gpu, reserved))
            print(f"{done:>7} frames  host {samples[-1][1]:8.1f} MB  gpu allocated {gpu:8.1f} MB  "
                  f"reserved {reserved:8.1f} MB  {done / (time.perf_counter() - started):7.1f} fps", flush=True)
    quarter = max(1, len(samples) // 4)
    first, last = samples[:quarter], samples[-quarter:]
    for name, column in (("host", 1), ("gpu allocated", 2), ("gpu reserved", 3)):
        growth = np.mean([s[column] for s in last]) - np.mean([s[column] for s in first])
        print(f"{name}: {growth:+.1f} MB from the first to the last quarter of {done} frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
