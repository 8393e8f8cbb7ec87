"""Pipeline settings: what a preset YAML holds, what the CLI overrides, what changes live."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Family = Literal["lcm", "lcm-lora", "turbo", "tiny", "random-sd15", "analytic", "passthrough"]


class SmoothingConfig(BaseModel):
    """Latent temporal smoothing, per stream. ``enabled=False`` leaves only the fixed per-stream noise."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    input_blend: float = Field(0.6, ge=0.0, lt=1.0, description="weight of the previous input latent where still")
    output_blend: float = Field(0.5, ge=0.0, lt=1.0, description="weight of the previous output latent where still")
    motion_threshold: float = Field(0.03, gt=0.0, description="pooled input change (0-1) counted as full motion")
    skip_similarity: float = Field(0.995, gt=0.0, le=1.0, description="input similarity above which the model is skipped")
    max_skip: int = Field(3, ge=0, description="most frames in a row re-emitted without running the model")
    motion_compensation: bool = Field(False, description="warp the previous latents by optical flow before blending")
    scene_cut_threshold: float = Field(0.12, gt=0.0, description="mean input change (0-1) treated as a cut: state reset")


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    family: Family = "lcm"
    model_id: str | None = Field(None, description="hub id or local folder of the diffusers model")
    lora_id: str | None = Field(None, description="LCM-LoRA hub id or folder, fused at load time")
    vae_id: str | None = Field(None, description="tiny autoencoder (TAESD) hub id or folder; None = the model's VAE")
    sdxl: bool = False
    width: int = Field(512, ge=8)
    height: int = Field(512, ge=8)
    prompt: str = "an oil painting, vivid colours, thick brush strokes"
    negative_prompt: str = ""
    strength: float = Field(0.5, gt=0.0, le=1.0)
    num_inference_steps: int = Field(1, ge=1, le=8)
    guidance_scale: float = Field(1.0, ge=0.0)
    original_inference_steps: int = Field(50, ge=1, description="LCM's skipping schedule length")
    seed: int = 0
    device: str = "auto"
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    prompt_blend_frames: int = Field(4, ge=1, description="frames over which a new prompt fades in")
    compile: Literal["auto", "on", "off"] = Field(
        "auto", description="torch.compile the model calls (CUDA graphs on CUDA); auto = on CUDA only")
    fuse_qkv: Literal["auto", "on", "off"] = Field(
        "auto", description="fuse the UNet's attention projections into one matmul; auto = on CUDA only")
    channels_last: Literal["auto", "on", "off"] = Field(
        "auto", description="UNet and VAE in channels-last memory layout (faster convolutions on tensor cores); "
        "auto = on CUDA only")
    compile_batch_sizes: list[int] = Field(
        default_factory=lambda: [1, 4], min_length=1,
        description="batch sizes compiled at start-up; a batch is padded up to the next one, larger ones run eagerly")
    smoothing: SmoothingConfig = Field(default_factory=SmoothingConfig)

    @model_validator(mode="after")
    def _check(self) -> PipelineConfig:
        for name in ("width", "height"):
            if getattr(self, name) % 8:
                raise ValueError(f"{name} must be a multiple of 8, got {getattr(self, name)}")
        if self.family in ("lcm", "lcm-lora", "turbo") and not self.model_id:
            raise ValueError(f"family {self.family!r} needs model_id (a hub id or a local folder)")
        if self.family == "lcm-lora" and not self.lora_id:
            raise ValueError("family 'lcm-lora' needs lora_id (e.g. latent-consistency/lcm-lora-sdv1-5)")
        return self
