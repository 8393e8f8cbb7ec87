"""Test clips made here (no downloads) with a known truth: a still scene, a known motion, a cut.
Plus reading and writing clips as real video files."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

CLIP_NAMES = ("still", "moving", "cut")


@dataclass
class Clip:
    name: str
    frames: np.ndarray  # (N, H, W, 3) uint8 RGB
    fps: float = 30.0
    description: str = ""
    cut_frames: list[int] = field(default_factory=list)  # index of the first frame of each new scene
    motion: tuple[float, float, float] = (0.0, 0.0, 0.0)  # dx, dy (pixels), rotation (degrees) per frame


def scene(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A textured picture (H, W, 3) uint8: smooth colour fields, shapes with edges, fine texture."""
    rng = np.random.default_rng(seed)
    img = np.zeros((height, width, 3), np.float32)
    for scale, weight in ((max(width, height) / 6, 0.55), (max(width, height) / 24, 0.3), (1.5, 0.15)):
        noise = rng.standard_normal((height, width, 3)).astype(np.float32)
        noise = cv2.GaussianBlur(noise, (0, 0), scale)
        noise /= noise.std() + 1e-6
        img += weight * noise
    img = 128 + 40 * img
    for _ in range(6):
        colour = rng.uniform(20, 235, 3).tolist()
        centre = (int(rng.uniform(0, width)), int(rng.uniform(0, height)))
        if rng.random() < 0.5:
            radius = int(rng.uniform(0.05, 0.2) * min(width, height)) + 1
            cv2.circle(img, centre, radius, colour, -1, lineType=cv2.LINE_AA)
        else:
            size = (rng.uniform(0.1, 0.3, 2) * (width, height)).astype(int)
            cv2.rectangle(img, centre, (centre[0] + int(size[0]), centre[1] + int(size[1])), colour, -1)
    return np.clip(img, 0, 255).astype(np.uint8)


def still_clip(num_frames: int = 24, width: int = 256, height: int = 192, noise_std: float = 3.0,
               lighting_flicker: float = 0.015, seed: int = 0) -> Clip:
    """A fixed camera: the same scene with sensor noise and a slight brightness flicker each frame."""
    rng = np.random.default_rng(seed + 1)
    base = scene(width, height, seed).astype(np.float32)
    frames = []
    for _ in range(num_frames):
        gain = 1.0 + lighting_flicker * rng.uniform(-1, 1)
        frame = base * gain + rng.normal(0, noise_std, base.shape)
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return Clip("still", np.stack(frames), description=(
        f"still scene, sensor noise std {noise_std:g}, lighting flicker +-{lighting_flicker * 100:g}%"))


def moving_clip(num_frames: int = 24, width: int = 256, height: int = 192, dx: float = 3.0, dy: float = 1.0,
                rotation_deg: float = 0.3, noise_std: float = 1.0, seed: int = 0) -> Clip:
    """The camera pans by (dx, dy) pixels and turns by rotation_deg about the centre per frame."""
    rng = np.random.default_rng(seed + 2)
    pad = int(num_frames * (abs(dx) + abs(dy)) + 0.2 * max(width, height)) + 8
    canvas = scene(width + 2 * pad, height + 2 * pad, seed)
    cx, cy = canvas.shape[1] / 2, canvas.shape[0] / 2
    frames = []
    for i in range(num_frames):
        matrix = cv2.getRotationMatrix2D((cx, cy), rotation_deg * i, 1.0)
        matrix[:, 2] += (dx * i - pad, dy * i - pad)  # content moves by +dx, +dy per frame
        frame = cv2.warpAffine(canvas, matrix, (width, height), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT)
        frame = frame.astype(np.float32) + rng.normal(0, noise_std, frame.shape)
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return Clip("moving", np.stack(frames), motion=(dx, dy, rotation_deg), description=(
        f"textured scene panning {dx:g},{dy:g} px and turning {rotation_deg:g} deg per frame"))


def cut_clip(num_frames: int = 24, width: int = 256, height: int = 192, cut_at: int | None = None,
             noise_std: float = 2.0, seed: int = 0) -> Clip:
    """Two different still scenes with a hard cut between them."""
    cut_at = num_frames // 2 if cut_at is None else cut_at
    rng = np.random.default_rng(seed + 3)
    first, second = scene(width, height, seed + 10), scene(width, height, seed + 20)
    # The second scene is inverted-ish so the cut is a large change even where colours happen to match.
    second = (255 - second // 2 - first // 2).astype(np.uint8)
    frames = []
    for i in range(num_frames):
        base = (first if i < cut_at else second).astype(np.float32)
        frames.append(np.clip(base + rng.normal(0, noise_std, base.shape), 0, 255).astype(np.uint8))
    return Clip("cut", np.stack(frames), cut_frames=[cut_at], description=f"cut between two scenes at frame {cut_at}")


def make_clip(name: str, num_frames: int = 24, width: int = 256, height: int = 192) -> Clip:
    makers = {"still": still_clip, "moving": moving_clip, "cut": cut_clip}
    if name not in makers:
        raise ValueError(f"unknown clip {name!r}; choose from {', '.join(CLIP_NAMES)}")
    return makers[name](num_frames=num_frames, width=width, height=height)


def write_clip(path: Path, frames: np.ndarray, fps: float = 30.0, crf: int = 4) -> None:
    """Frames (N, H, W, 3) uint8 -> an H.264 file (near lossless, so metrics see the clip, not the codec)."""
    import av

    height, width = frames.shape[1:3]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = width - width % 2, height - height % 2
        stream.pix_fmt = "yuv444p"  # no chroma subsampling: colour edges stay where they were
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[: stream.height, : stream.width]),
                                               format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def read_clip(path: Path, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """A video file -> frames (N, H, W, 3) uint8 RGB, upright as a player shows them, and its frame rate.
    SourceError (one line) for a file that cannot be read, ValueError for one without frames."""
    from streamer.media.av_io import read_frames

    frames, fps = read_frames(path, limit=max_frames)
    if not frames:
        raise ValueError(f"{path} holds no video frames")
    return np.stack(frames), (fps if math.isfinite(fps) and fps > 0 else 30.0)
