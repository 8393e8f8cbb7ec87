"""The style image (IP-Adapter) on the frame step equals diffusers' own img2img pipelines with
``ip_adapter_image``, and changes live.

A tiny random IP-Adapter is made in diffusers' state-dict layout (h94's file layout, a tiny
CLIPVisionModelWithProjection saved with save_pretrained) and loaded through the project's loading code; the
reference pipeline loads the same folder with diffusers' ``load_ip_adapter``. fp32 on CPU; smoothing off;
noise and timesteps matched as in tests/test_pipeline_equivalence.py (same seed, same generator order).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderTiny,
    LatentConsistencyModelImg2ImgPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionXLImg2ImgPipeline,
)
from PIL import Image

from pipelines.conditioning.style_image import decode_style_image
from pipelines.conditioning.tiny_ip_adapter import (
    SUBFOLDER,
    WEIGHT_NAME,
    save_tiny_ip_adapter,
    tiny_ip_adapter_config,
)
from pipelines.errors import PipelineError
from pipelines.lcm_img2img import StreamPipeline
from pipelines.tiny import tiny_components, tiny_sdxl_components
from tests.test_loading import offline  # noqa: F401 - the fixture
from tests.test_pipeline_equivalence import SIZE, TOLERANCE, frames, save_model


def png(seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def adapter(tmp: Path, unet) -> dict:
    return tiny_ip_adapter_config(save_tiny_ip_adapter(tmp / "ip-adapter", unet, seed=4))


def ours(model: Path, taesd: Path | None, family: str, ipa: dict, **settings) -> StreamPipeline:
    return StreamPipeline.from_pretrained(str(model), family=family, vae_id=str(taesd) if taesd else None,
                                          width=SIZE, height=SIZE, device="cpu", smoothing={"enabled": False},
                                          prompt_blend_frames=1, ip_adapter=ipa, **settings)


def reference(cls, model: Path, taesd: Path | None, ipa: dict | None, image: np.ndarray, style: bytes | None,
              scale: float, **kwargs) -> np.ndarray:
    extra = {} if cls is StableDiffusionXLImg2ImgPipeline else {"safety_checker": None,
                                                               "requires_safety_checker": False}
    pipe = cls.from_pretrained(model, **extra)
    if taesd is not None:
        pipe.vae = AutoencoderTiny.from_pretrained(taesd)
    if ipa is not None:
        pipe.load_ip_adapter(ipa["model_id"], subfolder=SUBFOLDER, weight_name=WEIGHT_NAME)
        pipe.set_ip_adapter_scale(scale)
        kwargs["ip_adapter_image"] = decode_style_image(style).image
    pipe.set_progress_bar_config(disable=True)
    return pipe(image=image.astype(np.float32) / 255.0, output_type="np", **kwargs).images


@pytest.mark.parametrize("steps,scale", [(1, 0.8), (2, 1.5)])
def test_ip_adapter_lcm_equivalence(tmp_path, steps, scale):
    """LCM checkpoint (guidance embedding, no CFG) vs LatentConsistencyModelImg2ImgPipeline."""
    model, taesd = save_model(tmp_path, "lcm")
    ipa = adapter(tmp_path, tiny_components("lcm")["unet"])
    image, style = frames(1, seed=3), png(1)
    pipe = ours(model, taesd, "lcm", ipa, prompt="ink", seed=7, strength=0.6, num_inference_steps=steps,
                guidance_scale=8.0, style_scale=scale)
    pipe.update("default", style_image=style)
    out = pipe(image, output_type="float")
    ref = reference(LatentConsistencyModelImg2ImgPipeline, model, taesd, ipa, image, style, scale, prompt="ink",
                    num_inference_steps=steps, strength=0.6, guidance_scale=8.0,
                    generator=torch.Generator().manual_seed(7))
    assert np.abs(out - ref).max() <= TOLERANCE
    plain = reference(LatentConsistencyModelImg2ImgPipeline, model, taesd, None, image, None, 0, prompt="ink",
                      num_inference_steps=steps, strength=0.6, guidance_scale=8.0,
                      generator=torch.Generator().manual_seed(7))
    assert np.abs(out - plain).max() > 0.05  # the style image really changed the picture


def test_ip_adapter_turbo_cfg_equivalence(tmp_path):
    """Turbo with classifier-free guidance: the negative half gets diffusers' zero image embedding."""
    model, taesd = save_model(tmp_path, "turbo")
    ipa = adapter(tmp_path, tiny_components("turbo")["unet"])
    image, style = frames(1, seed=4), png(2)
    pipe = ours(model, taesd, "turbo", ipa, prompt="neon", negative_prompt="blurry", seed=11, strength=0.5,
                num_inference_steps=1, guidance_scale=2.5, style_scale=0.7)
    pipe.update("default", style_image=style)
    out = pipe(image, output_type="float")
    ref = reference(StableDiffusionImg2ImgPipeline, model, taesd, ipa, image, style, 0.7, prompt="neon",
                    negative_prompt="blurry", num_inference_steps=2, strength=0.5, guidance_scale=2.5,
                    generator=torch.Generator().manual_seed(11))
    assert np.abs(out - ref).max() <= TOLERANCE


def test_ip_adapter_sdxl_equivalence(tmp_path):
    """SDXL (two text encoders, pooled embedding, size conditioning) vs StableDiffusionXLImg2ImgPipeline."""
    model = tmp_path / "sdxl"
    parts = tiny_sdxl_components("turbo")
    StableDiffusionXLImg2ImgPipeline(**parts).save_pretrained(model)
    ipa = adapter(tmp_path, parts["unet"])
    image, style = frames(1, seed=6), png(3)
    pipe = ours(model, None, "turbo", ipa, sdxl=True, prompt="ink", seed=3, strength=0.5, num_inference_steps=1,
                guidance_scale=0.0, style_scale=0.9)
    pipe.update("default", style_image=style)
    out = pipe(image, output_type="float")
    ref = reference(StableDiffusionXLImg2ImgPipeline, model, None, ipa, image, style, 0.9, prompt="ink",
                    num_inference_steps=2, strength=0.5, guidance_scale=0.0,
                    generator=torch.Generator().manual_seed(3))
    assert np.abs(out - ref).max() <= TOLERANCE


def test_ip_adapter_batched_streams_equivalence(tmp_path):
    """Three streams in one UNet call: two style images at different scales and one without a style; each
    equals its own reference run (the unstyled one: diffusers without an adapter)."""
    model, taesd = save_model(tmp_path, "lcm")
    ipa = adapter(tmp_path, tiny_components("lcm")["unet"])
    image = frames(3, seed=5)
    pipe = ours(model, taesd, "lcm", ipa, guidance_scale=8.0, num_inference_steps=1, strength=0.5)
    pipe.update("a", prompt="charcoal", seed=1, style_image=png(10), style_scale=0.5)
    pipe.update("b", prompt="mosaic", seed=9, style_image=png(11), style_scale=1.2)
    pipe.update("c", prompt="ink", seed=4)
    calls = []
    hook = pipe.unet.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    out = pipe(image, ["a", "b", "c"], output_type="float")
    hook.remove()
    assert calls == [3]  # one UNet call for the three streams
    for k, (prompt, seed, style, scale) in enumerate([("charcoal", 1, png(10), 0.5), ("mosaic", 9, png(11), 1.2),
                                                     ("ink", 4, None, 0.0)]):
        ref = reference(LatentConsistencyModelImg2ImgPipeline, model, taesd, ipa if style else None,
                        image[k:k + 1], style, scale, prompt=prompt, num_inference_steps=1, strength=0.5,
                        guidance_scale=8.0, generator=torch.Generator().manual_seed(seed))
        assert np.abs(out[k:k + 1] - ref).max() <= TOLERANCE, f"stream {k}"


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("live")
    model, taesd = save_model(tmp, "lcm")
    ipa = adapter(tmp, tiny_components("lcm")["unet"])
    return ours(model, taesd, "lcm", ipa, guidance_scale=8.0, seed=2, prompt="ink", style_scale=0.8)


def _embeds_computed(pipe: StreamPipeline) -> tuple[list[int], object]:
    calls = []
    hook = pipe.components.prompt_pipe.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    return calls, hook


def test_ip_adapter_live_style_and_scale_take_effect_on_the_next_frame(live):
    pipe = live
    image = frames(1, seed=8)
    before = pipe(image, ["s"], output_type="float")
    calls, hook = _embeds_computed(pipe)
    try:
        pipe.update("s", style_image=png(20))
        assert len(calls) == 1  # the style's embedding: once per change
        styled = pipe(image, ["s"], output_type="float")
        pipe(image, ["s"], output_type="float")
        assert len(calls) == 1  # not per frame
        assert np.abs(styled - before).max() > 0.05
        pipe.update("s", style_scale=0.0)  # the scale alone: no new embedding, and scale 0 is no style
        assert len(calls) == 1
        np.testing.assert_array_equal(pipe(image, ["s"], output_type="float"), before)
        pipe.update("s", style_scale=0.8)
        np.testing.assert_array_equal(pipe(image, ["s"], output_type="float"), styled)
        pipe.update("s", style_image="")  # cleared
        np.testing.assert_array_equal(pipe(image, ["s"], output_type="float"), before)
    finally:
        hook.remove()


@pytest.mark.parametrize("value,words", [
    ("bm90IGFuIGltYWdl", "not an image"),  # base64 of "not an image"
    ("data:text/plain;base64,aGVsbG8=", "not an image"),
    ("!!!", "neither base64"),
    (12, "base64 text or a data: URL"),
])
def test_ip_adapter_refused_style_leaves_the_stream_as_it_was(live, value, words):
    pipe = live
    image = frames(1, seed=9)
    pipe.update("r", style_image=png(30), style_scale=0.9)
    before = pipe(image, ["r"], output_type="float")
    with pytest.raises(ValueError, match=words) as info:
        pipe.update("r", style_image=value, style_scale=0.1)
    assert "\n" not in str(info.value)
    np.testing.assert_array_equal(pipe(image, ["r"], output_type="float"), before)
    assert pipe.streams["r"].style_scale == 0.9


def test_style_image_checks():
    big = png(1, (5000, 20))
    with pytest.raises(ValueError, match="5000x20 pixels"):
        decode_style_image(big)
    with pytest.raises(ValueError, match="too large"):
        decode_style_image(b"\x89PNG" + b"0" * (3 * 2**20))
    with pytest.raises(ValueError, match="8x8 pixels"):
        decode_style_image(png(1, (8, 8)))
    with pytest.raises(ValueError, match="damaged PNG"):
        decode_style_image(png(1)[:200])
    assert decode_style_image(png(1)).label.startswith("48x40 sha256:")


def test_ip_adapter_without_adapter_a_style_is_refused(tmp_path):
    model, taesd = save_model(tmp_path, "lcm")
    pipe = StreamPipeline.from_pretrained(str(model), family="lcm", vae_id=str(taesd), width=SIZE, height=SIZE,
                                          device="cpu")
    with pytest.raises(ValueError, match="no IP-Adapter"):
        pipe.update("default", style_image=png(1))


def test_ip_adapter_that_does_not_fit_the_model_is_one_line(tmp_path):
    """An adapter made for another UNet (other attention widths): a PipelineError naming both."""
    model, taesd = save_model(tmp_path, "lcm")
    ipa = adapter(tmp_path, tiny_sdxl_components("turbo")["unet"])
    with pytest.raises(PipelineError, match="does not fit model") as info:
        ours(model, taesd, "lcm", ipa)
    assert "\n" not in str(info.value)


@pytest.mark.usefixtures("offline")
def test_ip_adapter_offline_names_every_model():
    from pipelines.loading import check_downloaded
    from pipelines.presets import build_config

    with pytest.raises(PipelineError) as info:
        check_downloaded(build_config("sd15-ip-adapter"))
    message = str(info.value)
    for name in ("SimianLuo/LCM_Dreamshaper_v7", "madebyollin/taesd", "h94/IP-Adapter",
                 "models/ip-adapter_sd15.safetensors", "models/image_encoder"):
        assert name in message


def test_bench_ip_adapter_rows(tmp_path):
    """`streamer bench --style-image`: diffusers' pipeline with ip_adapter_image, then the frame step with the
    style image, in the same run, each frame-step row compared with that diffusers row."""
    import json
    import subprocess
    import sys

    (tmp_path / "style.png").write_bytes(png(1))
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "streamer", "bench", "--device", "cpu", "--quick", "--batch", "2",
                           "--steps", "1", "--vae", "taesd", "--iterations", "1", "--style-image",
                           str(tmp_path / "style.png"), "--style-scale", "0.8", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    names = [r["name"] for r in rows]
    assert names[-2:] == ["diffusers with ip_adapter_image", "streamer frame step + IP-Adapter (eager)"], names
    base, ours = rows[-2:]
    assert ours["batch"] == 2 and ours["ms_per_frame"] > 0
    assert abs(ours["ratio_vs_diffusers"] - base["ms_per_frame"] / ours["ms_per_frame"]) < 0.01 * ours[
        "ratio_vs_diffusers"] + 0.01
    assert "IP-Adapter loaded" in proc.stderr and "[transformers]" not in proc.stderr
    bad = subprocess.run([sys.executable, "-m", "streamer", "bench", "--quick", "--style-image",
                          str(tmp_path / "nope.png")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        f"streamer: error: --style-image {tmp_path / 'nope.png'} does not exist"]


def test_ip_adapter_compiled_and_fused_match_eager(tmp_path):
    """The layout changes and the compiled model calls made on CUDA, forced on here on the CPU, with streams of
    different style images: same pictures; a style change after start-up recompiles nothing (the per-frame
    scales and embeddings are inputs of the compiled call, not constants)."""
    from diffusers.models.attention_processor import FusedAttnProcessor2_0
    from torch._dynamo.utils import counters

    from pipelines.conditioning.ip_adapter import FrameScaledIPAdapterProcessor
    from pipelines.factory import load_pipeline

    ipa = adapter(tmp_path, tiny_components("lcm")["unet"])
    settings = {"device": "cpu", "smoothing": {"enabled": False}, "ip_adapter": ipa}
    eager = load_pipeline("tiny", **settings, fuse_qkv="off", compile="off")
    fast = load_pipeline("tiny", **settings, fuse_qkv="on", compile="on", compile_batch_sizes=[2])
    kinds = {type(p) for p in fast.unet.attn_processors.values()}
    assert kinds == {FusedAttnProcessor2_0, FrameScaledIPAdapterProcessor}, kinds
    compiled_before = counters["frames"]["ok"]
    ids = ["a", "b"]
    for pipe in (eager, fast):
        pipe.update("a", style_image=png(40), style_scale=1.0)
    image = frames(2, seed=11)
    assert np.abs(eager(image, ids, output_type="float") - fast(image, ids, output_type="float")).max() < 1e-4
    for pipe in (eager, fast):
        pipe.update("b", style_image=png(41), style_scale=0.5)
        pipe.update("a", style_scale=0.2)
    a, b = eager(image, ids, output_type="float"), fast(image, ids, output_type="float")
    assert np.abs(a - b).max() < 1e-4
    assert fast.unet_forward.compiled_calls > 0 and not fast.unet_forward.failed
    assert counters["frames"]["ok"] == compiled_before, "recompiled after start-up"


def test_ip_adapter_with_smoothing(tmp_path):
    """Smoothing (latent blending, frame skipping) with a style image: a still input skips the model and
    re-emits the styled picture; the style still differs from no style."""
    from pipelines.factory import load_pipeline

    ipa = adapter(tmp_path, tiny_components("lcm")["unet"])
    pipe = load_pipeline("tiny", device="cpu", ip_adapter=ipa)
    assert pipe.config.smoothing.enabled
    pipe.update("styled", style_image=png(50), style_scale=1.0)
    image = frames(1, seed=12)
    styled = [pipe(image, ["styled"], output_type="float") for _ in range(3)]
    plain = pipe(image, ["plain"], output_type="float")
    assert np.abs(styled[0] - plain).max() > 0.05
    np.testing.assert_array_equal(styled[1], styled[2])  # still input: skipped, the styled frame again
