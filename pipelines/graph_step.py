"""The whole frame step compiled as one function: on CUDA one CUDA graph per (batch size, step count).

uint8 frames at the working size -> normalize -> encode -> smoothing's input blend -> noise and 1-2 UNet
steps (with CFG where the family uses it) -> smoothing's output blend -> decode -> uint8, all inside one
``torch.compile`` call (``mode="reduce-overhead"``, i.e. inductor + CUDA graphs, on CUDA; inductor alone
elsewhere). It calls the pipeline's own ``to_model_images``, ``vae_encode``, ``denoise`` (and so ``_unet`` and
``unet_forward``), ``vae_decode`` and ``to_frames``: whatever those do is captured too.

What varies per frame goes in as tensors, so one graph serves every frame: every tensor field of a stream's
``StreamState`` (and of its ``PromptEmbeddings``) is stacked over the batch each call and read back inside
as one ``_Row`` per frame. Non-tensor fields are fixed when the graph is made: a per-stream value that the
UNet call reads must be a tensor field to reach the graph. Smoothing's skip and scene-cut decisions are made
on the device (pipelines/graph_smoothing.py), so nothing inside a step waits for the GPU.

A batch is padded up to the next compiled size. Frames not at the working size are resized (as uint8) on
the device before the graph and after it. A batch the graph cannot take runs the eager step: larger than the
largest compiled size, a step count or stream layout not compiled at start-up, or a stream with motion
compensation. Known difference from the eager step: a prompt fade (``prompt_blend_frames``) also advances on
frames that smoothing skips.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipelines import graph_smoothing as gs
from pipelines.frames import PendingResult
from pipelines.transfers import PendingFrames

log = logging.getLogger(__name__)

# StreamState fields the frame step never reads (a prompt fade's ends are folded into ``embeds`` before).
_NOT_READ = ("blend_from", "blend_target", "smoother")


class _Row:
    """What the frame step reads of one stream, for one batch row inside the compiled step."""


def tensor_fields(state: Any) -> dict[str, torch.Tensor | None]:
    """``name`` -> tensor for every tensor field of a stream's state, ``outer.inner`` for the tensor fields
    of dataclass fields (the prompt embeddings); None where the stream has none."""
    out: dict[str, torch.Tensor | None] = {}
    for f in fields(state):
        if f.name in _NOT_READ:
            continue
        value = getattr(state, f.name)
        if isinstance(value, torch.Tensor) or (value is None and f.type and "Tensor" in str(f.type)):
            out[f.name] = value
        elif is_dataclass(value) and not isinstance(value, type):
            for g in fields(value):
                inner = getattr(value, g.name)
                if inner is None or isinstance(inner, torch.Tensor):
                    out[f"{f.name}.{g.name}"] = inner
    return out


def _bucket(n: int, sizes: list[int]) -> int | None:
    return next((s for s in sizes if s >= n), None)


class _Joined:
    """The frames of several rounds (a smoothed stream with several frames in one batch), in batch order."""

    def __init__(self, n: int, parts: list[tuple[list[int], PendingFrames]]) -> None:
        self.n, self.parts = n, parts

    def done(self) -> bool:
        return all(p.done() for _, p in self.parts)

    def result(self) -> np.ndarray:
        first = self.parts[0][1].result()
        out = np.empty((self.n, *first.shape[1:]), first.dtype)
        for members, pending in self.parts:
            out[members] = pending.result()
        return out


class WholeStep:
    """The pipeline's whole frame step compiled per (batch size, step count); ``submit`` runs a batch through
    it, or returns None when the caller must run the eager step. New shapes compile only until ``seal``
    (after warm-up): nothing compiles on air."""

    def __init__(self, pipe: Any, sizes: list[int], *, backend: str = "inductor", cuda_graphs: bool = True,
                 on_failure: Callable[[str, BaseException], None] | None = None,
                 thread_state: Callable[[], None] | None = None) -> None:
        """``thread_state`` makes the calling thread's CUDA graph state before a replay (pipelines/compiled.py
        passes ``ensure_cuda_graph_tls``)."""
        self.pipe = pipe
        self.thread_state = thread_state
        self.sizes = sorted(set(sizes))
        self.cuda = pipe.device.type == "cuda"
        self.graphs = self.cuda and cuda_graphs
        self.on_failure = on_failure
        self.failed = False
        self.sealed = False
        self.ready: set[tuple] = set()
        self.compiled_calls = 0
        self.eager_batches = 0  # batches handed back to the eager step
        self._said: set[tuple] = set()
        self._schedules: dict[int, list] = {}
        self._empty: dict[str, torch.Tensor] | None = None
        self.compiled: Callable[..., Any] | None = None
        try:
            mode = "reduce-overhead" if self.graphs else None
            self.compiled = torch.compile(self._step, backend=backend, mode=mode, dynamic=False)
        except Exception as exc:  # noqa: BLE001 - any compiler problem means: run eagerly
            self._give_up(exc)

    @property
    def name(self) -> str:
        return "whole frame step"

    def seal(self) -> None:
        self.sealed = True

    def _give_up(self, exc: BaseException) -> None:
        if not self.failed and self.on_failure is not None:
            self.on_failure(self.name, exc)
        self.failed = True

    def _eager(self, why: tuple) -> None:
        self.eager_batches += 1
        if why not in self._said:
            self._said.add(why)
            log.info("whole-step graph: %s; that batch runs the eager step", why[0])

    # ---- on the host, around the graph ----------------------------------------------------------------
    def submit(self, frames: np.ndarray, ids: list[str], states: list[Any], output_type: str
               ) -> PendingResult | None:
        if self.failed or self.compiled is None:
            return None
        pipe = self.pipe
        steps = len(states[0].schedule)
        if any(len(s.schedule) != steps for s in states):
            return self._eager(("streams at different step counts",))
        smoothers = [pipe._smoother(s, graph=True) for s in states]
        if not all(gs.eligible(sm) for sm in smoothers):
            return self._eager(("a stream with motion compensation",))
        rounds = pipe._rounds(ids, states)
        per_state = [tensor_fields(s) for s in states]
        signature = tuple((k, None if v is None else (tuple(v.shape), v.dtype)) for k, v in per_state[0].items())
        if any(tuple((k, None if v is None else (tuple(v.shape), v.dtype)) for k, v in p.items()) != signature
               for p in per_state[1:]):
            return self._eager(("streams whose state tensors differ in shape",))
        keys = []
        for members in rounds:
            size = _bucket(len(members), self.sizes)
            key = (size, steps, signature, output_type)
            if size is None:
                return self._eager((f"a batch of {len(members)} is above the largest compiled size "
                                    f"{self.sizes[-1]}",))
            if self.sealed and key not in self.ready:
                return self._eager((f"batch {size} at {steps} step(s), {output_type} out, was not compiled at "
                                    "start-up", key))
            keys.append(key)
        saved = [(s.embeds, s.blend_from, s.blend_target, s.blend_done) for s in states]
        new = [key for key in keys if key not in self.ready]
        parts: list[tuple[list[int], PendingFrames]] = []
        try:
            for members, key in zip(rounds, keys, strict=True):
                sub = frames if len(rounds) == 1 else frames[members]
                out = self._run(sub, [states[i] for i in members], [smoothers[i] for i in members],
                                [per_state[i] for i in members], key)
                parts.append((members, PendingFrames(out)))
                self.ready.add(key)
        except Exception as exc:  # noqa: BLE001 - a failed compile must not stop the stream
            if parts or not new:  # it ran before: not a compiler problem
                raise
            for s, (embeds, blend_from, blend_target, done) in zip(states, saved, strict=True):
                s.embeds, s.blend_from, s.blend_target, s.blend_done = embeds, blend_from, blend_target, done
            self._give_up(exc)
            return None
        self.compiled_calls += len(parts)
        return parts[0][1] if len(parts) == 1 else _Joined(len(ids), parts)

    def _run(self, frames: np.ndarray, states: list[Any], smoothers: list[Any],
             per_state: list[dict[str, torch.Tensor | None]], key: tuple) -> torch.Tensor:
        pipe = self.pipe
        size, steps, _, output_type = key
        n, height, width = frames.shape[:3]
        if size > n:  # pad with copies of the last frame: its results are dropped
            frames = np.concatenate([frames, np.repeat(frames[-1:], size - n, axis=0)])
        for i, s in enumerate(states):
            if s.blend_target is not None:  # a prompt fading in: its embeddings move on this frame
                pipe._advance_prompt_blend(s)
                per_state[i] = tensor_fields(s)
        padded = per_state + [per_state[-1]] * (size - n)
        rows = {k: None if v is None else torch.stack([p[k] for p in padded]) for k, v in per_state[0].items()}
        if steps not in self._schedules:
            self._schedules[steps] = list(states[0].schedule)
        pixels = self._fit(pipe.uploads.upload(frames), pipe.config.height, pipe.config.width)
        if self._empty is None:
            self._empty = gs.empty_state((3, pipe.config.height, pipe.config.width),
                                         (pipe.latent_channels, pipe.config.height // pipe.vae_scale,
                                          pipe.config.width // pipe.vae_scale), pipe.dtype, pipe.device)
        empty = self._empty
        state_rows = [gs.from_eager(sm, empty) if sm is not None else empty for sm in smoothers]
        state_rows += [empty] * (size - n)
        config = torch.stack([gs.config_row(sm, pipe.device) for sm in smoothers]
                             + [gs.config_row(None, pipe.device)] * (size - n))
        if self.graphs:
            if self.thread_state is not None:
                self.thread_state()
            torch.compiler.cudagraph_mark_step_begin()
        out, new_state = self.compiled(pixels, rows, gs.gather(state_rows), config, steps, output_type)
        gs.scatter({k: v[:n] for k, v in new_state.items()}, smoothers)
        out = out[:n]
        if (height, width) != tuple(out.shape[1:3]):
            out = self._unfit(out, height, width, output_type)
        return out

    @staticmethod
    def _fit(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """uint8 frames at another size -> uint8 at the working size (one graph serves every input size)."""
        if tuple(pixels.shape[1:3]) == (height, width):
            return pixels
        x = F.interpolate(pixels.permute(0, 3, 1, 2).float(), size=(height, width), mode="bilinear",
                          antialias=True, align_corners=False)
        return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()

    @staticmethod
    def _unfit(out: torch.Tensor, height: int, width: int, output_type: str) -> torch.Tensor:
        x = F.interpolate(out.permute(0, 3, 1, 2).float(), size=(height, width), mode="bilinear",
                          antialias=True, align_corners=False).permute(0, 2, 3, 1)
        if output_type == "float":
            return x.clamp(0, 1).contiguous()
        return x.round().clamp(0, 255).to(torch.uint8).contiguous()

    # ---- inside the graph -------------------------------------------------------------------------------
    def _step(self, pixels: torch.Tensor, rows: dict[str, torch.Tensor | None],
              state: dict[str, torch.Tensor], config: torch.Tensor, steps: int,
              output_type: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pipe = self.pipe
        images = pipe.to_model_images(pixels)
        smoothing = gs.BatchSmoothing(images, state, config)
        latents = smoothing.blend_input(pipe.vae_encode(images))
        denoised = pipe.denoise(latents, self._rows(rows, images.shape[0], steps))
        decoded = pipe.vae_decode(smoothing.blend_output(denoised))
        out = smoothing.output(decoded)
        frames = pipe.to_frames(out, pipe.config.height, pipe.config.width, output_type).contiguous()
        return frames, smoothing.state

    def _rows(self, rows: dict[str, torch.Tensor | None], batch: int, steps: int) -> list[_Row]:
        from pipelines.stream_state import PromptEmbeddings

        out = []
        for i in range(batch):
            row = _Row()
            nested: dict[str, dict[str, Any]] = {}
            for key, value in rows.items():
                item = None if value is None else value[i]
                if "." in key:
                    outer, inner = key.split(".", 1)
                    nested.setdefault(outer, {})[inner] = item
                else:
                    setattr(row, key, item)
            for outer, values in nested.items():
                setattr(row, outer, PromptEmbeddings(**values) if outer == "embeds" else values)
            row.schedule = self._schedules[steps]
            # With CFG in the family, every frame runs both halves; guidance_row picks per frame.
            row.guidance_scale = 2.0 if self.pipe.uses_cfg else 1.0
            out.append(row)
        return out
