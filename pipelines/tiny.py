"""Tiny random diffusers components, built in-process (no download), for smoke runs and tests.

Their pictures are meaningless: the weights are random. The architecture is the real one (UNet2DCondition
with a guidance embedding, CLIP text encoder and tokenizer, AutoencoderTiny or AutoencoderKL), so every code
path of the frame step runs, and diffusers' reference pipelines accept the same components.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderTiny,
    EulerDiscreteScheduler,
    LCMScheduler,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

TEXT_DIM = 32


def _bytes_to_unicode() -> list[str]:
    # The byte -> printable character table of CLIP's byte-level BPE.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def tiny_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer whose vocabulary is single characters (no merges): tokenizes any text."""
    chars = _bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"), model_max_length=77)


def clip_text_encoder(vocab_size: int, *, hidden: int, layers: int, heads: int, intermediate: int,
                      cls: type = CLIPTextModel) -> CLIPTextModel:
    """A CLIP text encoder of the given size for a tokenizer of ``vocab_size`` (its last two ids: BOS, EOS)."""
    return cls(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=77, projection_dim=hidden,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
    ))


def tiny_text_encoder(vocab_size: int, cls: type = CLIPTextModel) -> CLIPTextModel:
    return clip_text_encoder(vocab_size, hidden=TEXT_DIM, layers=2, heads=4, intermediate=64, cls=cls)


def tiny_unet(guidance_embedding: bool) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM, attention_head_dim=8, norm_num_groups=8,
        time_cond_proj_dim=TEXT_DIM if guidance_embedding else None,
    )


def tiny_taesd() -> AutoencoderTiny:
    vae = AutoencoderTiny(
        encoder_block_out_channels=(16, 16, 16, 16), decoder_block_out_channels=(16, 16, 16, 16),
        num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1), latent_channels=4,
    )
    # PyTorch's default conv init shrinks the signal at every layer, so a random TAESD forgets its input and
    # decodes a flat grey. Doubled weights keep it flowing: the output then follows the input and the prompt
    # (still meaningless pictures, but tests can tell stylized from constant and from pass-through).
    with torch.no_grad():
        for module in vae.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.mul_(2.0)
    return vae


def tiny_vae_kl() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(8, 8, 8, 8), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=4, sample_size=64,
    )


def lcm_scheduler() -> LCMScheduler:
    return LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                        original_inference_steps=50, timestep_scaling=10.0, prediction_type="epsilon",
                        steps_offset=1)


def turbo_scheduler() -> EulerDiscreteScheduler:
    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  timestep_spacing="trailing", prediction_type="epsilon", steps_offset=1)


def tiny_components(family: str = "lcm", *, seed: int = 0, full_vae: bool = False) -> dict:
    """Components for diffusers' pipeline classes (``Pipeline(**components)``), random but reproducible.

    ``family``: "lcm" (UNet with a guidance embedding, LCMScheduler), "lcm-lora" (plain UNet, LCMScheduler),
    "turbo" (plain UNet, Euler with trailing timesteps).
    """
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    return {
        "unet": tiny_unet(guidance_embedding=family == "lcm").eval(),
        "vae": (tiny_vae_kl() if full_vae else tiny_taesd()).eval(),
        "text_encoder": tiny_text_encoder(len(tokenizer)).eval(),
        "tokenizer": tokenizer,
        "scheduler": turbo_scheduler() if family == "turbo" else lcm_scheduler(),
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }


def tiny_sdxl_components(family: str = "turbo", *, seed: int = 0) -> dict:
    """SDXL-architecture components (two text encoders, pooled embedding and size conditioning) for
    ``StableDiffusionXLImg2ImgPipeline(**c)``; random, reproducible, TAESD-style autoencoder."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=8,
        addition_embed_type="text_time", addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * 8 + TEXT_DIM, cross_attention_dim=2 * TEXT_DIM,
    )
    return {
        "unet": unet.eval(),
        "vae": tiny_taesd().eval(),
        "text_encoder": tiny_text_encoder(len(tokenizer)).eval(),
        "text_encoder_2": tiny_text_encoder(len(tokenizer), CLIPTextModelWithProjection).eval(),
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer,
        "scheduler": turbo_scheduler() if family == "turbo" else lcm_scheduler(),
        "requires_aesthetics_score": False,
        "force_zeros_for_empty_prompt": True,
    }
