"""A tiny random IP-Adapter in h94/IP-Adapter's layout, for tests and the CPU bench: weights in diffusers'
IP-Adapter state-dict layout (``image_proj.*``, ``ip_adapter.{n}.to_k_ip/to_v_ip``, n = 1, 3, 5... over the
UNet's cross-attention layers) and a tiny ``CLIPVisionModelWithProjection`` saved with ``save_pretrained``.
Loaded back by diffusers' ``load_ip_adapter`` like the real ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

SUBFOLDER = "models"
WEIGHT_NAME = "ip-adapter_tiny.safetensors"
CLIP_DIM = 32
TOKENS = 4  # the plain IP-Adapter's image tokens


def tiny_image_encoder(seed: int = 0) -> Any:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=4, projection_dim=CLIP_DIM)
    return CLIPVisionModelWithProjection(config).eval()


def ip_adapter_state_dict(unet: Any, seed: int = 0, strength: float = 1.0) -> dict[str, torch.Tensor]:
    """Random IP-Adapter weights that fit ``unet``, keys as in h94's safetensors files."""
    gen = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim
    cross = cross[0] if isinstance(cross, list | tuple) else cross
    channels = list(unet.config.block_out_channels)
    state = {
        "image_proj.proj.weight": torch.randn(TOKENS * cross, CLIP_DIM, generator=gen) / CLIP_DIM ** 0.5,
        "image_proj.proj.bias": torch.randn(TOKENS * cross, generator=gen) * 0.1,
        "image_proj.norm.weight": 1 + 0.1 * torch.randn(cross, generator=gen),
        "image_proj.norm.bias": 0.1 * torch.randn(cross, generator=gen),
    }
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = channels[-1]
        elif name.startswith("up_blocks"):
            hidden = channels[::-1][int(name[len("up_blocks.")])]
        else:
            hidden = channels[int(name[len("down_blocks.")])]
        for part in ("to_k_ip", "to_v_ip"):
            state[f"ip_adapter.{key_id}.{part}.weight"] = (
                torch.randn(hidden, cross, generator=gen) * strength / cross ** 0.5)
        key_id += 2
    return state


def save_tiny_ip_adapter(folder: str | Path, unet: Any, seed: int = 0, dtype: torch.dtype = torch.float32) -> Path:
    """``folder``/models/ip-adapter_tiny.safetensors and ``folder``/models/image_encoder (save_pretrained)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    (folder / SUBFOLDER).mkdir(parents=True, exist_ok=True)
    weights = {key: value.to(dtype) for key, value in ip_adapter_state_dict(unet, seed).items()}
    save_file(weights, str(folder / SUBFOLDER / WEIGHT_NAME))
    tiny_image_encoder(seed).to(dtype).save_pretrained(folder / SUBFOLDER / "image_encoder")
    return folder


def tiny_ip_adapter_config(folder: str | Path) -> dict[str, str]:
    """The ``ip_adapter`` setting (IPAdapterConfig fields) of a folder made by ``save_tiny_ip_adapter``."""
    return {"model_id": str(folder), "subfolder": SUBFOLDER, "weight_name": WEIGHT_NAME,
            "image_encoder_folder": "image_encoder"}
