"""Frames between host and GPU without stalling the GPU.

On CUDA, frames go up from pinned (page-locked) host memory on a side stream, so the copy of one batch
overlaps the model's work on the batch before it, and results come back into pinned memory
asynchronously: ``StreamPipeline.submit`` returns at once and ``PendingFrames.result()`` waits. Elsewhere
the same calls are plain synchronous copies.
"""

from __future__ import annotations

import numpy as np
import torch


class HostToDevice:
    """Uploads uint8 frame batches; one per pipeline (it owns the side stream)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None

    def upload(self, frames: np.ndarray) -> torch.Tensor:
        """(N, H, W, 3) uint8 -> the same on the device, ready for work queued after this call."""
        if not self.cuda:
            return torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        # Pinned blocks come from torch's caching host allocator, which keeps a block until the copies
        # queued from it have finished, so a fresh tensor per batch costs no page-locking.
        host = torch.empty(frames.shape, dtype=torch.uint8, pin_memory=True)
        host.numpy()[...] = frames
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self.stream):
            pixels = host.to(self.device, non_blocking=True)
        compute.wait_stream(self.stream)
        # Allocated on the side stream, used on the compute stream: the allocator must not hand the block
        # to the side stream again before the compute stream is done with it.
        pixels.record_stream(compute)
        return pixels


class PendingFrames:
    """Stylized frames on their way back to the host; ``result()`` waits for them."""

    def __init__(self, output: torch.Tensor) -> None:
        """``output``: (N, H, W, 3) uint8 or float32 on any device, produced by work already queued."""
        self.event: torch.cuda.Event | None = None
        if output.device.type == "cuda":
            self.host = torch.empty(output.shape, dtype=output.dtype, pin_memory=True)
            self.host.copy_(output.contiguous(), non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record(torch.cuda.current_stream(output.device))
        else:
            self.host = output.contiguous()

    def done(self) -> bool:
        return self.event is None or self.event.query()

    def result(self) -> np.ndarray:
        if self.event is not None:
            self.event.synchronize()
        return self.host.numpy()
