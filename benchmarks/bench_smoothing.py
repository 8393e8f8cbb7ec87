"""Cost of StreamSmoother per frame (CPU here; pass --device cuda on a GPU) against a frame step.

Prints ms per frame for the smoother alone (check_input + blend_input + blend_output + remember_output)
at a working size, and, with --preset, the relative cost against that pipeline's frame step.
Speed goals are printed, never asserted: smoothing should cost <= 3% of the frame step.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from pipelines.config import SmoothingConfig
from pipelines.smoothing import StreamSmoother
from streamer.config import parse_size


def time_smoother(width: int, height: int, device: str, dtype: torch.dtype, frames: int,
                  motion_compensation: bool) -> float:
    smoother = StreamSmoother(SmoothingConfig(max_skip=0, motion_compensation=motion_compensation))
    g = torch.Generator().manual_seed(0)
    base = torch.rand(3, height, width, generator=g).to(device, dtype) * 2 - 1
    latent = torch.randn(4, height // 8, width // 8, generator=g).to(device, dtype)
    times = []
    for i in range(frames + 5):
        image = base + 0.02 * i * (torch.arange(width, device=device, dtype=dtype) / width)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        smoother.check_input(image)
        smoother.blend_output(smoother.blend_input(latent))
        smoother.remember_output(image)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times[5:])) * 1e3


def time_frame_step(preset: str, smoothing: bool, frames: int) -> tuple[float, int, int]:
    from pipelines import load_pipeline
    from streamer.eval.clips import moving_clip

    pipe = load_pipeline(preset, smoothing={"enabled": smoothing, "max_skip": 0})
    config = pipe.config
    clip = moving_clip(frames + 3, config.width, config.height)
    times = []
    for frame in clip.frames:
        start = time.perf_counter()
        pipe(frame[None])
        times.append(time.perf_counter() - start)
    return float(np.median(times[3:])) * 1e3, config.width, config.height


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=parse_size, default=(512, 512), metavar="WxH", help="working size WxH for the smoother alone")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--preset", default="analytic", help="pipeline whose frame step to compare with")
    args = parser.parse_args()
    width, height = args.size
    dtype = getattr(torch, args.dtype)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for mc in (False, True):
        ms = time_smoother(width, height, args.device, dtype, args.frames, mc)
        print(f"smoother {width}x{height} {args.device} {args.dtype} motion_compensation={mc}: {ms:.3f} ms/frame")
    if args.preset:
        off, w, h = time_frame_step(args.preset, False, args.frames)
        on, _, _ = time_frame_step(args.preset, True, args.frames)
        alone = time_smoother(w, h, "cpu", torch.float32, args.frames, False)
        print(f"preset {args.preset} ({w}x{h}): frame step {off:.2f} ms off, {on:.2f} ms on; smoother alone "
              f"{alone:.3f} ms = {100 * alone / off:.1f}% of the frame step (goal <= 3%)")


if __name__ == "__main__":
    main()
