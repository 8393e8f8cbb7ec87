"""`streamer bench` rows for ControlNet: the frame step with one, two... random ControlNets against diffusers'
ControlNet img2img pipeline on the same components in the same run, and what the control images cost.

SD sizes: ``StableDiffusionControlNetImg2ImgPipeline`` at guidance 1 (it passes no LCM guidance embedding; at
guidance 1 it runs no classifier-free guidance either: one UNet and every net per step, as the frame step
does). SDXL sizes: ``StableDiffusionXLControlNetImg2ImgPipeline``. Both get a canny control image; the frame
step makes its own (on the device, inside the step) from each frame. The frame step runs eagerly here, on the
modules diffusers ran on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from pipelines.conditioning.control_images import DepthEstimator, canny
from pipelines.conditioning.tiny import tiny_controlnet, tiny_depth_estimator
from pipelines.config import ControlNetConfig, PipelineConfig
from pipelines.schedules import img2img_inference_steps


def controlnet_rows(measure: Any, reference: Any, taesd: Any, *, counts: list[int], size: str, sdxl: bool,
                    resolution: int, strength: float, steps: int, batches: list[int], prompt: str, family: str,
                    guidance_scale: float, dtype_name: str, log: Callable[[str], None]) -> None:
    """Rows for each count of nets in ``counts``, then the control images' own cost (canny, depth)."""
    from pipelines.lcm_img2img import StreamPipeline
    from pipelines.loading import ModelComponents

    if sdxl:
        from diffusers import StableDiffusionXLControlNetImg2ImgPipeline as Reference
    else:
        from diffusers import StableDiffusionControlNetImg2ImgPipeline as Reference
    device, dtype = reference.device, reference.unet.dtype
    tiny = size.startswith("tiny")
    embedding = (8, 8, 8, 8) if tiny else (16, 32, 96, 256)
    rng = np.random.default_rng(1)
    image = rng.random((1, resolution, resolution, 3), dtype=np.float32)
    control_image = canny(torch.from_numpy(image).permute(0, 3, 1, 2) * 2 - 1, 100, 200).permute(0, 2, 3, 1).numpy()
    nets: list[Any] = []
    for count in counts:
        while len(nets) < count:
            nets.append(tiny_controlnet(reference.unet, seed=len(nets), embedding=embedding).to(device, dtype))
        parts = {k: v for k, v in reference.components.items() if k in Reference._get_signature_keys(Reference)[0]}
        parts.update(vae=taesd, controlnet=nets[:count] if count > 1 else nets[0])
        pipe = Reference(**parts)
        pipe.set_progress_bar_config(disable=True)
        scheduled = img2img_inference_steps(steps, strength)

        def call_reference(pipe: Any = pipe, scheduled: int = scheduled, count: int = count) -> object:
            return pipe(prompt=prompt, image=image, control_image=[control_image] * count if count > 1 else
                        control_image, num_inference_steps=scheduled, strength=strength, guidance_scale=1.0
                        if not sdxl else guidance_scale, controlnet_conditioning_scale=[1.0] * count if count > 1
                        else 1.0, output_type="np", generator=torch.Generator("cpu").manual_seed(0))

        short = Reference.__name__.replace("StableDiffusion", "SD").replace("Pipeline", "")
        baseline = measure.row(f"diffusers {short} x{count}", "taesd", 1, steps, call_reference)
        config = PipelineConfig(family="tiny", width=resolution, height=resolution, strength=strength,
                                guidance_scale=guidance_scale, prompt=prompt, device=str(device), dtype=dtype_name,
                                num_inference_steps=steps, smoothing={"enabled": False},
                                controlnets=[ControlNetConfig(model_id=f"random-{i}") for i in range(count)])
        components = ModelComponents(reference.unet, taesd, reference.scheduler, reference, family, sdxl, device,
                                     dtype, controlnets=nets[:count])
        ours = StreamPipeline(components, config)
        for batch in batches:
            frames = rng.integers(0, 256, (batch, resolution, resolution, 3), dtype=np.uint8)
            ids = [f"c{i}" for i in range(batch)]
            measure.row(f"streamer frame step + {count} ControlNet (eager)", "taesd", batch, steps,
                        lambda f=frames, i=ids, p=ours: p(f, i), baseline)
    _control_image_rows(measure, tiny, resolution, device, dtype, log)


def _control_image_rows(measure: Any, tiny: bool, resolution: int, device: torch.device, dtype: torch.dtype,
                        log: Callable[[str], None]) -> None:
    """What making a control image costs per frame: canny, and a depth estimator of Depth Anything V2
    small's architecture (random weights; the tiny one for tiny sizes) at 518 px (56 px for tiny)."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation

    if tiny:
        model, _ = tiny_depth_estimator()
        side = 56
    else:
        torch.manual_seed(0)
        model, side = DepthAnythingForDepthEstimation(DepthAnythingConfig()).eval(), 518
    estimator = DepthEstimator(model.to(device, dtype), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], side)
    frame = torch.rand((1, 3, resolution, resolution), device=device) * 2 - 1
    flops, measure.unet_flops = measure.unet_flops, 0.0  # these rows run no UNet
    try:
        for name, fn in ((f"control image: canny {resolution}px", lambda: canny(frame, 100, 200)),
                         (f"control image: depth ({'tiny' if tiny else 'Depth Anything small'} arch, {side}px)",
                          lambda: estimator(frame.to(dtype)))):
            row = measure.row(name, "-", 1, 0, fn)
            row.ratio_vs_diffusers = None
    finally:
        measure.unet_flops = flops
    from pipelines.bench import _row_json

    measure.result["rows"] = [_row_json(r) for r in measure.rows]
    log(f"control images: {', '.join(f'{r.name} {r.ms_per_frame:.2f} ms' for r in measure.rows[-2:])}")
