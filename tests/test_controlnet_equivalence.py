"""ControlNet on the frame step equals diffusers' ControlNet pipelines on the same components, prompt,
control images, timesteps and noise.

Tiny random components (pipelines/tiny.py, pipelines/conditioning/tiny.py: ControlNets with random, not
zero, output convolutions) are saved with save_pretrained and loaded back through the project's loading
code (``controlnets: [{model_id: folder}]``); the reference pipelines load the same folders. fp32 on CPU,
smoothing off, max abs difference <= 1e-3 on [0, 1] pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderTiny,
    ControlNetModel,
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionImg2ImgPipeline,
)

from pipelines.conditioning.control_images import canny
from pipelines.conditioning.tiny import tiny_controlnet
from pipelines.lcm_img2img import StreamPipeline
from pipelines.schedules import img2img_inference_steps
from tests.test_pipeline_equivalence import SIZE, TOLERANCE, frames, save_model


def save_controlnets(tmp: Path, model: Path, count: int = 1) -> list[Path]:
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(model / "unet")
    paths = []
    for k in range(count):
        path = tmp / f"controlnet-{k}"
        tiny_controlnet(unet, seed=10 + k).save_pretrained(path)
        paths.append(path)
    return paths


def as_unit(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) / 255.0


def canny_of(image: np.ndarray, low: float = 100.0, high: float = 200.0) -> np.ndarray:
    """The frame step's canny control image of uint8 frames (computed as the frame step does), as
    (N, H, W, 3) floats for a diffusers pipeline's control_image."""
    tensor = torch.from_numpy(image).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return canny(tensor, low, high).permute(0, 2, 3, 1).numpy()


def ours(model: Path, taesd: Path | None, family: str, image: np.ndarray, nets: list[dict], stream_ids=None,
         **settings) -> tuple[StreamPipeline, np.ndarray]:
    pipe = StreamPipeline.from_pretrained(str(model), family=family, vae_id=str(taesd) if taesd else None,
                                          width=SIZE, height=SIZE, device="cpu", smoothing={"enabled": False},
                                          controlnets=nets, **settings)
    return pipe, pipe(image, stream_ids, output_type="float")


def reference_pipe(cls, model: Path, taesd: Path | None, controlnet, **kwargs):
    pipe = cls.from_pretrained(model, controlnet=controlnet, **kwargs)
    if taesd is not None:
        pipe.vae = AutoencoderTiny.from_pretrained(taesd)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_lora(tmp: Path, model: Path) -> Path:
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    base = StableDiffusionImg2ImgPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
    torch.manual_seed(5)
    base.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                     init_lora_weights=False))
    lora = tmp / "lora"
    StableDiffusionImg2ImgPipeline.save_lora_weights(lora, unet_lora_layers=get_peft_model_state_dict(base.unet))
    return lora


@pytest.mark.parametrize("kind", ["input", "canny"])
def test_controlnet_lcm_lora_equivalence(tmp_path, kind):
    """LCM-LoRA fused into an SD 1.5-style base, LCMScheduler, against StableDiffusionControlNetImg2ImgPipeline."""
    model, taesd = save_model(tmp_path, "lcm-lora")
    lora = make_lora(tmp_path, model)
    (net,) = save_controlnets(tmp_path, model)
    image = frames(1, seed=1)
    _, out = ours(model, taesd, "lcm-lora", image, [{"model_id": str(net), "type": kind, "scale": 0.8}],
                  lora_id=str(lora), prompt="pencil sketch", num_inference_steps=2, strength=0.5,
                  guidance_scale=1.0, seed=3)
    ref_pipe = reference_pipe(StableDiffusionControlNetImg2ImgPipeline, model, None,
                              ControlNetModel.from_pretrained(net), safety_checker=None,
                              requires_safety_checker=False)
    ref_pipe.load_lora_weights(lora)
    ref_pipe.fuse_lora()
    ref_pipe.vae = AutoencoderTiny.from_pretrained(taesd)
    control = as_unit(image) if kind == "input" else canny_of(image)
    # img2img runs int(N * strength) of N steps: N=4 at strength 0.5 runs our 2 steps.
    ref = ref_pipe(prompt="pencil sketch", image=as_unit(image), control_image=control, num_inference_steps=4,
                   strength=0.5, guidance_scale=1.0, controlnet_conditioning_scale=0.8, output_type="np",
                   generator=torch.Generator().manual_seed(3)).images
    assert np.abs(out - ref).max() <= TOLERANCE
    # The ControlNet mattered: without it the picture differs by far more than the tolerance.
    plain = ref_pipe(prompt="pencil sketch", image=as_unit(image), control_image=control, num_inference_steps=4,
                     strength=0.5, guidance_scale=1.0, controlnet_conditioning_scale=0.0, output_type="np",
                     generator=torch.Generator().manual_seed(3)).images
    assert np.abs(plain - ref).max() > 20 * TOLERANCE


def test_controlnet_lcm_checkpoint_equivalence(tmp_path):
    """An LCM checkpoint (UNet with the guidance embedding, LCM's own strength rule). diffusers'
    StableDiffusionControlNetImg2ImgPipeline passes no guidance embedding, so the reference is built from
    diffusers' own pieces: the txt2img StableDiffusionControlNetPipeline (which passes it) is given the
    latents LatentConsistencyModelImg2ImgPipeline would start from (the TAESD latents of the frame, noised
    by LCMScheduler.add_noise at the first of the timesteps LCMScheduler.set_timesteps(steps, strength=...)
    picks, with the first noise drawn from the seeded generator), those timesteps, and the same generator,
    whose next draws are LCM's noise between steps."""
    from diffusers import LCMScheduler, StableDiffusionControlNetPipeline

    model, taesd = save_model(tmp_path, "lcm")
    (net,) = save_controlnets(tmp_path, model)
    image = frames(1, seed=2)
    _, out = ours(model, taesd, "lcm", image, [{"model_id": str(net), "type": "input", "scale": 0.7}],
                  prompt="a watercolour", num_inference_steps=2, strength=0.6, guidance_scale=8.0, seed=7)

    ref_pipe = reference_pipe(StableDiffusionControlNetPipeline, model, taesd, ControlNetModel.from_pretrained(net),
                              safety_checker=None, requires_safety_checker=False)
    scheduler = LCMScheduler.from_config(ref_pipe.scheduler.config)
    scheduler.set_timesteps(2, strength=0.6)
    timesteps = scheduler.timesteps.tolist()
    generator = torch.Generator().manual_seed(7)
    noise = torch.randn((1, 4, SIZE // 8, SIZE // 8), generator=generator)
    with torch.no_grad():
        pixels = ref_pipe.image_processor.preprocess(as_unit(image))
        latents = ref_pipe.vae.encode(pixels).latents * ref_pipe.vae.config.scaling_factor
    noised = scheduler.add_noise(latents, noise, torch.tensor([timesteps[0]]))
    ref = ref_pipe(prompt="a watercolour", image=as_unit(image), latents=noised, timesteps=timesteps,
                   guidance_scale=8.0, controlnet_conditioning_scale=0.7, height=SIZE, width=SIZE,
                   generator=generator, output_type="np").images
    assert np.abs(out - ref).max() <= TOLERANCE


@pytest.mark.parametrize("guidance", [0.0, 2.5])
def test_controlnet_sdxl_equivalence(tmp_path, guidance):
    """SDXL Turbo against StableDiffusionXLControlNetImg2ImgPipeline; with guidance > 1 the net runs on both
    halves of classifier-free guidance, as diffusers runs it."""
    from diffusers import StableDiffusionXLControlNetImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline

    from pipelines.tiny import tiny_sdxl_components

    model = tmp_path / "sdxl"
    StableDiffusionXLImg2ImgPipeline(**tiny_sdxl_components("turbo")).save_pretrained(model)
    (net,) = save_controlnets(tmp_path, model)
    image = frames(1, seed=6)
    negative = "blurry" if guidance > 1 else ""
    _, out = ours(model, None, "turbo", image, [{"model_id": str(net), "type": "canny", "scale": 0.9}],
                  sdxl=True, prompt="ink", negative_prompt=negative, num_inference_steps=1, strength=0.5,
                  guidance_scale=guidance, seed=3)
    ref_pipe = reference_pipe(StableDiffusionXLControlNetImg2ImgPipeline, model, None,
                              ControlNetModel.from_pretrained(net))
    ref = ref_pipe(prompt="ink", negative_prompt=negative or None, image=as_unit(image),
                   control_image=canny_of(image), num_inference_steps=2, strength=0.5, guidance_scale=guidance,
                   controlnet_conditioning_scale=0.9, output_type="np",
                   generator=torch.Generator().manual_seed(3)).images
    assert np.abs(out - ref).max() <= TOLERANCE


def test_multi_controlnet_equivalence(tmp_path):
    """Two nets (input and canny, own scales) against diffusers' MultiControlNetModel, Turbo with CFG."""
    model, taesd = save_model(tmp_path, "turbo")
    first, second = save_controlnets(tmp_path, model, 2)
    image = frames(1, seed=3)
    nets = [{"model_id": str(first), "type": "input", "scale": 0.7}, {"model_id": str(second), "type": "canny",
                                                                     "scale": 0.4}]
    _, out = ours(model, taesd, "turbo", image, nets, prompt="neon city", negative_prompt="blurry",
                  num_inference_steps=1, strength=0.5, guidance_scale=2.5, seed=11)
    ref_pipe = reference_pipe(StableDiffusionControlNetImg2ImgPipeline, model, taesd,
                              [ControlNetModel.from_pretrained(first), ControlNetModel.from_pretrained(second)],
                              safety_checker=None, requires_safety_checker=False)
    assert type(ref_pipe.controlnet).__name__ == "MultiControlNetModel"
    ref = ref_pipe(prompt="neon city", negative_prompt="blurry", image=as_unit(image),
                   control_image=[as_unit(image), canny_of(image)], num_inference_steps=2, strength=0.5,
                   guidance_scale=2.5, controlnet_conditioning_scale=[0.7, 0.4], output_type="np",
                   generator=torch.Generator().manual_seed(11)).images
    assert np.abs(out - ref).max() <= TOLERANCE


def test_controlnet_batched_streams_equivalence(tmp_path):
    """Three streams in one UNet call: ControlNet on 'input' at 0.9, ControlNet off, canny at 0.5 with its
    own thresholds. Each equals its own reference run (the off stream: plain img2img, no ControlNet)."""
    model, taesd = save_model(tmp_path, "turbo")
    (net,) = save_controlnets(tmp_path, model)
    image = frames(3, seed=5)
    pipe = StreamPipeline.from_pretrained(str(model), family="turbo", vae_id=str(taesd), width=SIZE, height=SIZE,
                                          device="cpu", smoothing={"enabled": False}, prompt_blend_frames=1,
                                          controlnets=[{"model_id": str(net)}], guidance_scale=0.0)
    pipe.update("a", prompt="charcoal", seed=1, controlnet={"type": "input", "scale": 0.9})
    pipe.update("b", prompt="mosaic", seed=9, strength=0.7, controlnet=False)
    pipe.update("c", prompt="ink", seed=4, controlnet={"type": "canny", "scale": 0.5, "canny_low": 40,
                                                          "canny_high": 90})
    calls = []
    pipe.unet.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    out = pipe(image, ["a", "b", "c"], output_type="float")
    assert calls == [3], "the three streams shared one UNet call"

    control = reference_pipe(StableDiffusionControlNetImg2ImgPipeline, model, taesd, ControlNetModel.from_pretrained(net),
                             safety_checker=None, requires_safety_checker=False)
    plain = StableDiffusionImg2ImgPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
    plain.vae = AutoencoderTiny.from_pretrained(taesd)
    plain.set_progress_bar_config(disable=True)
    common = {"num_inference_steps": 2, "guidance_scale": 0.0, "output_type": "np"}
    a = control(prompt="charcoal", image=as_unit(image[:1]), control_image=as_unit(image[:1]), strength=0.5,
                controlnet_conditioning_scale=0.9, generator=torch.Generator().manual_seed(1), **common).images
    b = plain(prompt="mosaic", image=as_unit(image[1:2]), strength=0.7, generator=torch.Generator().manual_seed(9),
              num_inference_steps=img2img_inference_steps(1, 0.7), guidance_scale=0.0, output_type="np").images
    c = control(prompt="ink", image=as_unit(image[2:]), control_image=canny_of(image[2:], 40, 90), strength=0.5,
                controlnet_conditioning_scale=0.5, generator=torch.Generator().manual_seed(4), **common).images
    for k, ref in enumerate([a, b, c]):
        assert np.abs(out[k:k + 1] - ref).max() <= TOLERANCE, f"stream {'abc'[k]}"
