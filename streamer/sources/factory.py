"""Turn a source spec from the command line or a config into an (unopened) Source."""

from __future__ import annotations

import os
import re
import stat

from streamer.sources.base import Source, SourceError

SUPPORTED = (
    "webcam:N or /dev/videoN (a camera), rtsp:// rtsps:// http(s):// srt:// udp:// rtmp:// (a network stream), "
    "a file path, pipe: or a FIFO path (a live pipe), testsrc or testsrc:WxH@FPS (a test pattern)"
)
_TESTSRC = re.compile(r"testsrc(?::(?P<w>\d+)x(?P<h>\d+))?(?:@(?P<fps>\d+(?:\.\d+)?))?")
_SCHEME = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*):")
_WINDOWS_DRIVE = re.compile(r"[A-Za-z]:[\\/]")


def open_source(
    spec: str,
    *,
    width: int | None = None,
    height: int | None = None,
    fps: float | None = None,
    realtime: bool = False,
    loop: bool = False,
    transport: str = "tcp",
    timeout: float = 5.0,
    stream_id: str = "default",
) -> Source:
    """An unopened Source for ``spec``; raises SourceError (one line) for a spec it cannot serve.

    ``width``/``height`` scale the frames (cameras and test patterns are asked for that size);
    ``fps`` is asked of cameras and test patterns; ``realtime`` plays a file at its own rate as if it were
    live; ``loop`` restarts a file at its end with pts still increasing; ``transport`` is the RTSP
    transport (tcp or udp); ``timeout`` bounds connecting and each ``read`` wait, in seconds.
    """
    spec = spec.strip()
    if not spec:
        raise SourceError(f"empty source: use one of {SUPPORTED}")
    from streamer.sources.files import FileSource, PipeSource, RealtimeFileSource
    from streamer.sources.network import NETWORK_SCHEMES, NetworkSource

    common = {"width": width, "height": height, "stream_id": stream_id}
    live = {**common, "timeout": timeout}

    test_match = _TESTSRC.fullmatch(spec)
    if test_match:
        return _test_source(test_match, width, height, fps)
    if spec == "webcam" or spec.startswith("webcam:") or re.fullmatch(
        r"/dev/video\d+", spec
    ):
        from streamer.sources.webcam import WebcamSource

        return WebcamSource(spec, fps=fps, **live)
    if spec in ("-", "pipe:", "pipe:0"):  # standard input; other pipes are given by their FIFO path
        return PipeSource(spec, **live)

    scheme = _SCHEME.match(spec)
    if scheme and not _WINDOWS_DRIVE.match(spec) and not os.path.exists(spec):
        name = scheme.group("scheme").lower()
        if name in NETWORK_SCHEMES:
            return NetworkSource(spec, transport=transport, **live)
        if name != "file":
            raise SourceError(f"unsupported source {spec!r} (scheme {name}:); use one of: {SUPPORTED}")
        spec = re.sub(r"^file:(//)?", "", spec, flags=re.IGNORECASE)

    try:
        mode = os.stat(spec).st_mode
    except FileNotFoundError:
        raise SourceError(f"no such file: {spec} (expected one of: {SUPPORTED})") from None
    except OSError as exc:
        raise SourceError(f"cannot read {spec}: {exc.strerror}") from None
    if stat.S_ISFIFO(mode):
        return PipeSource(spec, **live)
    if stat.S_ISDIR(mode):
        raise SourceError(f"{spec} is a folder; give a video file inside it")
    if realtime:
        return RealtimeFileSource(spec, loop=loop, **live)
    return FileSource(spec, loop=loop, **common)


def _test_source(match: re.Match[str], width: int | None, height: int | None, fps: float | None) -> Source:
    from streamer.sources.testsrc import TestSource

    return TestSource(
        width=int(match.group("w") or width or 640),
        height=int(match.group("h") or height or 360),
        fps=float(match.group("fps") or fps or 30.0),
    )
