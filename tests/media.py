"""Real test media made on the fly with PyAV: clips (optionally with AAC audio, variable frame rate, odd
sizes), damaged copies, and probes that read back what a file holds.

Everything here writes into a folder the caller chooses (a pytest ``tmp_path``); nothing is downloaded.
The pictures move and carry texture so encoders and temporal metrics see realistic work, and they are
made with numpy in whole-array operations (no per-pixel Python loops).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from streamer.media.av_io import decode_media, decode_video, open_file, read_frames

AUDIO_RATE = 48_000
AAC_FRAME_SAMPLES = 1024  # one AAC frame; the unit "within one audio frame" in sync checks


def pattern_frame(index: int, width: int, height: int, *, seed: int = 0) -> np.ndarray:
    """Frame ``index`` of a moving test picture, (height, width, 3) uint8 RGB.

    Diagonal colour bands drift a few pixels per frame over fixed fine noise, and a bright block moves
    across, so consecutive frames differ and every frame differs from the next.
    """
    ys = np.arange(height, dtype=np.int32)[:, None]
    xs = np.arange(width, dtype=np.int32)[None, :]
    shift = 3 * index
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[..., 0] = (xs + ys + shift) % 256
    image[..., 1] = (2 * xs - ys + 2 * shift) % 256
    image[..., 2] = (xs * 3 + shift // 2) % 256
    noise = np.random.default_rng(seed).integers(0, 24, size=(height, width, 1), dtype=np.uint8)
    image = image // 2 + noise
    block = max(4, min(width, height) // 6)
    x0 = (index * 5) % max(1, width - block)
    y0 = (index * 3) % max(1, height - block)
    image[y0:y0 + block, x0:x0 + block] = 255
    return image


def make_clip(
    path: str | Path,
    *,
    seconds: float = 2.0,
    fps: int = 30,
    size: tuple[int, int] = (640, 360),
    audio: bool = False,
    pts: Sequence[int] | None = None,
    time_base: Fraction | None = None,
    codec: str = "libx264",
    pix_fmt: str | None = None,
    faststart: bool = False,
    encoder_options: dict[str, str] | None = None,
) -> Path:
    """Write a real encoded clip and return its path. The container follows the file extension.

    ``pts`` (in ``time_base`` units; give both) makes a variable-frame-rate clip: one frame per entry at
    exactly those timestamps; otherwise ``seconds * fps`` frames at a constant rate
    with ``time_base = 1/fps``. ``audio`` adds a mono 48 kHz AAC track (a 440 Hz tone) of the same
    duration starting at 0. Odd sizes need a pixel format that allows them: ``pix_fmt`` defaults to
    yuv420p for even sizes and yuv444p for odd ones. ``faststart`` moves the MP4 index to the front, so a
    truncated copy still opens (as a cut-short download would).
    """
    path = Path(path)
    width, height = size
    if pix_fmt is None:
        pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
    if pts is None:
        time_base = Fraction(1, fps)
        pts = list(range(round(seconds * fps)))
    elif time_base is None:
        raise ValueError("give time_base with pts")
    assert time_base is not None
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        video = container.add_stream(codec, rate=fps)
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        video.time_base = time_base
        video.codec_context.time_base = time_base
        video.options = {"preset": "ultrafast", **(encoder_options or {})} if codec.startswith("libx26") \
            else dict(encoder_options or {})
        audio_stream = None
        audio_samples = 0
        total_samples = 0
        if audio:
            audio_stream = container.add_stream("aac", rate=AUDIO_RATE, layout="mono")
            duration = float((pts[-1] - pts[0]) * time_base) + 1 / fps if pts else seconds
            total_samples = round(duration * AUDIO_RATE)
        for index, frame_pts in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(pattern_frame(index, width, height), format="rgb24")
            frame.pts, frame.time_base = frame_pts, time_base
            container.mux(video.encode(frame))
            # Keep audio level with video so the muxer interleaves as a real recorder would.
            video_seconds = float((frame_pts + 1) * time_base)
            while audio_stream is not None and audio_samples < total_samples \
                    and audio_samples / AUDIO_RATE <= video_seconds:
                audio_samples += _write_tone(container, audio_stream, audio_samples, total_samples)
        container.mux(video.encode(None))
        while audio_stream is not None and audio_samples < total_samples:
            audio_samples += _write_tone(container, audio_stream, audio_samples, total_samples)
        if audio_stream is not None:
            container.mux(audio_stream.encode(None))
    return path


def _write_tone(container: av.container.OutputContainer, stream: av.AudioStream, start: int, total: int) -> int:
    count = min(AAC_FRAME_SAMPLES, total - start)
    t = (start + np.arange(count)) / AUDIO_RATE
    samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
    frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = AUDIO_RATE, start, Fraction(1, AUDIO_RATE)
    container.mux(stream.encode(frame))
    return count


def make_audio_only(path: str | Path, *, seconds: float = 1.0) -> Path:
    """A file with one AAC audio stream and no video (e.g. ``tone.m4a``)."""
    path = Path(path)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=AUDIO_RATE, layout="mono")
        done, total = 0, round(seconds * AUDIO_RATE)
        while done < total:
            done += _write_tone(container, stream, done, total)
        container.mux(stream.encode(None))
    return path


def truncate_copy(src: str | Path, dst: str | Path, *, keep: float = 0.6) -> Path:
    """Copy the first ``keep`` fraction of ``src``'s bytes, like an interrupted download."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * keep)])
    return Path(dst)


def corrupt_copy(src: str | Path, dst: str | Path, *, at: float = 0.5, nbytes: int = 20_000,
                 seed: int = 0) -> Path:
    """Copy ``src`` with ``nbytes`` random bytes overwritten starting at fraction ``at`` of the file."""
    data = bytearray(Path(src).read_bytes())
    start = int(len(data) * at)
    end = min(len(data), start + nbytes)
    data[start:end] = np.random.default_rng(seed).integers(0, 256, end - start, dtype=np.uint8).tobytes()
    Path(dst).write_bytes(bytes(data))
    return Path(dst)


def write_garbage(path: str | Path, *, nbytes: int = 64_000, seed: int = 0) -> Path:
    """Random bytes under a video-looking name: no demuxer recognises them."""
    Path(path).write_bytes(np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8).tobytes())
    return Path(path)


@dataclass
class MediaInfo:
    """What a file holds, read back by demuxing and decoding it all."""

    width: int = 0
    height: int = 0
    video_time_base: Fraction = Fraction(1, 1)
    video_pts: list[int] = field(default_factory=list)  # decoded frames, in presentation order
    audio_codec: str | None = None
    audio_start: float | None = None  # seconds, first audio packet
    audio_end: float | None = None  # seconds, end of the last audio packet
    audio_packets: int = 0

    @property
    def frames(self) -> int:
        return len(self.video_pts)

    @property
    def video_start(self) -> float | None:
        return float(self.video_pts[0] * self.video_time_base) if self.video_pts else None

    @property
    def video_seconds(self) -> list[float]:
        return [float(p * self.video_time_base) for p in self.video_pts]

    @property
    def audio_duration(self) -> float:
        if self.audio_start is None or self.audio_end is None:
            return 0.0
        return self.audio_end - self.audio_start


def probe(path: str | Path) -> MediaInfo:
    """Decode every video frame (pts and size) and walk every audio packet of ``path``, through the
    product's reader (streamer.media.av_io)."""
    info = MediaInfo()
    with open_file(path) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[:1]
        video.thread_type = "AUTO"
        info.video_time_base = video.time_base
        if audio:
            info.audio_codec = audio[0].codec_context.name
        for item in decode_media(container, video, audio=audio):
            if isinstance(item, av.VideoFrame):
                info.width, info.height = item.width, item.height
                info.video_pts.append(item.pts)
            elif item.dts is not None and item.pts is not None:
                start = float(item.pts * item.time_base)
                end = start + float((item.duration or 0) * item.time_base)
                info.audio_packets += 1
                info.audio_start = start if info.audio_start is None else min(info.audio_start, start)
                info.audio_end = end if info.audio_end is None else max(info.audio_end, end)
    info.video_pts.sort()
    return info


def decode_frames(path: str | Path, *, limit: int | None = None) -> list[np.ndarray]:
    """The first ``limit`` (default all) video frames of ``path`` as (H, W, 3) uint8 RGB arrays, upright as
    a player shows them (streamer.media.av_io.read_frames)."""
    return read_frames(path, limit=limit)[0]


def first_frame(path: str | Path) -> av.VideoFrame:
    """The first decoded video frame of ``path`` (its size, rotation and colour tags), as streamer reads it."""
    with open_file(path) as container:
        return next(decode_video(container))


def file_size(path: str | Path) -> int:
    """Size in bytes, 0 when the file does not exist."""
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def partials(folder: Path) -> list[Path]:
    """The partial files a job writes in ``folder`` until its outputs are complete (streamer.engine.outputs)."""
    return sorted(folder.glob(".*.partial-*"))


def wait_for_partial(process: subprocess.Popen[str], folder: Path, size: int, limit: float = 180) -> Path:
    """The job's partial file once it holds ``size`` bytes (the job is then well under way)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        assert process.poll() is None, "the job ended before it could be stopped: " + process.communicate()[1]
        found = partials(folder)
        if found and file_size(found[0]) >= size:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no partial file of {size} bytes after {limit} s")
