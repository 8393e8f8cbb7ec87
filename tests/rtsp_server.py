"""A real RTSP server for tests: GStreamer's RTSP server serving a live H.264 test pattern.

Run it under the system Python (``/usr/bin/python3``), because ``gi`` does not import inside a pip venv:

    /usr/bin/python3 tests/rtsp_server.py --port 8554 [--path /test] [--size 320x240] [--fps 30]

It prints ``READY rtsp://127.0.0.1:PORT/PATH`` on stdout once it listens, then serves until killed.
Both RTP over the RTSP TCP connection and RTP over UDP work. Binds to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

MARK_BITS = 32


def _marked_frame(width: int, height: int, index: int, capture_ms: int) -> bytes:
    """A GRAY8 frame in testsrc's mark layout: rows of 32 black/white blocks (index, ms, ~index)."""
    block_w, block_h = width // MARK_BITS, max(8, height // 24)
    image = bytearray(b"\x80" * (width * height))
    mask = (1 << MARK_BITS) - 1
    for row, value in enumerate((index & mask, capture_ms & mask, ~index & mask)):
        line = b"".join(
            (b"\xff" if (value >> (MARK_BITS - 1 - bit)) & 1 else b"\x00") * block_w for bit in range(MARK_BITS)
        )
        for y in range(row * block_h, (row + 1) * block_h):
            image[y * width : y * width + len(line)] = line
    return bytes(image)


def _feed_marks(media: GstRtspServer.RTSPMedia, width: int, height: int, fps: int) -> None:
    appsrc = media.get_element().get_by_name("marks")
    state = {"index": 0, "start": time.monotonic()}

    def need_data(src: Gst.Element, _length: int) -> None:
        due = state["start"] + state["index"] / fps
        time.sleep(max(0.0, due - time.monotonic()))  # pace like a camera: one frame per period
        capture_ms = int(time.monotonic() * 1000)
        data = _marked_frame(width, height, state["index"], capture_ms)
        src.emit("push-buffer", Gst.Buffer.new_wrapped(data))
        state["index"] += 1

    appsrc.connect("need-data", need_data)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/test")
    parser.add_argument("--size", default="320x240", help="WIDTHxHEIGHT")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--pattern", default="smpte", help="videotestsrc pattern")
    parser.add_argument(
        "--marks", action="store_true",
        help="send gray frames carrying the frame index and CLOCK_MONOTONIC ms at capture in their top rows, "
        "in the layout streamer.sources.testsrc.read_marks reads (for glass-to-frame latency)",
    )
    parser.add_argument(
        "--clip", default=None,
        help="serve this MP4 (H.264 video, AAC audio) instead of a test pattern, in real time (once); its "
        "audio goes out as a second RTP stream (pay1), as an IP camera with a microphone sends it",
    )
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    encode = "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! rtph264pay name=pay0 pt=96 config-interval=1"
    if args.clip:
        factory.set_launch(
            f"( filesrc location={args.clip} ! qtdemux name=d "
            "d.video_0 ! queue ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 "
            "d.audio_0 ! queue ! aacparse ! rtpmp4gpay name=pay1 pt=97 )"
        )
    elif args.marks:
        factory.set_launch(
            f"( appsrc name=marks is-live=true format=time do-timestamp=true "
            f"caps=video/x-raw,format=GRAY8,width={width},height={height},framerate={args.fps}/1 "
            f"! videoconvert ! video/x-raw,format=I420 ! {encode} )"
        )
        factory.connect("media-configure", lambda _f, media: _feed_marks(media, width, height, args.fps))
    else:
        factory.set_launch(
            f"( videotestsrc is-live=true pattern={args.pattern} "
            f"! video/x-raw,width={width},height={height},framerate={args.fps}/1 ! {encode} )"
        )
    # One pipeline for every client, so a second client does not start a second encoder.
    factory.set_shared(True)
    server.get_mount_points().add_factory(args.path, factory)
    if server.attach(None) == 0:
        print(f"ERROR cannot listen on 127.0.0.1:{args.port}", flush=True)
        return 1

    loop = GLib.MainLoop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signum, loop.quit)
    print(f"READY rtsp://127.0.0.1:{args.port}{args.path}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
