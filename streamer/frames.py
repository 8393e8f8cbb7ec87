"""The one frame type that travels from a source to every sink."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from fractions import Fraction

import numpy as np


@dataclass(slots=True)
class Frame:
    """An RGB picture with the timing it was captured with.

    ``pts`` counts ``time_base`` units on the source's clock and is copied unchanged from input to output,
    so a recorded file keeps the source's timing (variable frame rate, gaps) and audio stays in sync.
    ``capture_time`` is ``time.monotonic()`` when the source produced the frame; sinks subtract it to
    measure latency.
    """

    image: np.ndarray  # (H, W, 3) uint8 RGB
    pts: int | None = None
    time_base: Fraction = Fraction(1, 90_000)
    capture_time: float = field(default_factory=time.monotonic)
    stream_id: str = "default"
    index: int = 0  # running count within its stream, for logs and drop accounting

    @property
    def seconds(self) -> float | None:
        """Presentation time in seconds, or None when the source gave no timestamp."""
        return None if self.pts is None else float(self.pts * self.time_base)

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    def with_image(self, image: np.ndarray) -> Frame:
        """The same frame (timing, stream, index) carrying new pixels."""
        return replace(self, image=image)
