"""File passthrough throughput: decode -> (no model) -> encode at 640x360, the cost `streamer file` adds
around the model. Target: >= 200 fps on a 2-core machine.

    python benchmarks/bench_file.py [--seconds 20] [--size 640x360] [--encoder-preset veryfast]
    python benchmarks/bench_file.py --preset lcm-dreamshaper --size 512x512 --batch 8 --smoothing off

With --preset the model runs too: `streamer file` end to end (issue target on an H100/H200-class GPU:
>= 150 fps at 512x512).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from media import make_clip  # noqa: E402

from pipelines.passthrough import PassthroughPipeline  # noqa: E402
from streamer.config import parse_size  # noqa: E402
from streamer.engine.file_job import stylize_file  # noqa: E402
from streamer.media.av_io import decode_video, open_file, video_to_rgb  # noqa: E402

TARGET_FPS = 200.0


def decode_only_fps(path: Path) -> float:
    """Decode plus rgb24 conversion alone: the ceiling for the whole job."""
    started = time.perf_counter()
    with open_file(path) as container:
        container.streams.video[0].thread_type = "AUTO"
        count = sum(1 for frame in decode_video(container) if video_to_rgb(frame) is not None)
    return count / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="clip length at 30 fps (default 20)")
    parser.add_argument("--size", type=parse_size, default=(640, 360), metavar="WxH")
    parser.add_argument("--encoder-preset", default=None, help="x264 preset (default: the sink's, veryfast)")
    parser.add_argument("--audio", action=argparse.BooleanOptionalAction, default=True, help="AAC track")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the best is reported (default 3)")
    parser.add_argument("--preset", default=None, help="run this model preset (default: no model)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=4, help="frames per model call (default 4)")
    parser.add_argument("--smoothing", choices=["on", "off"], default="on")
    args = parser.parse_args()
    if args.preset:
        from pipelines import load_pipeline

        started = time.perf_counter()
        pipeline = load_pipeline(args.preset, device=args.device, smoothing={"enabled": args.smoothing == "on"},
                                 compile_batch_sizes=[args.batch])
        print(f"{args.preset} loaded (and compiled, on CUDA) in {time.perf_counter() - started:.1f} s")
    else:
        pipeline = PassthroughPipeline()

    with tempfile.TemporaryDirectory() as folder:
        clip = make_clip(Path(folder) / "in.mp4", seconds=args.seconds, size=args.size, audio=args.audio)
        print(f"clip: {args.seconds:g} s {args.size[0]}x{args.size[1]} 30 fps H.264"
              f"{' + AAC' if args.audio else ''}")
        print(f"decode + rgb24 only: {decode_only_fps(clip):.0f} fps")
        options = {"preset": args.encoder_preset} if args.encoder_preset else None
        best = None
        for run in range(args.repeat):
            summary = stylize_file(clip, Path(folder) / "out.mp4", pipeline, batch=args.batch,
                                   encoder_options=options, overwrite=True)
            print(f"run {run + 1}: {summary.report()}")
            if best is None or summary.fps > best.fps:
                best = summary
    assert best is not None
    if args.preset:
        print(f"file with {args.preset}: {best.fps:.1f} fps end to end (best of {args.repeat})")
        return 0
    verdict = "meets" if best.fps >= TARGET_FPS else "misses"
    print(f"file passthrough: {best.fps:.0f} fps (best of {args.repeat}); {verdict} the {TARGET_FPS:.0f} fps target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
