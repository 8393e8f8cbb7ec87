"""Random-weight components with the real architectures (SD 1.5, SDXL), for benchmarks without a download.

FLOPs and memory traffic match the real models; the pictures are meaningless.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from pipelines.tiny import lcm_scheduler, tiny_components, tiny_tokenizer

SIZES = ("tiny", "sd15")


def random_components(size: str, *, dtype: torch.dtype = torch.float32, seed: int = 0) -> dict:
    """Components for ``LatentConsistencyModelImg2ImgPipeline(**c)`` plus ``taesd``: an LCM-style UNet (with
    the guidance embedding), the full VAE and a tiny autoencoder of the matching family."""
    if size == "tiny":
        from pipelines.tiny import tiny_taesd

        parts = tiny_components("lcm", seed=seed, full_vae=True)
        parts["taesd"] = tiny_taesd()
        return parts
    if size != "sd15":
        raise ValueError(f"unknown model size {size!r}; choose one of {', '.join(SIZES)}")
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()  # the tokenizer's vocabulary does not change the cost of a frame
    unet = UNet2DConditionModel(
        sample_size=64, cross_attention_dim=768, time_cond_proj_dim=256,
        block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_head_dim=8,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, projection_dim=768,
        bos_token_id=len(tokenizer) - 2, eos_token_id=len(tokenizer) - 1, pad_token_id=len(tokenizer) - 1))
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=512, scaling_factor=0.18215)
    parts = {
        "unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer,
        "scheduler": lcm_scheduler(), "safety_checker": None, "feature_extractor": None,
        "requires_safety_checker": False, "taesd": AutoencoderTiny(),
    }
    for key in ("unet", "vae", "text_encoder", "taesd"):
        parts[key] = parts[key].to(dtype).eval()
    return parts
