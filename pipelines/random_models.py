"""Random-weight components with the real architectures (SD 1.5, SDXL), for benchmarks without a download.

FLOPs and memory traffic match the real models; the pictures are meaningless.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from pipelines.quiet import quiet_libraries
from pipelines.tiny import (
    clip_text_encoder,
    lcm_scheduler,
    tiny_components,
    tiny_sdxl_components,
    tiny_taesd,
    tiny_tokenizer,
    tiny_vae_kl,
)

SIZES = ("tiny", "sd15", "tiny-sdxl", "sdxl")


def is_sdxl(size: str) -> bool:
    return size.endswith("sdxl")


def random_components(size: str, *, dtype: torch.dtype = torch.float32, seed: int = 0,
                      init_device: str = "cpu") -> dict:
    """Components for diffusers' ``LatentConsistencyModelImg2ImgPipeline(**c)`` (SD sizes: an LCM-style
    UNet with the guidance embedding) or ``StableDiffusionXLImg2ImgPipeline(**c)`` (SDXL sizes: two text
    encoders, pooled embeddings, size conditioning), with the full VAE, plus ``taesd``: a tiny autoencoder
    of the matching family. ``init_device="meta"`` builds the architecture without any weights."""
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {', '.join(SIZES)}")
    quiet_libraries()
    torch.manual_seed(seed)
    if size == "tiny":
        parts = tiny_components("lcm", seed=seed, full_vae=True)
        parts["taesd"] = tiny_taesd()
    elif size == "tiny-sdxl":
        parts = tiny_sdxl_components("lcm-lora", seed=seed)
        parts["taesd"], parts["vae"] = parts["vae"], tiny_vae_kl().eval()
    else:
        tokenizer = tiny_tokenizer()  # the tokenizer's vocabulary does not change the cost of a frame
        with torch.device(init_device):
            parts = _sd15(tokenizer) if size == "sd15" else _sdxl(tokenizer)
            parts["taesd"] = AutoencoderTiny()
    # In the dtype asked for (the tiny ones too: `streamer bench --quick --dtype bfloat16` times bf16).
    for key in ("unet", "vae", "text_encoder", "text_encoder_2", "taesd"):
        if key in parts:
            parts[key] = parts[key].to(dtype).eval()
    return parts


def _clip_text(tokenizer, hidden: int, layers: int, heads: int, cls: type = CLIPTextModel) -> torch.nn.Module:
    return clip_text_encoder(len(tokenizer), hidden=hidden, layers=layers, heads=heads, intermediate=4 * hidden,
                             cls=cls)


def _vae(scaling_factor: float) -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=512, scaling_factor=scaling_factor)


def _sd15(tokenizer) -> dict:
    unet = UNet2DConditionModel(
        sample_size=64, cross_attention_dim=768, time_cond_proj_dim=256,
        block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_head_dim=8,
    )
    return {
        "unet": unet, "vae": _vae(0.18215), "text_encoder": _clip_text(tokenizer, 768, 12, 12),
        "tokenizer": tokenizer, "scheduler": lcm_scheduler(), "safety_checker": None,
        "feature_extractor": None, "requires_safety_checker": False,
    }


def _sdxl(tokenizer) -> dict:
    """SDXL base's architecture: 2.6 B parameter UNet, CLIP ViT-L and OpenCLIP ViT-bigG text encoders."""
    unet = UNet2DConditionModel(
        sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
        cross_attention_dim=2048, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=6 * 256 + 1280,
    )
    return {
        "unet": unet, "vae": _vae(0.13025), "text_encoder": _clip_text(tokenizer, 768, 12, 12),
        "text_encoder_2": _clip_text(tokenizer, 1280, 32, 20, CLIPTextModelWithProjection),
        "tokenizer": tokenizer, "tokenizer_2": tokenizer, "scheduler": lcm_scheduler(),
        "requires_aesthetics_score": False, "force_zeros_for_empty_prompt": True,
    }
