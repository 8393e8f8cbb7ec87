"""Does PyAV's NVDEC decoder (h264_cuvid) open here, and does it decode faster than the CPU?

Decodes one generated H.264 clip both ways, to rgb24 numpy frames as `streamer file` does, and compares
frame count, timestamps and speed. The file job decodes on the CPU today; this measures what NVDEC would
change.

    python benchmarks/nvdec_probe.py [--seconds 20] [--size 512x512]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import av

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from media import make_clip  # noqa: E402

from streamer.config import parse_size  # noqa: E402


def decode(path: Path, decoder: str | None) -> tuple[list[int], float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if decoder is None:
            stream.thread_type = "AUTO"
            context = stream.codec_context
        else:
            context = av.CodecContext.create(decoder, "r")
            context.extradata = stream.codec_context.extradata
        pts: list[int] = []
        started = time.perf_counter()
        for packet in container.demux(stream):
            frames = packet.decode() if decoder is None else context.decode(None if packet.size == 0 else packet)
            for frame in frames:
                frame.to_ndarray(format="rgb24")
                pts.append(frame.pts)
        return pts, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--size", type=parse_size, default=(512, 512), metavar="WxH")
    args = parser.parse_args()
    width, height = args.size
    with tempfile.TemporaryDirectory() as folder:
        clip = make_clip(Path(folder) / "in.mp4", seconds=args.seconds, size=(width, height))
        cpu_pts, cpu_seconds = decode(clip, None)
        print(f"CPU decode (libavcodec h264, threads auto): {len(cpu_pts)} frames, "
              f"{len(cpu_pts) / cpu_seconds:.0f} fps")
        try:
            gpu_pts, gpu_seconds = decode(clip, "h264_cuvid")
        except Exception as exc:  # noqa: BLE001 - the answer may well be "no"
            print(f"h264_cuvid: unavailable ({type(exc).__name__}: {exc})")
            return 0
        same = "same" if gpu_pts == cpu_pts else f"DIFFERENT (first {gpu_pts[:5]} vs {cpu_pts[:5]})"
        print(f"h264_cuvid (NVDEC): {len(gpu_pts)} frames, {len(gpu_pts) / gpu_seconds:.0f} fps; timestamps {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
