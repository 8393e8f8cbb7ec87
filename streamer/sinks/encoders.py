"""Which encoder, pixel format, size and options an output gets; which audio a container can take.

The container decides by default, as ffmpeg does: ``.webm`` gets VP9 (and Opus audio), everything else
H.264. Audio is copied when the container can hold the input's codec, otherwise transcoded to AAC (MP4,
MOV) or Opus (WebM). Encoders' own banners (x265, SVT-AV1) are kept off stderr unless ``-v``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import av
import av.error

from streamer.sinks.base import SinkError

log = logging.getLogger(__name__)

# Encoders that understand a constant-quality "crf" option.
CRF_ENCODERS = {"libx264", "libx264rgb", "libx265", "libvpx", "libvpx-vp9", "libsvtav1", "libaom-av1"}
# File extension -> video encoder when none is given; anything else gets DEFAULT_VIDEO_CODEC.
VIDEO_CODEC_BY_SUFFIX = {".webm": "libvpx-vp9", ".ogv": "libvpx"}
DEFAULT_VIDEO_CODEC = "libx264"
# Audio encoders tried, in order, when a container cannot hold the input's audio codec.
AUDIO_FALLBACKS = (("aac", "aac"), ("opus", "libopus"))
# Audio codecs that players take in these containers (FFmpeg writes more, e.g. Vorbis or PCM into MP4,
# and PCM into MPEG-TS only as unplayable data); other containers take what FFmpeg says they hold.
PLAYABLE_AUDIO = {
    "mp4": {"aac", "mp3", "alac", "ac3", "eac3", "opus", "flac"},
    "mov": {"aac", "mp3", "alac", "ac3", "eac3", "opus", "flac", "pcm_s16le", "pcm_s16be", "pcm_s24le",
            "pcm_s24be", "pcm_f32le", "pcm_f32be"},
    "webm": {"opus", "vorbis"},
    "mpegts": {"aac", "mp3", "mp2", "ac3", "eac3", "opus"},
    "flv": {"aac", "mp3"},
}
# x264 and x265 take their presets as free text: FFmpeg cannot list them.
X26X_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
                "veryslow", "placebo")


def video_codec_for(target: str) -> str:
    """The default video encoder for an output path (by its extension, like ffmpeg) or URL (H.264: MPEG-TS,
    RTSP and FLV carry it)."""
    if "://" in target:
        return DEFAULT_VIDEO_CODEC
    return VIDEO_CODEC_BY_SUFFIX.get(Path(target.split("?")[0]).suffix.lower(), DEFAULT_VIDEO_CODEC)


def video_codec(codec_name: str) -> av.Codec:
    """The encoder ``codec_name``; SinkError (one line) if this FFmpeg has none or it is not for video."""
    try:
        codec = av.Codec(codec_name, "w")
    except (av.error.FFmpegError, ValueError):
        raise SinkError(f"unknown encoder {codec_name!r}; try libx264, libx265, libvpx-vp9 or libsvtav1") from None
    if codec.type != "video":
        raise SinkError(f"{codec_name!r} encodes {codec.type}, not video; give a video encoder such as libx264")
    return codec


def check_encoder_preset(codec_name: str, preset: str) -> None:
    """Raise SinkError with the valid presets of ``codec_name`` unless ``preset`` is one of them."""
    video_codec(codec_name)
    if codec_name.startswith(("libx264", "libx265")):
        if preset not in X26X_PRESETS:
            raise SinkError(f"unknown --encoder-preset {preset!r} for {codec_name}; use one of: "
                            f"{', '.join(X26X_PRESETS)}")
        return
    option = next((o for o in av.CodecContext.create(codec_name, "w").supported_options.private
                   if o.name == "preset"), None)
    if option is None:
        raise SinkError(f"{codec_name} has no presets (--encoder-preset {preset!r}); leave it out (presets "
                        "exist for libx264, libx265 and libsvtav1)")
    names = [choice.name for choice in option.choices or []]
    if names:
        if preset not in names:
            raise SinkError(f"unknown --encoder-preset {preset!r} for {codec_name}; use one of: {', '.join(names)}")
        return
    low, high = int(option.min), int(option.max)
    try:
        number = int(preset)
    except ValueError:
        number = None
    if number is None or not low <= number <= high:
        raise SinkError(f"unknown --encoder-preset {preset!r} for {codec_name}; use a number from {low} to "
                        f"{high} (higher is faster)")


def even_size(codec_name: str, width: int, height: int) -> tuple[int, int]:
    """(width, height) rounded down to even numbers when ``codec_name`` writes yuv420p, the pixel format
    every player plays (4:2:0 needs even sizes); unchanged for encoders without it or sizes already even."""
    formats = [f.name for f in video_codec(codec_name).video_formats or []]
    if (width % 2 == 0 and height % 2 == 0) or (formats and "yuv420p" not in formats):
        return width, height
    return max(2, width - width % 2), max(2, height - height % 2)


def pick_pixel_format(codec_name: str, width: int, height: int) -> str:
    """yuv420p when the size allows it (plays everywhere); a full-chroma format for odd sizes."""
    formats = [f.name for f in video_codec(codec_name).video_formats or []]
    if width % 2 == 0 and height % 2 == 0 and (not formats or "yuv420p" in formats):
        return "yuv420p"
    # 4:2:0 halves the chroma planes, so odd sizes need 4:4:4 (or RGB) to keep every pixel.
    for name in ("yuv444p", "gbrp", "rgb24", "bgr0"):
        if name in formats:
            return name
    if not formats:
        return "yuv420p"
    raise SinkError(f"encoder {codec_name} cannot store odd sizes like {width}x{height}; "
                    f"pick an even size or an encoder such as libx264")


def encoder_options(codec: str, *, crf: int, low_latency: bool, is_network: bool,
                    overrides: dict[str, str]) -> dict[str, str]:
    """The encoder's options: quality, speed, quiet logs; ``overrides`` (the user's) win."""
    options: dict[str, str] = {}
    if codec in CRF_ENCODERS:
        options["crf"] = str(crf)
    if codec.startswith("libx26"):
        # veryfast: ~2.5x medium's speed at a similar size for this kind of video; keeps the encoder
        # far from being the bottleneck of a file job (options={"preset": "slow"} for smaller files).
        options["preset"] = "veryfast"
        if low_latency:
            options["tune"] = "zerolatency"
    elif codec == "libvpx-vp9":
        # libvpx's defaults (cpu-used 1, one thread per frame) run far slower than x264 veryfast.
        options.update({"cpu-used": "8" if low_latency else "4", "row-mt": "1"})
        if low_latency:
            options["deadline"] = "realtime"
    params: list[str] = []
    if is_network and codec.startswith("libx26"):
        params.append("repeat-headers=1")  # SPS/PPS before keyframes, so a viewer can join mid-stream
    if codec == "libx265" and not log.isEnabledFor(logging.DEBUG):
        params.append("log-level=error")  # x265 prints its banner and info lines straight to stderr
    if params:
        options["x264-params" if codec.startswith("libx264") else "x265-params"] = ":".join(params)
    if codec == "libsvtav1" and not log.isEnabledFor(logging.DEBUG):
        # SVT-AV1 prints its banner itself; it reads its log level from the environment at encoder start.
        os.environ.setdefault("SVT_LOG", "1")
    options.update(overrides)
    return options


def audio_encoder_for(container: av.container.OutputContainer, codec_name: str) -> str | None:
    """None when ``container`` can hold ``codec_name`` audio as it is (copy it), else the encoder to use.

    MP4, MOV, WebM, MPEG-TS and FLV: what players take there (``PLAYABLE_AUDIO``); other containers: what
    FFmpeg says they hold (Matroska holds nearly anything), copied when FFmpeg knows nothing either.
    """
    playable = PLAYABLE_AUDIO.get(container.format.name)
    supported = playable if playable is not None else container.supported_codecs
    if codec_name in supported:
        return None
    for codec, encoder in AUDIO_FALLBACKS:
        if codec in supported or encoder in supported:
            return encoder
    return None


class AudioTranscoder:
    """Decodes packets of an input audio stream and encodes them for an output stream, keeping their timing
    (the decoded frames keep their pts; the encoder's resampler carries them over)."""

    def __init__(self, container: av.container.OutputContainer, template: av.stream.Stream, encoder: str) -> None:
        source = template.codec_context
        rates = av.Codec(encoder, "w").audio_rates
        rate = source.sample_rate if not rates or source.sample_rate in rates else 48_000
        self.source = template
        self.stream = container.add_stream(encoder, rate=rate, layout=source.layout.name)

    def encode(self, packet: av.Packet | None) -> list[av.Packet]:
        """The output packets for one input packet (None: drain the decoder and the encoder)."""
        try:
            frames: list[av.AudioFrame | None] = list(self.source.decode(packet))
        except av.error.FFmpegError:
            frames = []  # a damaged packet is skipped, as the video decoder skips damaged frames
        if packet is None:
            frames.append(None)
        try:
            return [out for frame in frames for out in self.stream.encode(frame)]
        except (av.error.FFmpegError, ValueError) as exc:
            raise SinkError(f"transcoding {self.source.codec_context.name} audio to "
                            f"{self.stream.codec_context.name} failed: {exc}") from None
