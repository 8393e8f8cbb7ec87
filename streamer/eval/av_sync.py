"""Audio/video sync measured on real media: a clip with a white flash and a click on the same instants, and
the offsets between them found again in whatever comes out (a file, a network stream read back, frames and
samples a WebRTC receiver decoded).

- ``make_sync_clip(path, ...)``: dark frames with one full-white frame at each event, and silence with a
  short tone burst starting at that frame's pts (optionally shifted by ``audio_offset`` to test the
  measure). The container follows the extension: .mp4/.mov/.ts H.264 + AAC, .mkv H.264 + Opus, .webm VP9 +
  Opus. ``vfr`` spaces frames unevenly (1/30 s and 1/20 s in turn).
- ``measure(video, audio)``: from (pts seconds, mean brightness) per decoded frame and (pts seconds,
  samples, rate) per decoded audio chunk: the flashes, the click onsets, their pairs, per-event offsets
  (audio minus video, seconds) and the longest gap in the audio's timeline.
- ``measure_file(path)``: the same, straight from a file (or anything ``av.open`` reads).

A flash is a frame whose brightness stands out from the clip's usual (median) brightness, by more than half
the most any frame does, so what stylization does to it (the analytic preset's warm posterized white, the
tiny preset's random model, which turns the white frame a little darker than its usual grey) still finds
the same frames; only onsets count (a flash smeared over the next frames by temporal smoothing is one
event). A click is where the audio's level first rises above a quarter of its peak.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

AUDIO_RATE = 48_000
DARK = 24  # background level of the dark frames (0-255)
TONE_HZ = 1_000.0
CLICK_SECONDS = 0.02  # length of a tone burst
CLICK_LEVEL = 0.5
MIN_FLASH_STEP = 8.0  # a flash differs from the usual brightness by at least this (0-255)
CONTAINER_CODECS = {".mp4": ("libx264", "aac"), ".mov": ("libx264", "aac"), ".ts": ("libx264", "aac"),
                    ".mkv": ("libx264", "libopus"), ".webm": ("libvpx-vp9", "libopus")}


@dataclass
class SyncClip:
    path: Path
    fps: float
    events: list[float]  # the flash frames' pts in seconds (each click starts there + audio_offset)
    audio_offset: float
    duration: float


@dataclass
class SyncReport:
    flashes: list[float] = field(default_factory=list)  # seconds (video pts of each flash's first frame)
    clicks: list[float] = field(default_factory=list)  # seconds (audio pts of each click's onset)
    pairs: list[tuple[float, float]] = field(default_factory=list)  # (flash, click)
    longest_audio_gap: float = 0.0  # seconds of missing audio between consecutive chunks
    video_frames: int = 0
    audio_seconds: float = 0.0

    @property
    def offsets(self) -> list[float]:
        """Audio minus video, seconds, one per paired event (positive: the sound comes late)."""
        return [float(click - flash) for flash, click in self.pairs]

    @property
    def events(self) -> int:
        return len(self.pairs)

    @property
    def mean_abs_offset(self) -> float:
        return float(np.mean(np.abs(self.offsets))) if self.pairs else math.nan

    @property
    def max_abs_offset(self) -> float:
        return float(np.max(np.abs(self.offsets))) if self.pairs else math.nan

    def summary(self) -> str:
        if not self.pairs:
            return (f"no paired events ({len(self.flashes)} flashes, {len(self.clicks)} clicks, "
                    f"{self.video_frames} frames, {self.audio_seconds:.2f} s audio)")
        return (f"{self.events} events, offset mean {self.mean_abs_offset * 1000:.1f} ms, max "
                f"{self.max_abs_offset * 1000:.1f} ms, longest audio gap {self.longest_audio_gap * 1000:.1f} ms")


# -- making a clip ------------------------------------------------------------------------------------

def frame_times(seconds: float, fps: float, vfr: bool = False) -> list[float]:
    """The frames' pts in seconds: every 1/fps, or with ``vfr`` 1/fps and 1.5/fps in turn."""
    times, t, i = [], 0.0, 0
    while t < seconds - 1e-9:
        times.append(t)
        t += (1.0 if not vfr or i % 2 == 0 else 1.5) / fps
        i += 1
    return times


def make_sync_clip(path: str | Path, *, seconds: float = 6.0, fps: float = 30.0, size: tuple[int, int] = (160, 96),
                   first: float = 0.5, every: float = 1.0, audio_offset: float = 0.0, vfr: bool = False,
                   video_codec: str | None = None, audio_codec: str | None = None,
                   audio_rate: int = AUDIO_RATE) -> SyncClip:
    """Write a flash-and-click clip (see the module's doc) and return what it holds. Events at ``first``,
    ``first + every``, ... snapped to the nearest frame; each click starts ``audio_offset`` seconds after its
    flash (0: in sync)."""
    path = Path(path)
    default_video, default_audio = CONTAINER_CODECS.get(path.suffix.lower(), ("libx264", "aac"))
    video_codec, audio_codec = video_codec or default_video, audio_codec or default_audio
    width, height = size
    times = frame_times(seconds, fps, vfr)
    time_base = Fraction(1, 90_000)
    wanted = np.arange(first, seconds - 0.25, every)
    flash_index = sorted({int(np.argmin([abs(t - w) for t in times])) for w in wanted})
    events = [times[i] for i in flash_index]
    total = round(seconds * audio_rate)
    audio = np.zeros(total, np.float32)
    burst = round(CLICK_SECONDS * audio_rate)
    tone = CLICK_LEVEL * np.sin(2 * np.pi * TONE_HZ * np.arange(burst) / audio_rate).astype(np.float32)
    for event in events:
        start = round((event + audio_offset) * audio_rate)
        if 0 <= start and start + burst <= total:
            audio[start:start + burst] = tone
    dark = np.full((height, width, 3), DARK, np.uint8)
    white = np.full((height, width, 3), 255, np.uint8)
    with av.open(str(path), "w") as container:
        video = container.add_stream(video_codec, rate=round(fps))
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.time_base = video.codec_context.time_base = time_base
        if video_codec.startswith("libx26"):
            video.options = {"preset": "ultrafast", "bf": "0"}
        elif video_codec.startswith("libvpx"):
            video.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
        sound = container.add_stream(audio_codec, rate=audio_rate, layout="mono")
        chunk = sound.codec_context.frame_size or 1024
        done = 0
        flashes = set(flash_index)
        for index, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(white if index in flashes else dark, format="rgb24")
            frame.pts, frame.time_base = round(t / time_base), time_base
            container.mux(video.encode(frame))
            while done < total and done / audio_rate <= t + 1 / fps:  # interleave as a recorder would
                done = _write_audio(container, sound, audio, done, chunk, audio_rate)
        container.mux(video.encode(None))
        while done < total:
            done = _write_audio(container, sound, audio, done, chunk, audio_rate)
        container.mux(sound.encode(None))
    return SyncClip(path, fps, events, audio_offset, seconds)


def _write_audio(container: av.container.OutputContainer, stream: av.AudioStream, samples: np.ndarray,
                 start: int, chunk: int, rate: int) -> int:
    part = samples[start:start + chunk]
    if len(part) < chunk:
        part = np.concatenate([part, np.zeros(chunk - len(part), np.float32)])
    fmt = stream.codec_context.format.name if stream.codec_context.format else "fltp"
    data = part[None, :] if fmt in ("fltp", "flt") else (part * 32767).astype(np.int16)[None, :]
    frame = av.AudioFrame.from_ndarray(data, format="fltp" if fmt in ("fltp", "flt") else "s16", layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
    container.mux(stream.encode(frame))
    return start + chunk


# -- measuring ---------------------------------------------------------------------------------------

def brightness(image: np.ndarray | av.VideoFrame) -> float:
    """Mean brightness 0-255 of an RGB array, a grey array or a decoded frame."""
    if isinstance(image, av.VideoFrame):
        image = image.to_ndarray(format="gray")
    return float(np.asarray(image, dtype=np.float32).mean())


def mono(frame: av.AudioFrame) -> np.ndarray:
    """A decoded audio frame's first channel as float samples in [-1, 1]."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels) or 1
    samples = data[0] if frame.format.is_planar else data.reshape(-1)[::channels]
    if samples.dtype.kind in "iu":
        info = np.iinfo(samples.dtype)
        samples = samples.astype(np.float32) / max(abs(info.min), info.max)
    return samples.astype(np.float32, copy=False)


def find_flashes(times: Sequence[float], levels: Sequence[float]) -> list[float]:
    """The pts of each flash's first frame: a frame that differs from the median brightness by more than half
    the largest difference, whose previous frame did not. Either way: the tiny preset's random model turns
    a white frame darker than its usual grey."""
    if len(levels) < 3:
        return []
    values = np.asarray(levels, np.float64)
    deviation = np.abs(values - float(np.median(values)))
    if deviation.max() < MIN_FLASH_STEP:  # no frame stands out: no flashes
        return []
    bright = deviation > 0.5 * deviation.max()
    order = np.argsort(np.asarray(times, np.float64), kind="stable")
    found, previous = [], False
    for i in order:
        if bright[i] and not previous:
            found.append(float(times[i]))
        previous = bool(bright[i])
    return found


def find_clicks(chunks: Sequence[tuple[float, np.ndarray, int]], *, min_gap: float = 0.25) -> list[float]:
    """Onsets of the tone bursts in (pts seconds, mono samples, rate) chunks: where the level first rises
    above a quarter of the peak, at least ``min_gap`` after the last onset."""
    if not chunks:
        return []
    peak = max((float(np.abs(s).max()) for _, s, _ in chunks if len(s)), default=0.0)
    if peak < 0.02:
        return []
    threshold = 0.25 * peak
    onsets: list[float] = []
    for start, samples, rate in sorted(chunks, key=lambda c: c[0]):
        loud = np.flatnonzero(np.abs(samples) > threshold)
        for i in loud:
            t = start + i / rate
            if not onsets or t - onsets[-1] >= min_gap:
                onsets.append(t)
    return onsets


def longest_gap(chunks: Sequence[tuple[float, np.ndarray, int]]) -> float:
    """The longest stretch of the timeline no chunk covers, between the first chunk and the last."""
    spans = sorted((start, start + len(samples) / rate) for start, samples, rate in chunks)
    gap, end = 0.0, None
    for start, stop in spans:
        if end is not None:
            gap = max(gap, start - end)
        end = stop if end is None else max(end, stop)
    return gap


def pair_events(flashes: Sequence[float], clicks: Sequence[float], *, window: float = 0.4) -> list[tuple[float, float]]:
    """Each flash with its nearest click within ``window`` seconds (a click is used once)."""
    pairs, used = [], set()
    for flash in flashes:
        best = None
        for j, click in enumerate(clicks):
            if j not in used and abs(click - flash) <= window and (best is None or abs(click - flash) < abs(clicks[best] - flash)):
                best = j
        if best is not None:
            used.add(best)
            pairs.append((flash, clicks[best]))
    return pairs


def measure(video: Iterable[tuple[float, float]], audio: Iterable[tuple[float, np.ndarray, int]], *,
            window: float = 0.4) -> SyncReport:
    """Sync of decoded media: ``video`` as (pts seconds, mean brightness) per frame, ``audio`` as (pts seconds,
    mono samples, sample rate) per chunk (see ``brightness`` and ``mono``)."""
    video, audio = list(video), list(audio)
    times = [t for t, _ in video]
    flashes = find_flashes(times, [level for _, level in video])
    clicks = find_clicks(audio)
    return SyncReport(flashes=flashes, clicks=clicks, pairs=pair_events(flashes, clicks, window=window),
                      longest_audio_gap=longest_gap(audio), video_frames=len(video),
                      audio_seconds=sum(len(s) / r for _, s, r in audio))


def decoded(path: str | Path) -> tuple[list[tuple[float, float]], list[tuple[float, np.ndarray, int]]]:
    """(pts seconds, brightness) of every video frame and (pts seconds, samples, rate) of every audio frame
    of the first video and audio streams of ``path``."""
    video: list[tuple[float, float]] = []
    audio: list[tuple[float, np.ndarray, int]] = []
    with av.open(str(path)) as container:
        streams = [*container.streams.video[:1], *container.streams.audio[:1]]
        for packet in container.demux(streams):
            for frame in packet.decode():
                if frame.pts is None or frame.time_base is None:
                    continue
                seconds = float(frame.pts * frame.time_base)
                if isinstance(frame, av.VideoFrame):
                    video.append((seconds, brightness(frame)))
                else:
                    audio.append((seconds, mono(frame), frame.sample_rate))
    return video, audio


def measure_file(path: str | Path, *, window: float = 0.4) -> SyncReport:
    """Sync of the first video and audio streams of a file (or a stream ``av.open`` reads)."""
    video, audio = decoded(path)
    return measure(video, audio, window=window)
