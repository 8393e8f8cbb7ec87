"""The one place streamer reads media with PyAV: open an input with a clear error, pick its video stream,
describe FFmpeg errors in the user's terms, decode video frames (and pass audio packets through in file
order), the frame rate, and the picture's rotation and colour tags from the same open container.

Used by the sources (``streamer.sources``), the file job (``streamer.engine.file_job``), eval's clip reader and
the tests' media helpers, so every reader skips damage, reports errors and turns pictures the same way.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from pathlib import Path

import av
import av.error
import numpy as np
from av.video.reformatter import VideoReformatter

from streamer.media.picture import PictureInfo, quarter_turns, upright_size
from streamer.sources.base import SourceError

log = logging.getLogger(__name__)

_NO_TIMESTAMPS = int(av.format.Flags.no_timestamps.value)
MAX_PEEK_ITEMS = 300  # an input whose first 300 items hold no decodable picture is shown with the defaults
DEFAULT_FPS = 30.0

MediaItem = av.VideoFrame | av.Packet  # what ``decode_media`` yields: decoded video, audio still in packets


def describe_error(exc: BaseException, timeout: float | None = None) -> str:
    """One short line for an FFmpeg/OS error, without Python noise."""
    if isinstance(exc, av.error.ExitError):
        return f"no data within {timeout:g} s" if timeout else "timed out"
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(reason).split())


def open_file(path: str | os.PathLike[str], *, what: str = "input") -> av.container.InputContainer:
    """Open a local media file that holds video; SourceError (one line) when it is missing, a folder,
    not something FFmpeg reads, or holds no video stream."""
    path = Path(path)
    if not path.exists():
        raise SourceError(f"{what} file {path} does not exist")
    if path.is_dir():
        raise SourceError(f"{what} {path} is a folder; give a video file")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"cannot read {path}: not a video file FFmpeg understands ({describe_error(exc)})") from None
    first_video_stream(container, str(path), hint="; give a video file")
    return container


def first_video_stream(container: av.container.InputContainer, name: str, *,
                       hint: str = "") -> av.video.stream.VideoStream:
    """The input's first video stream; SourceError naming what it holds instead (the container is closed)."""
    if not container.streams.video:
        kinds = ", ".join(f"{s.type} {s.codec_context.name}" for s in container.streams) or "nothing"
        container.close()
        raise SourceError(f"{name} has no video stream (it holds: {kinds}){hint}")
    return container.streams.video[0]


def stream_fps(stream: av.video.stream.VideoStream) -> float | None:
    """The stream's nominal frame rate, None when the header does not say."""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else None


def expected_frames(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int | None:
    """How many frames the header announces (counted, or duration x rate), None when it cannot tell."""
    if stream.frames:
        return int(stream.frames)
    rate = stream.average_rate or stream.guessed_rate
    if not rate:
        return None
    if stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration:
        seconds = container.duration / av.time_base
    else:
        return None
    return max(1, round(seconds * float(rate)))


def invents_timestamps(container: av.container.InputContainer) -> bool:
    """True for inputs whose pts FFmpeg makes up at a nominal rate (raw MJPEG, image pipes, multipart)."""
    fmt = container.format
    return bool(fmt.flags & _NO_TIMESTAMPS) or fmt.name.endswith("_pipe")


def decode_media(
    container: av.container.InputContainer,
    video: av.video.stream.VideoStream | None = None,
    *,
    audio: Iterable[av.stream.Stream] = (),
    stop: threading.Event | None = None,
    on_damage: Callable[[], None] | None = None,
    max_demux_errors: int | None = None,
) -> Iterator[MediaItem]:
    """Decoded frames of ``video`` (default: the first video stream) and the packets of ``audio``, in file
    order. A packet that does not decode is skipped (``on_damage`` is called). A demuxer error is raised
    (a live input: time to reconnect), or with ``max_demux_errors`` (a damaged file) the stretch is
    skipped and counted, and after that many in a row the input ends as if it were complete. Ends early
    once ``stop`` is set."""
    video = video if video is not None else container.streams.video[0]
    streams = [video, *audio]
    errors_in_a_row = 0
    while True:
        try:
            for packet in container.demux(streams):
                errors_in_a_row = 0
                if stop is not None and stop.is_set():
                    return
                if packet.stream.index != video.index:
                    yield packet
                    continue
                try:
                    frames = packet.decode()
                except av.error.FFmpegError:
                    log.debug("skipped an undecodable packet in %s", container.name)
                    if on_damage is not None:
                        on_damage()
                    continue
                yield from frames
            return
        except (av.error.FFmpegError, OSError):
            if max_demux_errors is None:
                raise
            if on_damage is not None:
                on_damage()
            errors_in_a_row += 1
            if errors_in_a_row >= max_demux_errors:
                return


def decode_video(container: av.container.InputContainer, stop: threading.Event | None = None) -> Iterator[av.VideoFrame]:
    """Every decodable frame of the first video stream; corrupt packets are skipped, not fatal."""
    return decode_media(container, stop=stop)  # type: ignore[return-value]  # no audio: frames only


def peek_picture(items: Iterator[MediaItem], *, limit: int = MAX_PEEK_ITEMS) -> tuple[PictureInfo, Iterator[MediaItem]]:
    """Rotation and colour tags of the first decoded frame among ``items``, and the same items again, that
    frame included (nothing is decoded twice, no second open). Defaults when none comes within ``limit``."""
    seen: list[MediaItem] = []
    info = PictureInfo()
    for item in items:
        seen.append(item)
        if isinstance(item, av.VideoFrame):
            info = PictureInfo.of(item)
            break
        if len(seen) >= limit:
            break
    return info, chain(seen, items)


_thread = threading.local()


def _reformatter() -> VideoReformatter:
    """This thread's scaler: it keeps its set-up between frames (``frame.to_ndarray`` makes a new one for every
    frame: 0.4 ms against 0.1 ms at 640x360). One per thread, since a decode thread and live sources convert
    at once."""
    reformatter = getattr(_thread, "reformatter", None)
    if reformatter is None:
        reformatter = _thread.reformatter = VideoReformatter()
    return reformatter


def video_to_rgb(frame: av.VideoFrame, width: int | None = None, height: int | None = None) -> np.ndarray:
    """RGB as a player shows the frame: turned upright by its display matrix (a phone's portrait clip),
    colours by its own tags, scaled to ``width`` x ``height`` (the size as shown; either may be None for the
    frame's own)."""
    turns = quarter_turns(frame)
    shown_w, shown_h = upright_size(frame.width, frame.height, turns)
    width, height = width or shown_w, height or shown_h
    stored_w, stored_h = upright_size(width, height, turns)  # scale first: cheaper than turning big frames
    if (stored_w, stored_h) == (frame.width, frame.height):
        rgb = _reformatter().reformat(frame, format="rgb24")
    else:
        rgb = _reformatter().reformat(frame, format="rgb24", width=stored_w, height=stored_h)
    image = rgb.to_ndarray()
    return np.ascontiguousarray(np.rot90(image, turns)) if turns else image


def read_frames(path: str | os.PathLike[str], *, limit: int | None = None) -> tuple[list[np.ndarray], float]:
    """The first ``limit`` (default all) frames of a video file as upright RGB arrays, and its frame rate
    (30 when the header does not say). SourceError (one line) for an input that cannot be read."""
    frames: list[np.ndarray] = []
    with open_file(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = stream_fps(stream) or DEFAULT_FPS
        if limit is None or limit > 0:
            for frame in decode_video(container):
                frames.append(video_to_rgb(frame))
                if limit is not None and len(frames) >= limit:
                    break
    return frames, fps
