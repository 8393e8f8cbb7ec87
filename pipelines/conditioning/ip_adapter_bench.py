"""`streamer bench --style-image`: the frame step with a style image (IP-Adapter) against diffusers' own
pipeline with ``ip_adapter_image``, on the same random components, in the same run as the other rows.

The adapter is random (h94's layout, a tiny CLIP image encoder: the encoder runs once per style change, not
per frame, so its size does not count in a frame's time). diffusers' rows run with its own IP-Adapter
processors; then the same UNet gets the per-frame-scale ones and the frame step's rows run, each stream with
the style image."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np

from pipelines.conditioning.ip_adapter import use_frame_scales
from pipelines.conditioning.style_image import StyleImage
from pipelines.conditioning.tiny_ip_adapter import SUBFOLDER, WEIGHT_NAME, save_tiny_ip_adapter
from pipelines.config import PipelineConfig
from pipelines.lcm_img2img import StreamPipeline
from pipelines.loading import ModelComponents


def ip_adapter_rows(measure: Any, reference: Any, components: ModelComponents, config: PipelineConfig,
                    style: StyleImage, scale: float, *, batches: list[int], steps_list: list[int],
                    call_reference: Callable[[int, np.ndarray, dict[str, Any]], object],
                    log: Callable[[str], None]) -> None:
    """Rows "diffusers <pipeline> + IP-Adapter" (batch 1) and "streamer frame step + IP-Adapter (eager)" (every
    batch) for each step count. ``call_reference(steps, image, extra)`` runs the reference pipeline once."""
    dtype, device = components.dtype, components.device
    with tempfile.TemporaryDirectory(prefix="streamer-bench-ip-adapter-") as folder:
        save_tiny_ip_adapter(folder, reference.unet, dtype=dtype)
        reference.load_ip_adapter(folder, subfolder=SUBFOLDER, weight_name=WEIGHT_NAME)
    reference.image_encoder.to(device, dtype)
    reference.set_ip_adapter_scale(scale)
    log(f"IP-Adapter loaded (random, h94 layout), style image {style.label}, scale {scale:g}")
    rng = np.random.default_rng(1)
    resolution = config.width
    baselines = {}
    for steps in steps_list:
        image = rng.random((1, resolution, resolution, 3), dtype=np.float32)
        baselines[steps] = measure.row("diffusers with ip_adapter_image", "taesd", 1, steps,
                                       lambda s=steps, i=image: call_reference(s, i, {"ip_adapter_image": style.image}))
    use_frame_scales(reference.unet)
    ours = StreamPipeline(components, config)
    for batch in batches:
        for steps in steps_list:
            ours.config = config.model_copy(update={"num_inference_steps": steps})
            ours.streams.clear()
            ids = [f"s{i}" for i in range(batch)]
            for stream_id in ids:  # the embedding is made here, once per stream: not in the timed calls
                ours.update(stream_id, style_image=style, style_scale=scale)
            frames = rng.integers(0, 256, (batch, resolution, resolution, 3), dtype=np.uint8)
            measure.row("streamer frame step + IP-Adapter (eager)", "taesd", batch, steps,
                        lambda f=frames, i=ids: ours(f, i), baselines[steps])
