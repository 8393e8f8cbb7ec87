"""PyAV (FFmpeg) helpers the sources share: open a file, decode its video, describe an error.

The sources themselves: sources/threaded.py (reader thread, latest-frame slot, reconnect), av_live.py
(live PyAV inputs), network.py (network streams), files.py (files and pipes), webcam.py, testsrc.py.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import av
import av.error
import numpy as np

from streamer.picture import upright_rgb
from streamer.sources.base import SourceError

log = logging.getLogger(__name__)

_NO_TIMESTAMPS = int(av.format.Flags.no_timestamps.value)


def describe_error(exc: BaseException, timeout: float | None = None) -> str:
    """One short line for an FFmpeg/OS error, without Python noise."""
    if isinstance(exc, av.error.ExitError):
        return f"no data within {timeout:g} s" if timeout else "timed out"
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(reason).split())


# ---------------------------------------------------------------------------------------------------------
# PyAV decoding shared by live and file sources


def video_to_rgb(frame: av.VideoFrame, width: int | None, height: int | None) -> np.ndarray:
    """RGB as a player shows the frame: turned upright by its display matrix (a phone's portrait clip),
    colours by its own tags, scaled to ``width`` x ``height`` when given."""
    return upright_rgb(frame, width, height)


def stream_fps(stream: av.video.stream.VideoStream) -> float | None:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else None


def decode_video(container: av.container.InputContainer, stop: threading.Event | None = None) -> Iterator[av.VideoFrame]:
    """Every decodable video frame of the first video stream; corrupt packets are skipped, not fatal."""
    stream = container.streams.video[0]
    for packet in container.demux(stream):
        if stop is not None and stop.is_set():
            return
        try:
            yield from packet.decode()
        except av.error.InvalidDataError:
            log.debug("skipped a corrupt packet in %s", container.name)


def invents_timestamps(container: av.container.InputContainer) -> bool:
    """True for inputs whose pts FFmpeg makes up at a nominal rate (raw MJPEG, image pipes, multipart)."""
    fmt = container.format
    return bool(fmt.flags & _NO_TIMESTAMPS) or fmt.name.endswith("_pipe")


def first_video_stream(container: av.container.InputContainer, name: str) -> av.video.stream.VideoStream:
    if not container.streams.video:
        container.close()
        raise SourceError(f"{name}: no video stream in this input")
    return container.streams.video[0]


def open_file(path: str) -> av.container.InputContainer:
    try:
        return av.open(path)
    except av.error.FileNotFoundError:
        raise SourceError(f"no such file: {path}") from None
    except (av.error.FFmpegError, OSError) as exc:
        raise SourceError(f"cannot read {path} as video: {describe_error(exc)}") from None
