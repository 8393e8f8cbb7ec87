"""The frame step's model calls compiled with torch.compile (inductor), and on CUDA replayed from CUDA graphs.

Each of the three seams of StreamPipeline (VAE encode, UNet, VAE decode) is replaced by a ``CompiledCall``.
Compiled code and CUDA graphs want fixed shapes, so a call pads its batch up to the nearest of the
configured batch sizes (``compile_batch_sizes``) and slices the result back; a batch above the largest size
runs eagerly. Everything is compiled at start-up (``warm_up``), one message per batch size, and inductor's
cache lives in ~/.cache/streamer/inductor so the next start is fast. If compiling fails, the call says so
once and runs eagerly from then on.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

CACHE_DIR = Path.home() / ".cache" / "streamer" / "inductor"


def should_compile(setting: str, device: torch.device) -> bool:
    """``auto``: on CUDA only (on a CPU the UNet is the whole cost and compiling buys little)."""
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def _bucket(batch: int, sizes: list[int]) -> int | None:
    return next((size for size in sizes if size >= batch), None)


def _pad(value: Any, batch: int, size: int) -> Any:
    """Repeat the last row of every batch-sized tensor up to ``size`` rows (other values pass through)."""
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == batch and size > batch:
        return torch.cat([value, value[-1:].expand(size - batch, *value.shape[1:])])
    return value


class CompiledCall:
    """A model call compiled per fixed batch size, with eager fallback.

    ``batch_of(args)`` gives the batch the call is for (for the UNet with classifier-free guidance that is
    twice the number of frames); every tensor argument with that many rows is padded.
    """

    def __init__(self, name: str, eager: Callable[..., torch.Tensor], sizes: list[int], device: torch.device,
                 backend: str = "inductor", on_failure: Callable[[str, BaseException], None] | None = None) -> None:
        self.name = name
        self.eager = eager
        self.sizes = sorted(set(sizes))
        self.cuda = device.type == "cuda"
        self.on_failure = on_failure
        self.failed = False
        self.compiled_calls = 0  # calls served by compiled code (the rest ran eagerly)
        self.compiled: Callable[..., torch.Tensor] | None = None
        try:
            # reduce-overhead = inductor + CUDA graphs; on a CPU there are no graphs to capture.
            mode = "reduce-overhead" if self.cuda else None
            self.compiled = torch.compile(eager, backend=backend, mode=mode, dynamic=False)
        except Exception as exc:  # noqa: BLE001 - any compiler problem means: run eagerly
            self._give_up(exc)

    def _give_up(self, exc: BaseException) -> None:
        if not self.failed and self.on_failure is not None:
            self.on_failure(self.name, exc)
        self.failed = True

    def __call__(self, *args: Any) -> torch.Tensor:
        batch = args[0].shape[0]
        size = _bucket(batch, self.sizes)
        if self.failed or self.compiled is None or size is None:
            return self.eager(*args)
        padded = [_pad(a, batch, size) for a in args]
        try:
            if self.cuda:
                torch.compiler.cudagraph_mark_step_begin()
            out = self.compiled(*padded)
            self.compiled_calls += 1
        except Exception as exc:  # noqa: BLE001 - a failed compile must not stop the stream
            self._give_up(exc)
            return self.eager(*args)
        # CUDA-graph outputs live in the graph's memory and are overwritten by the next replay: copy.
        return out[:batch].clone() if self.cuda else out[:batch]


def enable_compile(pipe: Any, sizes: list[int], *, backend: str = "inductor",
                   progress: Callable[[str], None] | None = None) -> float:
    """Replace the pipeline's model calls by compiled ones and compile them for every batch size now.
    Returns the seconds it took."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(CACHE_DIR))
    device = pipe.device
    warned: list[str] = []

    def warn_once(name: str, exc: BaseException) -> None:
        if not warned:
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            log.warning("compiling the frame step failed at the %s (%s); running eagerly", name, first_line)
        warned.append(name)

    pipe.vae_encode = CompiledCall("VAE encode", pipe.vae_encode, sizes, device, backend, warn_once)
    pipe.vae_decode = CompiledCall("VAE decode", pipe.vae_decode, sizes, device, backend, warn_once)
    # With classifier-free guidance the UNet sees two rows per frame.
    unet_sizes = sorted(set(sizes) | ({2 * s for s in sizes} if pipe.uses_cfg else set()))
    pipe.unet_forward = CompiledCall("UNet", pipe.unet_forward, unet_sizes, device, backend, warn_once)
    seconds = warm_up(pipe, sizes, progress=progress)
    (progress or _stderr)(f"streamer: frame step {'running eagerly' if warned else 'compiled'} after "
                          f"{seconds:.1f} s of warm-up")
    return seconds


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def warm_up(pipe: Any, sizes: list[int], progress: Callable[[str], None] | None = None) -> float:
    """Run one batch of every size through the frame step, so compiling happens now and not on air."""
    import numpy as np

    say = progress or _stderr
    started = time.perf_counter()
    for size in sorted(set(sizes)):
        t0 = time.perf_counter()
        say(f"streamer: compiling the frame step for batch {size} (first start only; cached in "
            f"{os.environ.get('TORCHINDUCTOR_CACHE_DIR', CACHE_DIR)})...")
        frames = np.zeros((size, pipe.config.height, pipe.config.width, 3), np.uint8)
        ids = [f"__warmup_{i}" for i in range(size)]
        pipe(frames, ids)
        for stream_id in ids:
            pipe.remove_stream(stream_id)
        say(f"streamer: batch {size} ready in {time.perf_counter() - t0:.1f} s")
    return time.perf_counter() - started
