"""The stream pipeline: the frame step of 1-2 step LCM (or Turbo) img2img for live video.

uint8 RGB frames (N, H, W, 3) of any size -> resized to the working size -> VAE encode -> noise at the
strength's timestep, from a fixed, seeded noise tensor per stream -> 1-2 denoising steps -> decode -> uint8
at the caller's size. Each frame carries its own stream's prompt embedding, noise, timesteps and temporal
state, so one UNet call serves frames of several streams.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.compiled import attention_kernel
from pipelines.conditioning.controlnet import Control, ControlNetSteps, unet_residual_kwargs
from pipelines.config import PipelineConfig
from pipelines.errors import PipelineError
from pipelines.frames import FramePipeline, check_frames
from pipelines.loading import ModelComponents, load_components
from pipelines.schedules import check_schedule, predict_original
from pipelines.stream_state import StreamParams, StreamState
from pipelines.transfers import HostToDevice, PendingFrames

log = logging.getLogger(__name__)


class StreamPipeline(StreamParams, ControlNetSteps, FramePipeline):
    """Frames in, stylized frames out. ``pipe(frames, stream_ids)``; ``pipe.update(stream_id, prompt=...)``
    (per-stream state and live changes: pipelines/stream_state.py)."""

    def __init__(self, components: ModelComponents, config: PipelineConfig) -> None:
        self.components = components
        self.config = config
        self.device = components.device
        self.dtype = components.dtype
        self.unet = components.unet
        self.vae = components.vae
        self.scheduler = components.scheduler
        self.prediction_type = self.scheduler.config.prediction_type
        # LCM-LoRA and Turbo run diffusers' img2img pipelines: their timestep rule, and their CFG.
        self.img2img_semantics = components.family in ("lcm-lora", "turbo")
        self.uses_cfg = self.img2img_semantics
        try:  # the config's steps and strength must make a schedule, as every live change's must
            check_schedule(self.scheduler, steps=config.num_inference_steps, strength=config.strength,
                           img2img_semantics=self.img2img_semantics,
                           original_inference_steps=config.original_inference_steps)
        except ValueError as exc:
            raise PipelineError(f"bad setting: {exc}") from None
        self.scaling_factor = float(getattr(self.vae.config, "scaling_factor", 1.0))
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1) if hasattr(
            self.vae.config, "block_out_channels") else 8
        self.latent_channels = int(self.unet.config.in_channels)
        self.streams: dict[str, StreamState] = {}
        from pipelines.conditioning.ip_adapter import StyleEncoder, frame_scales

        self.style_scales = frame_scales(self.unet)  # per-frame IP-Adapter scales, when one is loaded
        self.style = None if self.style_scales is None else StyleEncoder(components.prompt_pipe, self.device,
                                                                         self.dtype)
        self.config_style()  # a style picture given in the config is read now, not at the first stream
        self.uploads = HostToDevice(self.device)
        self.whole_step: Any = None  # pipelines/graph_step.WholeStep when the whole step is compiled
        # SDXL's size conditioning: original size, crop corner, target size (img2img, no crop).
        h, w = config.height, config.width
        self.sdxl_time_ids = torch.tensor([[h, w, 0, 0, h, w]], device=self.device, dtype=self.dtype)

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: PipelineConfig, *,
                    on_progress: Callable[[str], None] | None = None) -> StreamPipeline:
        """Load the models and, when compiling, compile now; ``on_progress`` hears how far that got (else
        the log: pipelines print nothing)."""
        from pipelines.compiled import (
            check_attention,
            enable_compile,
            graph_mode,
            should_compile,
            speed_up_modules,
        )

        pipe = cls(load_components(config), config)
        try:
            check_attention(config.attention, pipe.device, pipe.dtype)
        except ValueError as exc:
            raise PipelineError(f"bad setting: {exc}") from None
        speed_up_modules(pipe.unet, pipe.vae, pipe.device, fuse_qkv=config.fuse_qkv,
                         channels_last=config.channels_last)
        if should_compile(config.compile, pipe.device):
            enable_compile(pipe, config.compile_batch_sizes, progress=on_progress,
                           cache_dir=config.compile_cache_dir, graph=graph_mode(config.graph, pipe.device))
        return pipe

    @classmethod
    def from_preset(cls, name: str, *, on_progress: Callable[[str], None] | None = None,
                    **overrides: Any) -> StreamPipeline:
        """A preset (pipelines/preset_files) with PipelineConfig fields on top, e.g. ``device="cuda"``."""
        from pipelines.presets import build_config

        return cls.from_config(build_config(name, overrides), on_progress=on_progress)

    @classmethod
    def from_pretrained(cls, model_id: str, *, family: str = "lcm", **settings: Any) -> StreamPipeline:
        """A hub id or local diffusers folder; ``settings`` are PipelineConfig fields (vae_id, lora_id, ...)."""
        return cls.from_config(PipelineConfig(family=family, model_id=model_id, **settings))

    def prepare_thread(self) -> None:
        """Called on the thread that will run frames, before its first one (see pipelines/compiled.py)."""
        from pipelines.compiled import prepare_thread

        prepare_thread(self)

    # ---- the frame step -----------------------------------------------------------------------------
    def __call__(self, frames: np.ndarray, stream_ids: Sequence[str] | None = None,
                 output_type: Literal["uint8", "float"] = "uint8") -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, H, W, 3) uint8 (or float in [0, 1] with ``output_type="float"``)."""
        return self.submit(frames, stream_ids, output_type).result()

    def submit(self, frames: np.ndarray, stream_ids: Sequence[str] | None = None,
               output_type: Literal["uint8", "float"] = "uint8") -> PendingFrames:
        """Queue the frame step and return without waiting for the GPU (on CUDA); ``.result()`` waits.
        A caller that submits the next batch before taking this one's result keeps the GPU busy."""
        ids = check_frames(frames, stream_ids)
        states = [self.stream(i) for i in ids]
        n, height, width = frames.shape[:3]
        with torch.no_grad(), attention_kernel(self.config.attention, self.device):
            if self.whole_step is not None:  # the whole step in one compiled graph (pipelines/graph_step.py)
                pending = self.whole_step.submit(frames, ids, states, output_type)
                if pending is not None:
                    return pending
            images = self.to_model_images(self.uploads.upload(frames))
            rounds = self._rounds(ids, states)
            if len(rounds) == 1:  # the usual case: one model call for the whole batch, in order
                out = self.step(images, states)
            else:
                out = torch.empty_like(images)
                for members in rounds:
                    out[members] = self.step(images[members], [states[i] for i in members])
            return PendingFrames(self.to_frames(out, height, width, output_type))

    def to_model_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 on the device -> (N, 3, h, w) in [-1, 1] at the working size, model dtype."""
        images = pixels.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        if tuple(pixels.shape[1:3]) != (self.config.height, self.config.width):
            images = F.interpolate(images, size=(self.config.height, self.config.width), mode="bilinear",
                                   antialias=True, align_corners=False)
        return images.to(self.dtype)

    def to_frames(self, out: torch.Tensor, height: int, width: int,
                  output_type: Literal["uint8", "float"] = "uint8") -> torch.Tensor:
        """Decoded (N, 3, h, w) in about [-1, 1] -> (N, height, width, 3) uint8 (or float in [0, 1])."""
        if (height, width) != (self.config.height, self.config.width):
            out = F.interpolate(out.float(), size=(height, width), mode="bilinear", antialias=True,
                                align_corners=False)
        out = (out.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)
        if output_type == "float":
            return out
        return (out * 255).round().to(torch.uint8)

    @staticmethod
    def _rounds(ids: list[str], states: list[StreamState]) -> list[list[int]]:
        """Batch indices in the order they must run. A smoothed stream's frames depend on each other (each
        blends with the one before), so its k-th frame in this batch goes into round k; frames of different
        streams, and all frames of unsmoothed streams, share round 0: one model call."""
        rounds: list[list[int]] = [[]]
        seen: dict[str, int] = {}
        for i, (stream_id, state) in enumerate(zip(ids, states, strict=True)):
            k = 0
            if state.smoothing.enabled:
                k = seen.get(stream_id, 0)
                seen[stream_id] = k + 1
            while len(rounds) <= k:
                rounds.append([])
            rounds[k].append(i)
        return rounds

    def step(self, images: torch.Tensor, states: list[StreamState]) -> torch.Tensor:
        """(B, 3, h, w) in [-1, 1] at the working size -> decoded (B, 3, h, w) in about [-1, 1]."""
        smoothers = [self._smoother(s) for s in states]
        skip = [sm is not None and sm.check_input(images[i]) for i, sm in enumerate(smoothers)]
        run = [i for i in range(len(states)) if not skip[i]]
        everyone = len(run) == len(states)
        # Indexing with a list copies the index to the GPU and waits: only when some frames are skipped.
        out = None if everyone else torch.empty_like(images)
        if run:
            latents = self.vae_encode(images if everyone else images[run])
            run_states = states if everyone else [states[i] for i in run]
            for s in run_states:
                self._advance_prompt_blend(s)
            for j, i in enumerate(run):
                if smoothers[i] is not None:
                    latents[j] = smoothers[i].blend_input(latents[j])
            control = self.prepare_control(images if everyone else images[run], run_states)
            denoised = self.denoise(latents, run_states, control)
            for j, i in enumerate(run):
                if smoothers[i] is not None:
                    denoised[j] = smoothers[i].blend_output(denoised[j])
            decoded = self.vae_decode(denoised)
            for j, i in enumerate(run):
                if smoothers[i] is not None:
                    smoothers[i].remember_output(decoded[j])
            if everyone:
                self.remember_outputs(decoded, states)
                return decoded
            out[run] = decoded
        for i in range(len(states)):
            if skip[i]:
                out[i] = smoothers[i].previous_output()
        self.remember_outputs(out, states)
        return out

    # The three model calls, tensors in and out: the seams pipelines/compiled.py replaces with compiled
    # versions (padded to fixed batch sizes) on CUDA.
    def vae_encode(self, images: torch.Tensor) -> torch.Tensor:
        encoded = self.vae.encode(images.to(self.dtype))
        if hasattr(encoded, "latent_dist"):  # AutoencoderKL: the mean, so still input stays still
            latents = encoded.latent_dist.mode()
        else:
            latents = encoded.latents
        return latents * self.scaling_factor

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents.to(self.dtype) / self.scaling_factor).sample

    def unet_forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                     timestep_cond: torch.Tensor | None = None, text_embeds: torch.Tensor | None = None,
                     time_ids: torch.Tensor | None = None, image_embeds: torch.Tensor | None = None,
                     style_scales: torch.Tensor | None = None, *residuals: torch.Tensor) -> torch.Tensor:
        """``image_embeds``/``style_scales``: the IP-Adapter's per-row style embedding and scale;
        ``residuals``: a ControlNet's (down blocks..., mid block), added inside the UNet."""
        added = None if text_embeds is None else {"text_embeds": text_embeds, "time_ids": time_ids}
        if image_embeds is not None:  # IP-Adapter: every row's style embedding, weighted by its own scale
            self.style_scales.value = style_scales
            added = {**(added or {}), "image_embeds": [image_embeds]}
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                         timestep_cond=timestep_cond, added_cond_kwargs=added, return_dict=False,
                         **unet_residual_kwargs(residuals))[0]

    @staticmethod
    def _columns(rows: torch.Tensor) -> list[torch.Tensor]:
        """(B, n) per-frame numbers -> n tensors of shape (B, 1, 1, 1) that broadcast over latents."""
        return [rows[:, i].view(-1, 1, 1, 1) for i in range(rows.shape[1])]

    def denoise(self, latents: torch.Tensor, states: list[StreamState], control: Control | None = None
                ) -> torch.Tensor:
        """Noise each frame at its stream's first timestep, then run every stream's steps, batched."""
        _, alpha0, sigma0, *_ = self._columns(torch.stack([s.step_table[0] for s in states]))
        noise0 = torch.stack([s.noise[0] for s in states])
        x = alpha0 * latents.float() + sigma0 * noise0
        renoise = states[0].schedule[0].renoise  # LCM re-noises between steps; Euler does not
        # Frames whose streams run fewer steps leave the batch early; while every frame is still in it (the
        # usual case: all streams at the same step count) the whole batch moves on without indexing.
        result: torch.Tensor | None = None
        active = list(range(len(states)))
        k = 0
        while True:
            whole = len(active) == len(states)
            sub = states if whole else [states[i] for i in active]
            rows = torch.stack([s.step_table[k] for s in sub])
            xs = x if whole else x[active]
            model_out = self._unet(xs, rows[:, 0], sub,
                                   control if whole or control is None else control.select(active))
            _, alpha, sigma, c_out, c_skip, next_alpha, next_sigma = self._columns(rows)
            x0 = predict_original(self.prediction_type, xs, model_out.float(), alpha, sigma)
            denoised = c_out * x0 + c_skip * xs
            last = [k + 1 >= len(s.schedule) for s in sub]
            if whole and all(last):
                return denoised.to(self.dtype)
            if not all(last):
                if renoise:  # LCM: re-noise the denoised sample with the stream's next fixed noise
                    fresh = torch.stack([s.noise[min(k + 1, len(s.schedule) - 1)] for s in sub])
                    x_next = next_alpha * denoised + next_sigma * fresh
                else:  # Euler: deterministic move along the predicted noise
                    eps = (xs - alpha * x0) / sigma
                    x_next = next_alpha * x0 + next_sigma * eps
            k += 1
            if whole and not any(last):
                x = x_next
                continue
            result = torch.empty_like(x) if result is None else result
            still = []
            for j, i in enumerate(active):
                if last[j]:
                    result[i] = denoised[j]
                else:
                    x[i] = x_next[j]
                    still.append(i)
            active = still
            if not active:
                return result.to(self.dtype)

    def _unet(self, x: torch.Tensor, t: torch.Tensor, states: list[StreamState], control: Control | None = None
              ) -> torch.Tensor:
        embeds = [s.embeds for s in states]
        cond = torch.cat([e.cond for e in embeds])
        timestep_cond = None
        if states[0].guidance_embedding is not None:
            timestep_cond = torch.cat([s.guidance_embedding for s in states])
        cfg = self.uses_cfg and any(s.guidance_scale > 1.0 for s in states)
        pooled = time_ids = None
        if self.components.sdxl:
            time_ids = self.sdxl_time_ids.repeat(len(states), 1)
            pooled = torch.cat([e.pooled for e in embeds])
        sample = x.to(self.dtype)
        image_embeds = scales = None
        if self.style is not None:
            image_embeds = torch.cat([s.style_embeds[0] for s in states])
            scales = torch.cat([s.style_row for s in states])
        if not cfg:
            return self.unet_forward(sample, t, cond, timestep_cond, pooled, time_ids, image_embeds, scales,
                                     *self.control_residuals(control, sample, t, cond, pooled, time_ids))
        uncond = torch.cat([e.uncond for e in embeds])
        if self.components.sdxl:
            pooled = torch.cat([torch.cat([e.uncond_pooled for e in embeds]), pooled])
            time_ids = time_ids.repeat(2, 1)
        if timestep_cond is not None:
            timestep_cond = timestep_cond.repeat(2, 1)
        if image_embeds is not None:
            image_embeds = torch.cat([torch.cat([s.style_embeds[1] for s in states]), image_embeds])
            scales = scales.repeat(2)
        sample, t, text = torch.cat([sample, sample]), torch.cat([t, t]), torch.cat([uncond, cond])
        both = self.unet_forward(sample, t, text, timestep_cond, pooled, time_ids, image_embeds, scales,
                                 *self.control_residuals(control, sample, t, text, pooled, time_ids))
        out_uncond, out_cond = both.float().chunk(2)
        g, no_cfg = self._columns(torch.stack([s.guidance_row for s in states]))
        guided = out_uncond + g * (out_cond - out_uncond)
        return no_cfg * out_cond + (1 - no_cfg) * guided
