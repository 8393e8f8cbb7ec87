"""Per-stream state of the frame step: prompt embeddings, schedule rows, fixed noise, the smoother, and a
live change (``LiveParams``) applied to them all or nothing.

``StreamParams`` is the half of ``StreamPipeline`` that keeps streams; the frame step itself is in
pipelines/lcm_img2img.py and reads a stream's state, never changes its parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

import torch

from pipelines.conditioning.settings import apply_control_change
from pipelines.config import ControlSettings, LiveParams, PipelineConfig, SmoothingConfig
from pipelines.frames import DEFAULT_STREAM
from pipelines.schedules import StepScalars, build_schedule

if TYPE_CHECKING:
    from pipelines.loading import ModelComponents


@dataclass
class PromptEmbeddings:
    cond: torch.Tensor  # (1, L, D)
    uncond: torch.Tensor | None = None  # for classifier-free guidance
    pooled: torch.Tensor | None = None  # SDXL
    uncond_pooled: torch.Tensor | None = None

    def lerp(self, other: PromptEmbeddings, weight: float) -> PromptEmbeddings:
        def mix(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
            return None if a is None or b is None else torch.lerp(a, b, weight)

        return PromptEmbeddings(mix(self.cond, other.cond), mix(self.uncond, other.uncond),
                                mix(self.pooled, other.pooled), mix(self.uncond_pooled, other.uncond_pooled))


@dataclass
class StreamState:
    """Everything one stream keeps between frames."""

    prompt: str
    negative_prompt: str
    strength: float
    num_inference_steps: int
    guidance_scale: float
    seed: int
    smoothing: SmoothingConfig
    schedule: list[StepScalars] = field(default_factory=list)
    # The schedule as one device tensor (steps, 7): timestep, alpha, sigma, c_out, c_skip, next_alpha,
    # next_sigma. Made when the schedule changes, so a frame step stacks rows instead of copying numbers in.
    step_table: torch.Tensor | None = None
    guidance_row: torch.Tensor | None = None  # (2,): guidance scale, 1.0 where it means no CFG
    noise: torch.Tensor | None = None  # (steps, C, h, w): initial noise, then LCM's between-step noise
    embeds: PromptEmbeddings | None = None
    blend_from: PromptEmbeddings | None = None  # the old prompt while a new one fades in
    blend_target: PromptEmbeddings | None = None
    blend_done: int = 0
    guidance_embedding: torch.Tensor | None = None  # LCM's w embedding (1, D)
    smoother: Any = None
    control: ControlSettings | None = None  # ControlNet settings (pipelines/conditioning)
    last_output: torch.Tensor | None = None  # (3, h, w) in [0, 1]: the 'previous' control image
    style_image: Any = None  # a StyleImage (pipelines/conditioning/style_image.py), None: no style
    style_scale: float = 0.0
    style_embeds: tuple[torch.Tensor, torch.Tensor] | None = None  # IP-Adapter (cond, uncond), once per image
    style_row: torch.Tensor | None = None  # (1,): the scale this stream's frames get, 0 without a style


class StreamParams:
    """Streams by id, made from the config when first seen, changed live by ``update``. The pipeline that
    inherits this sets the attributes below (the model and the working size the state is made for)."""

    config: PipelineConfig
    components: ModelComponents
    scheduler: Any
    unet: Any
    device: torch.device
    dtype: torch.dtype
    img2img_semantics: bool
    uses_cfg: bool
    vae_scale: int
    latent_channels: int
    streams: dict[str, StreamState]
    style: Any  # a StyleEncoder when the model has an IP-Adapter, else None

    def stream(self, stream_id: str = DEFAULT_STREAM) -> StreamState:
        state = self.streams.get(stream_id)
        if state is None:
            state = self.streams[stream_id] = self._new_stream()
        return state

    def _new_stream(self) -> StreamState:
        c = self.config
        state = StreamState(c.prompt, c.negative_prompt, c.strength, c.num_inference_steps,
                            c.guidance_scale, c.seed, c.smoothing.model_copy(), control=c.control_settings(),
                            style_scale=c.style_scale)
        state.style_image = self.config_style()
        self._rebuild(state, prompt=True, schedule=True, guidance=True, style=True)
        return state

    def config_style(self) -> Any:
        """The config's style picture (read once, so a new stream never fails on the file), or None."""
        path = self.config.style_image
        if not path or self.style is None:
            return None
        cached = getattr(self, "_config_style", None)
        if cached is None or cached[0] != path:
            from pipelines.conditioning.style_image import read_style_file

            self._config_style = cached = (path, read_style_file(path, "style_image"))
        return cached[1]

    def set_prompt(self, prompt: str, negative_prompt: str | None = None,
                   stream_id: str = DEFAULT_STREAM) -> None:
        self.update(stream_id, prompt=prompt, **({} if negative_prompt is None else {"negative_prompt": negative_prompt}))

    def update(self, stream_id: str = DEFAULT_STREAM, **params: Any) -> None:
        """Change a stream's parameters live (LiveParams); a new prompt fades in over ``prompt_blend_frames``
        frames. All or nothing: checked whole (each value, then the schedule of its steps and strength), and
        computed on a copy of the stream before any of it is applied; a refused (ValueError) or failed change
        leaves the stream exactly as it was."""
        change = LiveParams.parse(params).changes()
        if self.style is None and ("style_image" in change or "style_scale" in change):
            raise ValueError("this model has no IP-Adapter for a style image; start with a preset that has one "
                             "(sd15-ip-adapter, sdxl-ip-adapter) or set ip_adapter")
        current = self.streams.get(stream_id)
        state = replace(current) if current is not None else self._new_stream()
        before = (state.strength, state.num_inference_steps, state.seed)
        was_enabled = state.smoothing.enabled
        for key in ("prompt", "negative_prompt", "strength", "num_inference_steps", "guidance_scale", "seed",
                    "style_image", "style_scale"):
            if key in change:
                setattr(state, key, change[key])
        if "controlnet" in change:
            state.control = apply_control_change(state.control, change["controlnet"],
                                                 len(self.components.controlnets), self.components.depth is not None)
        if "smoothing" in change:
            state.smoothing = SmoothingConfig.model_validate({**state.smoothing.model_dump(),
                                                              **change["smoothing"]})
        schedule = before != (state.strength, state.num_inference_steps, state.seed)
        self._rebuild(state, prompt="prompt" in change or "negative_prompt" in change, schedule=schedule,
                      guidance="guidance_scale" in change, blend=True, style="style_image" in change,
                      style_scale="style_scale" in change)
        # Everything is computed: apply it. The smoother is the one object the copy shares with the stream.
        if current is None:
            current = self.streams[stream_id] = state
        else:
            for f in fields(StreamState):
                setattr(current, f.name, getattr(state, f.name))
        if current.smoother is not None:
            current.smoother.config = current.smoothing
            # Never blend with latents made with other noise, or from before smoothing was switched off.
            if schedule or current.smoothing.enabled != was_enabled:
                current.smoother.reset()

    def remove_stream(self, stream_id: str) -> None:
        self.streams.pop(stream_id, None)

    def _rebuild(self, state: StreamState, *, prompt: bool = False, schedule: bool = False,
                 guidance: bool = False, blend: bool = False, style: bool = False,
                 style_scale: bool = False) -> None:
        if schedule:  # build_schedule first: it refuses steps and strength that make no schedule
            state.schedule = build_schedule(self.scheduler, steps=state.num_inference_steps,
                                            strength=state.strength, img2img_semantics=self.img2img_semantics,
                                            original_inference_steps=self.config.original_inference_steps)
            h, w = self.config.height // self.vae_scale, self.config.width // self.vae_scale
            # Drawn in the order diffusers' pipelines draw them from a generator with this seed: the
            # initial noise, then LCM's noise between steps. The same every frame: fixed per-stream noise.
            gen = torch.Generator("cpu").manual_seed(state.seed)
            # Kept in float32, the precision the step's arithmetic runs in (drawn in the model's dtype).
            state.noise = torch.cat([
                torch.randn((1, self.latent_channels, h, w), generator=gen, dtype=self.dtype)
                for _ in state.schedule]).to(self.device, torch.float32)
            state.step_table = torch.tensor(
                [[p.timestep, p.alpha, p.sigma, p.c_out, p.c_skip, p.next_alpha, p.next_sigma]
                 for p in state.schedule], dtype=torch.float32).to(self.device)
        if prompt:
            new = self._encode_prompt(state.prompt, state.negative_prompt)
            if blend and state.embeds is not None and self.config.prompt_blend_frames > 1:
                state.blend_from, state.blend_target, state.blend_done = state.embeds, new, 0
            else:
                state.embeds, state.blend_from, state.blend_target = new, None, None
        if self.style is not None and (style or style_scale):
            if style:  # the image embedding: once per style change, not per frame
                image = state.style_image
                state.style_embeds = self.style.none() if image is None else self.style.encode(image)
            scale = state.style_scale if state.style_image is not None else 0.0
            state.style_row = torch.tensor([scale], dtype=torch.float32).to(self.device)
        if guidance or state.guidance_row is None:
            g = state.guidance_scale
            state.guidance_row = torch.tensor([g, 1.0 if g <= 1.0 else 0.0], dtype=torch.float32).to(self.device)
            dim = getattr(self.unet.config, "time_cond_proj_dim", None)
            pipe = self.components.prompt_pipe
            if dim is not None and pipe is not None:
                w = torch.tensor([state.guidance_scale - 1.0])
                state.guidance_embedding = pipe.get_guidance_scale_embedding(w, embedding_dim=dim).to(
                    self.device, self.dtype)

    @torch.no_grad()
    def _encode_prompt(self, prompt: str, negative_prompt: str) -> PromptEmbeddings:
        pipe = self.components.prompt_pipe
        if pipe is None:  # the analytic model has no text encoder
            return PromptEmbeddings(torch.zeros((1, 1, 1), device=self.device, dtype=self.dtype))
        neg = negative_prompt or None
        if self.components.sdxl:
            cond, uncond, pooled, uncond_pooled = pipe.encode_prompt(
                prompt=prompt, device=self.device, num_images_per_prompt=1,
                do_classifier_free_guidance=self.uses_cfg, negative_prompt=neg)
            return PromptEmbeddings(cond, uncond, pooled, uncond_pooled)
        cond, uncond = pipe.encode_prompt(prompt, self.device, 1, self.uses_cfg, negative_prompt=neg)
        return PromptEmbeddings(cond, uncond)

    def _advance_prompt_blend(self, state: StreamState) -> None:
        """One frame further into a prompt change: the embedding moves 1/prompt_blend_frames of the way."""
        if state.blend_target is not None:
            state.blend_done += 1
            weight = state.blend_done / self.config.prompt_blend_frames
            if weight >= 1.0:
                state.embeds, state.blend_from, state.blend_target = state.blend_target, None, None
            else:
                state.embeds = state.blend_from.lerp(state.blend_target, weight)

    def _smoother(self, state: StreamState, *, graph: bool = False) -> Any:
        """The stream's smoother (None with smoothing off); for the eager step unless ``graph``, so state the
        whole-step graph kept on the device comes back into the smoother first."""
        if not state.smoothing.enabled:
            return None
        if state.smoother is None:
            from pipelines.smoothing import StreamSmoother

            state.smoother = StreamSmoother(state.smoothing)
        elif not graph and state.smoother.device_state is not None:
            from pipelines.graph_smoothing import back_to_eager

            back_to_eager(state.smoother)
        return state.smoother
