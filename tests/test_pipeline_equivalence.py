"""The frame step equals diffusers' own reference pipelines on the same components, prompt, timesteps and noise.

Tiny random components are saved with save_pretrained into a temp folder and loaded back through the
project's loading code; the reference pipeline loads the same folder. fp32 on CPU; smoothing off.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderTiny,
    LatentConsistencyModelImg2ImgPipeline,
    StableDiffusionImg2ImgPipeline,
)
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from pipelines.lcm_img2img import StreamPipeline
from pipelines.tiny import tiny_components

SIZE = 64
TOLERANCE = 1e-3  # on [0, 1] pixels


def frames(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, SIZE, dtype=np.float32)
    img = np.stack([np.add.outer(base, base) / 2, np.add.outer(base, base[::-1]) / 2,
                    np.tile(base, (SIZE, 1))], axis=-1)
    batch = [np.clip(img + rng.normal(0, 20, img.shape), 0, 255) for _ in range(n)]
    return np.stack(batch).astype(np.uint8)


def save_model(tmp: Path, family: str, full_vae: bool = False) -> tuple[Path, Path | None]:
    parts = tiny_components(family, full_vae=full_vae)
    cls = LatentConsistencyModelImg2ImgPipeline if family == "lcm" else StableDiffusionImg2ImgPipeline
    model = tmp / f"model-{family}"
    cls(**parts).save_pretrained(model)
    taesd = None
    if not full_vae:
        torch.manual_seed(123)
        from pipelines.tiny import tiny_taesd

        taesd = tmp / "taesd"
        tiny_taesd().save_pretrained(taesd)
    return model, taesd


def reference(cls, model: Path, taesd: Path | None, image: np.ndarray, **kwargs) -> np.ndarray:
    pipe = cls.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
    if taesd is not None:
        pipe.vae = AutoencoderTiny.from_pretrained(taesd)
    pipe.set_progress_bar_config(disable=True)
    return pipe(image=image.astype(np.float32) / 255.0, output_type="np", **kwargs).images


def ours(model: Path, taesd: Path | None, family: str, image: np.ndarray, stream_ids=None, **settings):
    pipe = StreamPipeline.from_pretrained(str(model), family=family, vae_id=str(taesd) if taesd else None,
                                          width=SIZE, height=SIZE, device="cpu",
                                          smoothing={"enabled": False}, **settings)
    return pipe, pipe(image, stream_ids, output_type="float")


@pytest.mark.parametrize("steps,strength,guidance", [(1, 0.5, 8.0), (2, 0.6, 4.0)])
def test_lcm_checkpoint_equivalence(tmp_path, steps, strength, guidance):
    model, taesd = save_model(tmp_path, "lcm")
    image = frames(1)
    _, out = ours(model, taesd, "lcm", image, prompt="a watercolour", num_inference_steps=steps,
                  strength=strength, guidance_scale=guidance, seed=7)
    ref = reference(LatentConsistencyModelImg2ImgPipeline, model, taesd, image, prompt="a watercolour",
                    num_inference_steps=steps, strength=strength, guidance_scale=guidance,
                    generator=torch.Generator().manual_seed(7))
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() <= TOLERANCE


def test_lcm_lora_equivalence(tmp_path):
    """SD 1.5-style base + a LoRA fused at load time, StableDiffusionImg2ImgPipeline with LCMScheduler."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    model, taesd = save_model(tmp_path, "lcm-lora")
    base = StableDiffusionImg2ImgPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
    torch.manual_seed(5)
    base.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                     init_lora_weights=False))
    lora = tmp_path / "lora"
    StableDiffusionImg2ImgPipeline.save_lora_weights(lora, unet_lora_layers=get_peft_model_state_dict(base.unet))

    image = frames(1, seed=1)
    pipe, out = ours(model, taesd, "lcm-lora", image, lora_id=str(lora), prompt="pencil sketch",
                     num_inference_steps=2, strength=0.5, guidance_scale=1.0, seed=3)

    ref_pipe = StableDiffusionImg2ImgPipeline.from_pretrained(model, safety_checker=None,
                                                              requires_safety_checker=False)
    ref_pipe.load_lora_weights(lora)
    ref_pipe.fuse_lora()
    ref_pipe.vae = AutoencoderTiny.from_pretrained(taesd)
    ref_pipe.set_progress_bar_config(disable=True)
    # diffusers' img2img runs int(N * strength) of N steps: N=4 at strength 0.5 runs our 2 steps.
    ref = ref_pipe(prompt="pencil sketch", image=image.astype(np.float32) / 255, num_inference_steps=4,
                   strength=0.5, guidance_scale=1.0, output_type="np",
                   generator=torch.Generator().manual_seed(3)).images
    assert np.abs(out - ref).max() <= TOLERANCE
    # The LoRA really changed the weights (otherwise this test could not tell fused from not fused).
    plain = StableDiffusionImg2ImgPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
    q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    assert not torch.allclose(plain.unet.state_dict()[q], pipe.unet.state_dict()[q])


@pytest.mark.parametrize("guidance", [0.0, 2.5])
def test_turbo_equivalence(tmp_path, guidance):
    """Turbo family: Euler with trailing timesteps, 1 step; with guidance > 1 classifier-free guidance runs."""
    model, taesd = save_model(tmp_path, "turbo")
    image = frames(1, seed=2)
    _, out = ours(model, taesd, "turbo", image, prompt="neon city", negative_prompt="blurry",
                  num_inference_steps=1, strength=0.5, guidance_scale=guidance, seed=11)
    ref = reference(StableDiffusionImg2ImgPipeline, model, taesd, image, prompt="neon city",
                    negative_prompt="blurry", num_inference_steps=2, strength=0.5, guidance_scale=guidance,
                    generator=torch.Generator().manual_seed(11))
    assert np.abs(out - ref).max() <= TOLERANCE


def test_full_vae_equivalence(tmp_path, monkeypatch):
    """The model's own AutoencoderKL. The frame step encodes to the latent mean (a still input stays still);
    the reference is made to do the same, so both draw the same noise from the same generator."""
    model, _ = save_model(tmp_path, "lcm", full_vae=True)
    image = frames(1, seed=4)
    _, out = ours(model, None, "lcm", image, prompt="ink", num_inference_steps=1, strength=0.5, seed=2,
                  guidance_scale=8.0)
    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mean)
    ref = reference(LatentConsistencyModelImg2ImgPipeline, model, None, image, prompt="ink",
                    num_inference_steps=1, strength=0.5, guidance_scale=8.0,
                    generator=torch.Generator().manual_seed(2))
    assert np.abs(out - ref).max() <= TOLERANCE


def test_batched_streams_equivalence(tmp_path):
    """Frames of two streams (own prompt, seed, strength, steps) in one call equal separate reference runs."""
    model, taesd = save_model(tmp_path, "lcm")
    image = frames(2, seed=5)
    pipe = StreamPipeline.from_pretrained(str(model), family="lcm", vae_id=str(taesd), width=SIZE, height=SIZE,
                                          device="cpu", smoothing={"enabled": False}, prompt_blend_frames=1,
                                          guidance_scale=8.0)
    pipe.update("a", prompt="charcoal", seed=1, strength=0.5, num_inference_steps=1)
    pipe.update("b", prompt="mosaic", seed=9, strength=0.7, num_inference_steps=2)
    out = pipe(image, ["a", "b"], output_type="float")
    for k, (prompt, seed, strength, steps) in enumerate([("charcoal", 1, 0.5, 1), ("mosaic", 9, 0.7, 2)]):
        ref = reference(LatentConsistencyModelImg2ImgPipeline, model, taesd, image[k:k + 1], prompt=prompt,
                        num_inference_steps=steps, strength=strength, guidance_scale=8.0,
                        generator=torch.Generator().manual_seed(seed))
        assert np.abs(out[k:k + 1] - ref).max() <= TOLERANCE, f"stream {k}"


@pytest.mark.parametrize("guidance", [0.0, 2.5])
def test_sdxl_turbo_equivalence(tmp_path, guidance):
    """SDXL: two text encoders, pooled embeddings and size conditioning, vs StableDiffusionXLImg2ImgPipeline
    (Euler, trailing); with guidance > 1 the negative prompt's pooled embedding is used too."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    from pipelines.tiny import tiny_sdxl_components

    model = tmp_path / "sdxl"
    StableDiffusionXLImg2ImgPipeline(**tiny_sdxl_components("turbo")).save_pretrained(model)
    image = frames(1, seed=6)
    negative = "blurry" if guidance > 1 else ""
    _, out = ours(model, None, "turbo", image, sdxl=True, prompt="ink", negative_prompt=negative,
                  num_inference_steps=1, strength=0.5, guidance_scale=guidance, seed=3)
    ref_pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(model)
    ref_pipe.set_progress_bar_config(disable=True)
    ref = ref_pipe(prompt="ink", negative_prompt=negative or None, image=image.astype(np.float32) / 255,
                   num_inference_steps=2, strength=0.5, guidance_scale=guidance, output_type="np",
                   generator=torch.Generator().manual_seed(3)).images
    assert np.abs(out - ref).max() <= TOLERANCE
