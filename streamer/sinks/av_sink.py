"""One PyAV encoder sink for files (out.mp4, out.mkv) and network streams (udp://, srt://, rtsp://).

Timestamps: a frame's own ``pts``/``time_base`` are kept (rescaled to the stream's time base), so a
recorded file keeps the source's timing and remuxed audio stays in sync. The muxer must never see a
timestamp go backwards, so the pts go through the one PtsClock: a frame whose pts does not increase (a
restarted camera, a broken file), or that jumps far ahead of the capture clock, goes on one frame after the
last; frames without pts are timed one frame period apart.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from urllib.parse import urlsplit

import av
import av.error
import numpy as np
from av.video.reformatter import VideoReformatter

from streamer.engine.outputs import PartialFile, check_output
from streamer.media.audio import AudioChunk
from streamer.media.frames import Frame, PtsClock
from streamer.media.picture import ColourTags
from streamer.sinks.audio_out import AudioOut
from streamer.sinks.base import Sink, SinkError
from streamer.sinks.encoders import (
    encoder_options,
    even_size,
    pick_pixel_format,
    video_codec_for,
)
from streamer.sinks.stall_guard import NETWORK_STALL_SECONDS, StallGuard

log = logging.getLogger(__name__)

# Network schemes -> container format. MPEG-TS carries H.264 over plain datagrams and SRT.
NETWORK_FORMATS = {"udp": "mpegts", "srt": "mpegts", "tcp": "mpegts", "rtsp": "rtsp", "rtsps": "rtsp",
                   "rtmp": "flv", "rtmps": "flv"}
NETWORK_TIME_BASE = Fraction(1, 90_000)
# A pts that runs ahead of the capture clock by more than this is a source restart, not real timing.
MAX_PTS_JUMP_SECONDS = 2.0


class AvSink(Sink):
    """Encode frames with PyAV into a file or a network stream.

    ``target``: a file path (container from the extension, or ``container_format``), ``udp://HOST:PORT``
    (MPEG-TS), ``srt://HOST:PORT?mode=listener`` (MPEG-TS over SRT, needs an FFmpeg built with libsrt),
    ``rtsp://HOST:PORT/PATH`` (publish over TCP to an RTSP server that accepts RECORD).
    ``codec``: the video encoder; None picks it by the container (libvpx-vp9 for .webm, else libx264).
    ``low_latency`` (default: on for network targets) uses a fast preset, ``tune=zerolatency``, no
    B-frames and a ``gop`` of about one second. ``options`` are encoder options that win over these
    defaults, e.g. ``{"preset": "slow"}``.
    A file is written next to ``target`` and renamed over it when closed (streamer.engine.outputs.check_output
    says what is refused: an existing ``target`` without ``overwrite``, the same file as one of ``inputs``).
    """

    name = "av"
    takes_audio = True

    def __init__(
        self,
        target: str,
        *,
        codec: str | None = None,
        crf: int = 23,
        low_latency: bool | None = None,
        gop: int | None = None,
        container_format: str | None = None,
        options: dict | None = None,
        overwrite: bool = False,
        inputs: Sequence[str | os.PathLike[str] | None] = (),
    ) -> None:
        self.target = str(target)
        scheme = urlsplit(self.target).scheme.lower()
        self.scheme = scheme if scheme in NETWORK_FORMATS else ""
        self.is_network = bool(self.scheme)
        self.live = self.is_network  # a stream is watched as it plays; a file is not
        self.codec = codec or video_codec_for(self.target)  # None: by the container, as ffmpeg does
        self.crf = crf
        self.low_latency = self.is_network if low_latency is None else low_latency
        self.gop = gop
        self.container_format = container_format or NETWORK_FORMATS.get(self.scheme)
        self.options = {str(k): str(v) for k, v in (options or {}).items()}
        self.overwrite = overwrite
        self.inputs = tuple(inputs)
        self.name = f"av:{self.target}"
        self.frames_written = 0
        self.audio_packets_written = 0
        self.width = self.height = 0
        self.pixel_format = ""
        self._container: av.container.OutputContainer | None = None
        self._video: av.VideoStream | None = None
        self._audio: AudioOut | None = None  # the audio streams, made at open()
        self._shift: float | None = None  # live audio: output video pts minus the frames' own, seconds
        self._colour: ColourTags | None = None
        self._reformatter = VideoReformatter()  # one scaler set-up for the whole stream
        self._time_base = NETWORK_TIME_BASE
        self._copy_pts = False
        self._fps = 30.0
        self._clock: PtsClock | None = None  # made at open(), in the stream's time base
        self._pts_origin: int | None = None
        self._last_seconds: tuple[float, float] | None = None  # (pts seconds, capture time) of the last frame
        self._guard: StallGuard | None = None
        self._partial: PartialFile | None = None  # a file target is written here, renamed by close()
        self._write_failed = False

    # -- opening -------------------------------------------------------------------------------------

    def open(self, width: int, height: int, fps: float, *, time_base: Fraction | None = None,
             audio_from: Iterable[av.stream.Stream] = (), colour: ColourTags | None = None) -> None:
        """Open the output and write its header (a network peer is connected here).

        ``time_base``: keep frame pts exactly in this time base (a file job passes the input stream's, so
        variable frame rate and audio sync survive); without it, timing starts at 0 on the first frame.
        ``audio_from``: input audio streams whose packets go to ``mux_audio``: remuxed unchanged, or
        transcoded when the container cannot hold their codec (AAC into WebM becomes Opus).
        ``colour``: the input's colour tags, written to the output and used to convert RGB back to YUV.
        An odd size is rounded down to even for encoders that write yuv420p (``width``/``height`` say
        what is written).
        """
        if self._container is not None:
            raise SinkError(f"{self.target} is already open")
        if width <= 0 or height <= 0:
            raise SinkError(f"cannot encode an empty picture ({width}x{height})")
        self.width, self.height = even_size(self.codec, int(width), int(height))
        if (self.width, self.height) != (width, height):
            log.warning("%s: %dx%d is odd; writing %dx%d so the video stays yuv420p, which every player plays",
                        self.target, width, height, self.width, self.height)
        self._colour = colour
        self._fps = float(fps) if fps and fps > 0 else 30.0
        self.pixel_format = pick_pixel_format(self.codec, self.width, self.height)
        if time_base is not None:
            self._time_base, self._copy_pts = Fraction(time_base), True
        self._clock = PtsClock(self._fps, self._time_base)
        port = urlsplit(self.target).port if self.scheme in ("rtsp", "tcp") else None
        self._guard = StallGuard(port) if port else None
        try:
            # Not under the guard: FFmpeg holds the GIL through the header/handshake, so only its own
            # timeout applies there (see _open_container).
            self._container = self._open_container()
            self._add_video_stream()
            self._audio = AudioOut(self._container, self.target)
            for stream in audio_from:
                self._audio.add(stream)
            self._container.start_encoding()
        except SinkError:
            self._abandon()
            raise
        except (av.error.FFmpegError, ValueError, OSError) as exc:
            message = self._describe_open_error(exc)
            self._abandon()
            raise SinkError(message) from None

    def _open_container(self) -> av.container.OutputContainer:
        url = self.target
        if not self.is_network:
            try:
                final = check_output(self.target, inputs=self.inputs, overwrite=self.overwrite)
                self._partial = PartialFile(final, overwrite=self.overwrite)
            except (ValueError, OSError) as exc:
                raise SinkError(str(exc)) from None
            url = str(self._partial.path)  # absolute: FFmpeg never reads a protocol into it
        container_options: dict[str, str] = {}
        if self.scheme == "rtsp":
            # TCP survives packet loss and NAT. "timeout" bounds the handshake, which FFmpeg runs while
            # holding the GIL (no Python watchdog could run then); writes are guarded by StallGuard.
            container_options = {"rtsp_transport": "tcp", "timeout": str(int(NETWORK_STALL_SECONDS * 1e6))}
        try:
            return av.open(url, "w", format=self.container_format, options=container_options)
        except ValueError:
            if self.container_format:
                raise SinkError(f"unknown output format {self.container_format!r}") from None
            suffix = Path(self.target).suffix or "(none)"
            raise SinkError(f"cannot tell the output format from the extension {suffix} of {self.target}; "
                            "use .mp4, .mkv, .mov or .ts") from None
        except (av.error.FFmpegError, OSError) as exc:
            raise SinkError(self._describe_open_error(exc)) from None

    def _add_video_stream(self) -> None:
        assert self._container is not None
        rate = Fraction(self._fps).limit_denominator(1001)
        stream = self._container.add_stream(self.codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = self.width, self.height, self.pixel_format
        stream.time_base = self._time_base
        stream.codec_context.time_base = self._time_base
        stream.options = encoder_options(self.codec, crf=self.crf, low_latency=self.low_latency,
                                         is_network=self.is_network, overrides=self.options)
        if self._colour is not None:
            self._colour.tag(stream.codec_context)
        if self.low_latency:
            stream.codec_context.max_b_frames = 0
            stream.codec_context.gop_size = self.gop or max(1, round(self._fps))
        elif self.gop:
            stream.codec_context.gop_size = self.gop
        self._video = stream

    def _describe_open_error(self, exc: BaseException) -> str:
        text = str(exc).split("\n")[0]
        if "avcodec_open2" in text:  # the encoder refused its settings; the container is not at fault
            reason = getattr(exc, "strerror", None) or text
            return f"the {self.codec} encoder refused its options {self.options or '(defaults)'}: {reason}"
        if isinstance(exc, av.error.ProtocolNotFoundError) or "Protocol not found" in text:
            if self.scheme == "srt":
                return ("this PyAV build has no SRT support (its FFmpeg lacks libsrt); stream with "
                        "udp:// or rtsp:// instead, or install an av wheel built with libsrt")
            return f"this FFmpeg build cannot write {self.scheme or 'this'} URLs ({self.target})"
        if self.scheme == "rtsp":
            return (f"cannot stream to {self.target}: {text} (is an RTSP server running there that "
                    "accepts publishers?)")
        if self.is_network:
            return f"cannot stream to {self.target}: {text}"
        if "codec" in text.lower():
            return (f"cannot write {self.codec} video into {self.target}: {text}; use an encoder that "
                    "container takes (e.g. libvpx-vp9 for .webm; without --codec one is picked) or write .mkv/.mp4")
        return f"cannot write {self.target}: {text}"

    # -- writing -------------------------------------------------------------------------------------

    def write(self, frame: Frame) -> None:
        if self._container is None or self._video is None:
            raise SinkError(f"{self.target}: write() before open()")
        image = np.ascontiguousarray(frame.image)
        if self._colour is not None and self.pixel_format.startswith("yuv"):
            video_frame = self._colour.to_yuv(image, self.pixel_format, self.width, self.height, self._reformatter)
        else:
            video_frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        video_frame.pts = self._next_pts(frame)
        video_frame.time_base = self._time_base
        if frame.seconds is not None:
            self._shift = float(video_frame.pts * self._time_base) - frame.seconds
        try:
            with self._busy():
                self._container.mux(self._video.encode(video_frame))
        except (av.error.FFmpegError, OSError) as exc:
            self._write_failed = True
            raise SinkError(self._describe_write_error(exc)) from None
        self.frames_written += 1

    def mux_audio(self, packet: av.Packet) -> None:
        """Remux one audio packet from a stream given to ``open(audio_from=...)`` unchanged (or transcode it,
        when the container cannot hold its codec)."""
        if self._container is None or self._audio is None:
            raise SinkError(f"{self.target}: mux_audio() before open()")
        self._mux_packets(self._audio.packets(packet))

    def write_audio(self, chunk: AudioChunk) -> None:
        """One live audio chunk (its seconds on the clock of the frames given to ``write``), placed beside the
        video already written: the same shift as the last frame's. Nothing before the first frame."""
        if self._container is None or self._audio is None:
            raise SinkError(f"{self.target}: write_audio() before open()")
        if self._shift is None:
            self._audio.skipped += 1  # before the first frame: the recording starts with its video
            return
        self._mux_packets(self._audio.place(chunk, self._shift))

    @property
    def audio_encoders(self) -> list[str]:
        """The encoders of audio streams transcoded because the container cannot hold their codec."""
        return self._audio.encoders if self._audio is not None else []

    @property
    def audio_skipped(self) -> int:
        """Live audio packets left out: before the first video frame, or overlapping (after a reconnect)."""
        return self._audio.skipped if self._audio is not None else 0

    def _mux_packets(self, packets: list[av.Packet]) -> None:
        assert self._container is not None
        if not packets:
            return
        try:
            with self._busy():
                self._container.mux(packets)
        except (av.error.FFmpegError, OSError) as exc:
            self._write_failed = True
            raise SinkError(self._describe_write_error(exc)) from None
        self.audio_packets_written += len(packets)

    @contextmanager
    def _busy(self) -> Iterator[None]:
        if self._guard is None:
            yield
            return
        with self._guard.busy():
            yield

    def _describe_write_error(self, exc: BaseException) -> str:
        text = str(exc).split("\n")[0]
        if self._guard is not None and self._guard.tripped:
            return (f"stream to {self.target} broke: the receiver stopped reading for "
                    f"{self._guard.limit:g} s (is it still running?)")
        if self.is_network:
            return f"stream to {self.target} broke: {text} (is the receiver still running?)"
        if isinstance(exc, OSError) and exc.strerror:  # without the partial file's name
            kept = "its old content is kept" if os.path.exists(self.target) else "nothing was written"
            return f"writing {self.target} failed: {exc.strerror}; {kept}"
        return f"writing {self.target} failed: {text}"

    def _next_pts(self, frame: Frame) -> int:
        """The frame's pts in the stream time base, strictly increasing (live: the first frame at 0)."""
        assert self._clock is not None
        seconds = frame.seconds
        if not self._copy_pts and seconds is not None and self._last_seconds is not None:
            last_seconds, last_capture = self._last_seconds
            if seconds - last_seconds > frame.capture_time - last_capture + MAX_PTS_JUMP_SECONDS:
                self._clock.restart()  # far ahead of the capture clock: a source restart, not real timing
        if seconds is not None:
            self._last_seconds = (seconds, frame.capture_time)
        if frame.pts is None and self._clock.last is None:
            pts = self._clock.map(0, self._time_base)
        else:
            pts = self._clock.map(frame.pts, frame.time_base)
        assert pts is not None
        if self._copy_pts:
            return pts
        if self._pts_origin is None:
            self._pts_origin = pts
        return pts - self._pts_origin

    # -- closing -------------------------------------------------------------------------------------

    def close(self, *, publish: bool = True) -> None:
        """Flush the encoder and finalize the container (an MP4 gets its index here), then a file takes its
        name; after a failed write or close, or without ``publish``, it is removed and ``target`` stays as it
        was. Safe to repeat."""
        container, video = self._container, self._video
        if container is None:
            return
        audio_error: SinkError | None = None
        try:
            if self._audio is not None:
                self._mux_packets(self._audio.flush())  # the transcoders' last frames
        except SinkError as exc:
            audio_error = exc
        self._container = self._video = None
        error: BaseException | None = audio_error
        try:
            try:
                with self._busy():
                    if video is not None:
                        container.mux(video.encode(None))
            except (av.error.FFmpegError, OSError) as exc:
                error = error or exc
            try:
                container.close()
            except (av.error.FFmpegError, OSError) as exc:
                error = error or exc
            finally:
                self._close_guard()
            if error is not None:
                raise SinkError(self._describe_write_error(error)) from None
            if self._partial is not None and publish and not self._write_failed:
                try:
                    self._partial.publish()
                except OSError as exc:
                    raise SinkError(f"cannot finish {self.target}: {exc.strerror or exc}") from None
        finally:
            self.discard()

    def discard(self) -> None:
        """Give up on a file: the partial file goes, ``target`` stays as it was (the container is left alone)."""
        if self._partial is not None:
            self._partial.discard()

    def _abandon(self) -> None:
        container, self._container, self._video = self._container, None, None
        try:
            if container is not None:
                container.close()
        except (av.error.FFmpegError, OSError):
            pass
        finally:
            self._close_guard()
            self.discard()

    def _close_guard(self) -> None:
        if self._guard is not None:
            self._guard.close()
            self._guard = None
