"""What every pipeline accepts and returns, and the checks on it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from pipelines.config import LiveParams

DEFAULT_STREAM = "default"
# What ``FramePipeline.update`` accepts: the parameters a user may change while a stream runs.
LIVE_PARAMS = tuple(LiveParams.model_fields)


class PendingResult(Protocol):
    """What ``FramePipeline.submit`` hands back: the frames of one call, perhaps still on their way."""

    def done(self) -> bool: ...

    def result(self) -> np.ndarray: ...


class ReadyFrames:
    """A PendingResult whose frames are already here (a pipeline that computes on the calling thread)."""

    def __init__(self, frames: np.ndarray) -> None:
        self.frames = frames

    def done(self) -> bool:
        return True

    def result(self) -> np.ndarray:
        return self.frames


@runtime_checkable
class FramePipeline(Protocol):
    """uint8 RGB frames (N, H, W, 3) in, the same shape out; one entry of ``stream_ids`` per frame.

    Each stream keeps its own prompt, seed, noise and temporal state, so frames of several streams can
    share one call. ``update`` changes a stream's parameters live (prompt, strength, seed, ...): it reads
    them with ``LiveParams.parse`` and applies all of them or none (ValueError if refused).

    ``submit`` queues a call and returns without waiting where the pipeline can (on a GPU); its ``result()``
    waits. ``prepare_thread`` is called on the thread that will run frames, before its first one. A class
    that names FramePipeline as its base gets both: ``submit`` as a plain call, ``prepare_thread`` doing
    nothing.
    """

    def __call__(self, frames: np.ndarray, stream_ids: Sequence[str] | None = None) -> np.ndarray: ...

    def update(self, stream_id: str = DEFAULT_STREAM, **params: Any) -> None: ...

    def remove_stream(self, stream_id: str) -> None: ...

    def submit(self, frames: np.ndarray, stream_ids: Sequence[str] | None = None) -> PendingResult:
        return ReadyFrames(self(frames, stream_ids))

    def prepare_thread(self) -> None:
        return None


def check_frames(frames: object, stream_ids: Sequence[str] | None) -> list[str]:
    """Raise ValueError naming what is wrong with a batch; return one stream id per frame."""
    if not isinstance(frames, np.ndarray):
        raise ValueError(f"frames must be a numpy array of shape (N, H, W, 3), got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 RGB, got dtype {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape (N, H, W, 3), got {tuple(frames.shape)}")
    if frames.shape[0] == 0 or frames.shape[1] == 0 or frames.shape[2] == 0:
        raise ValueError(f"frames must not be empty, got shape {tuple(frames.shape)}")
    if stream_ids is None:
        return [DEFAULT_STREAM] * frames.shape[0]
    ids = list(stream_ids)
    if len(ids) != frames.shape[0]:
        raise ValueError(f"got {frames.shape[0]} frames but {len(ids)} stream ids; give one per frame")
    return ids
