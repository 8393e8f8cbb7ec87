"""A pipeline with no model: frames come back unchanged. Tests sinks and measures the runtime's own cost."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pipelines.frames import DEFAULT_STREAM, check_frames


class PassthroughPipeline:
    def __init__(self) -> None:
        self.params: dict[str, dict[str, Any]] = {}

    def __call__(self, frames: np.ndarray, stream_ids: Sequence[str] | None = None) -> np.ndarray:
        check_frames(frames, stream_ids)
        return frames.copy()

    def update(self, stream_id: str = DEFAULT_STREAM, **params: Any) -> None:
        self.params.setdefault(stream_id, {}).update({k: v for k, v in params.items() if v is not None})

    def remove_stream(self, stream_id: str) -> None:
        self.params.pop(stream_id, None)
