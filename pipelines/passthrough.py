"""A pipeline with no model: frames come back unchanged. Tests sinks and measures the runtime's own cost."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipelines.config import LiveParams
from pipelines.frames import DEFAULT_STREAM, FramePipeline, check_frames


class PassthroughPipeline(FramePipeline):
    """``delay`` (seconds per call) stands in for a model's time, to measure the runtime behind a slow model."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.params: dict[str, dict[str, Any]] = {}

    def __call__(self, frames: np.ndarray, stream_ids: Sequence[str] | None = None) -> np.ndarray:
        check_frames(frames, stream_ids)
        if self.delay:
            time.sleep(self.delay)
        return frames.copy()

    def update(self, stream_id: str = DEFAULT_STREAM, **params: Any) -> None:
        """Checked like every pipeline's (LiveParams) and kept per stream; nothing here uses them."""
        change = LiveParams.parse(params).changes()
        self.params.setdefault(stream_id, {}).update(change)

    def remove_stream(self, stream_id: str) -> None:
        self.params.pop(stream_id, None)
