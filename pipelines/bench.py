"""Time the project's frame step against diffusers' LatentConsistencyModelImg2ImgPipeline, in one process,
on the same random-weight components (no download), the same prompt embeddings, steps and strength.

The measuring only: `streamer bench` (streamer/commands/bench.py) prints the table and writes the JSON."""

from __future__ import annotations

import logging
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from pipelines.compiled import (
    check_attention,
    enable_compile,
    graph_mode,
    should_compile,
    speed_up_modules,
    warm_up,
)
from pipelines.config import PipelineConfig, SmoothingConfig
from pipelines.lcm_img2img import StreamPipeline
from pipelines.loading import ModelComponents, resolve_device, resolve_dtype
from pipelines.quiet import quiet_libraries
from pipelines.random_models import is_sdxl, random_components
from pipelines.schedules import img2img_inference_steps

_log = logging.getLogger(__name__)


@dataclass
class BenchRow:
    name: str
    vae: str
    batch: int
    steps: int
    ms_per_frame: float
    fps: float
    ratio_vs_diffusers: float | None = None
    unet_tflops: float | None = None  # UNet FLOPs of the frames / the whole step's time: a lower bound
    peak_memory_mb: float | None = None  # GPU memory allocated at the peak of the row (CUDA only)
    compile_s: float | None = None  # compiling this batch size, on the first row that needed it
    spread: float | None = None  # (slowest - fastest) / median of the timed calls; None with one call


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, *, warmup: int, iterations: int) -> list[float]:
    """Seconds of each of ``iterations`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iterations):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


# Rows whose timed calls differ by more than this (relative to their median) make the comparison unreliable.
WIDE_SPREAD = 0.25


def spread_warning(result: dict) -> str | None:
    """One line when the timings cannot be trusted: calls of a row that varied widely (a busy machine), or
    too few calls to tell."""
    spreads = [r["spread"] for r in result["rows"] if r.get("spread") is not None]
    iterations = result.get("iterations", 0)
    if spreads and max(spreads) > WIDE_SPREAD:
        return (f"timed calls within a row varied by up to {max(spreads):.0%} of their median (the machine "
                f"is busy, or {iterations} calls are too few): the ratios are not reliable; close other "
                "programs or raise --iterations")
    if iterations < 3:
        return (f"only {iterations} timed call(s) per row: too few to tell a busy machine from a real "
                "difference, the ratios may be off; use --iterations 5 or more")
    return None


def unet_flops_per_frame(unet: torch.nn.Module, sample: torch.Tensor, timestep: torch.Tensor,
                         encoder_hidden_states: torch.Tensor, **conditioning: Any) -> float:
    """FLOPs of one batch-1 UNet forward, counted by torch's FlopCounterMode (matmuls, convolutions,
    attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False, **conditioning)
    return float(counter.get_total_flops())


class _Measure:
    """Times rows and fills in what every row reports; ``checkpoint`` sees the result after each row."""

    def __init__(self, device: torch.device, warmup: int, iterations: int, log: Callable[[str], None],
                 result: dict, checkpoint: Callable[[dict], None] | None) -> None:
        self.device, self.warmup, self.iterations, self.log = device, warmup, iterations, log
        self.result, self.checkpoint = result, checkpoint
        self.rows: list[BenchRow] = []
        self.unet_flops = 0.0

    def row(self, name: str, vae: str, batch: int, steps: int, fn: Callable[[], object],
            baseline: BenchRow | None = None, compile_s: float | None = None) -> BenchRow:
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        times = time_call(fn, self.device, warmup=self.warmup, iterations=self.iterations)
        seconds = statistics.median(times)
        row = BenchRow(name, vae, batch, steps, seconds * 1000 / batch, batch / seconds, compile_s=compile_s,
                       spread=(max(times) - min(times)) / seconds if len(times) > 1 else None)
        row.ratio_vs_diffusers = 1.0 if baseline is None else baseline.ms_per_frame / row.ms_per_frame
        if self.unet_flops:
            row.unet_tflops = self.unet_flops * steps * batch / seconds / 1e12
        if cuda:
            row.peak_memory_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        self.rows.append(row)
        self.log(_format(row))
        self.result["rows"] = [_row_json(r) for r in self.rows]
        if self.checkpoint is not None:
            self.checkpoint(self.result)
        return row


def _row_json(r: BenchRow) -> dict:
    out = asdict(r)
    for key in ("ms_per_frame", "fps", "ratio_vs_diffusers", "unet_tflops", "peak_memory_mb", "compile_s",
                "spread"):
        if out[key] is not None:
            out[key] = round(out[key], 6 if key == "unet_tflops" else 3)
    return out


def _machine(device: torch.device) -> dict:
    import diffusers

    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
        or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
    }


def run_bench(*, size: str, device_name: str, dtype_name: str, resolution: int, batches: list[int],
              steps_list: list[int], vaes: list[str], strength: float, warmup: int, iterations: int,
              compile_setting: str = "auto", fuse_qkv: str = "auto", channels_last: str = "auto",
              graphs: list[str] | None = None, smoothing: list[bool] | None = None, attention: str = "auto",
              eager: bool = True, controlnets: list[int] | None = None, log: Callable[[str], None] | None = None,
              checkpoint: Callable[[dict], None] | None = None, style_image: Any = None,
              style_scale: float = 0.6) -> dict:
    """diffusers' pipeline at batch 1 with both VAEs, then the project's frame step (eager unless not
    ``eager``, and compiled where ``compile_setting`` says, once per mode of ``graphs``: PipelineConfig.graph)
    with each of ``vaes`` at every batch size, step count and ``smoothing`` (off, on: a moving picture, so
    frames run the model). Compiled batch sizes are compiled one at a time in the order given, each just
    before its rows, so a run cut short still has the rows of the sizes it reached (``checkpoint`` is called
    after every row). ``attention`` forces an SDPA kernel in the frame step (PipelineConfig.attention).

    SD sizes: an LCM checkpoint's UNet (guidance embedding, w = 8) against
    ``LatentConsistencyModelImg2ImgPipeline``. SDXL sizes: LCM-LoRA style (LCMScheduler, img2img timesteps,
    guidance 1) against ``StableDiffusionXLImg2ImgPipeline``. ``controlnets``: counts of ControlNets to time
    against diffusers' ControlNet pipeline (pipelines/conditioning/bench.py). ``style_image`` (a StyleImage)
    adds the rows with an IP-Adapter (pipelines/conditioning/ip_adapter_bench.py) at the end. ``log`` hears
    each step and row as it happens (default: the logger; pipelines print nothing)."""
    log = log or _log.info
    quiet_libraries()  # before diffusers' pipeline classes are imported: they warn at import
    sdxl = is_sdxl(size)
    if sdxl:
        from diffusers import StableDiffusionXLImg2ImgPipeline as Reference
    else:
        from diffusers import LatentConsistencyModelImg2ImgPipeline as Reference

    device = resolve_device(device_name)
    dtype = resolve_dtype(dtype_name, device)
    started = time.perf_counter()
    parts = random_components(size, dtype=dtype)
    taesd = parts.pop("taesd").to(device)
    full_vae = parts["vae"]
    reference = Reference(**parts).to(device)
    reference.set_progress_bar_config(disable=True)
    log(f"{size} components built and moved to {device} in {time.perf_counter() - started:.1f} s")
    prompt = "an oil painting of a city at night"
    latent = resolution // 8
    sample = torch.zeros((1, 4, latent, latent), device=device, dtype=dtype)
    if sdxl:
        guidance_scale, family = 1.0, "lcm-lora"
        embeds, _, pooled, _ = reference.encode_prompt(prompt=prompt, device=device, num_images_per_prompt=1,
                                                       do_classifier_free_guidance=False)
        prompt_kwargs = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
        time_ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], device=device,
                                dtype=dtype)
        conditioning = {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}
    else:
        guidance_scale, family = 8.0, "lcm"
        embeds, _ = reference.encode_prompt(prompt, device, 1, False)
        prompt_kwargs = {"prompt_embeds": embeds}
        w = torch.tensor([guidance_scale - 1.0])
        dim = reference.unet.config.time_cond_proj_dim
        conditioning = {"timestep_cond": reference.get_guidance_scale_embedding(w, embedding_dim=dim).to(
            device, dtype)}
    result = {"machine": _machine(device), "model_size": size, "resolution": resolution,
              "dtype": str(dtype).removeprefix("torch."), "strength": strength, "iterations": iterations,
              "rows": []}
    measure = _Measure(device, warmup, iterations, log, result, checkpoint)
    rng = np.random.default_rng(0)

    measure.unet_flops = unet_flops_per_frame(reference.unet, sample, torch.tensor([499.0], device=device),
                                              embeds, **conditioning)
    result["unet_gflop_per_frame"] = round(measure.unet_flops / 1e9, 2)
    log(f"UNet: {measure.unet_flops / 1e9:.1f} GFLOP per frame and step")

    # diffusers first, on the untouched modules.
    baselines: dict[tuple[str, int], BenchRow] = {}
    for vae_name in ("full", "taesd"):
        reference.vae = taesd if vae_name == "taesd" else full_vae
        for steps in steps_list:
            image = rng.random((1, resolution, resolution, 3), dtype=np.float32)
            generator = torch.Generator("cpu").manual_seed(0)

            # diffusers' SDXL img2img runs int(N * strength) of N steps: ask for the N that runs ``steps``.
            scheduled = img2img_inference_steps(steps, strength) if sdxl else steps

            def call_reference(scheduled: int = scheduled, image: np.ndarray = image,
                               generator: torch.Generator = generator) -> object:
                return reference(**prompt_kwargs, image=image, num_inference_steps=scheduled, strength=strength,
                                 guidance_scale=guidance_scale, output_type="np", generator=generator)

            baselines[vae_name, steps] = measure.row(f"diffusers {Reference.__name__}", vae_name, 1, steps,
                                                     call_reference)

    if controlnets:
        from pipelines.conditioning.bench import controlnet_rows

        reference.vae = taesd
        controlnet_rows(measure, reference, taesd, counts=controlnets, size=size, sdxl=sdxl, resolution=resolution,
                        strength=strength, steps=steps_list[0], batches=batches, prompt=prompt, family=family,
                        guidance_scale=guidance_scale, dtype_name=dtype_name, log=log)
    applied = speed_up_modules(reference.unet, full_vae, device, fuse_qkv=fuse_qkv, channels_last=channels_last)
    if channels_last == "vae" or (channels_last != "unet" and should_compile(channels_last, device)):
        taesd.to(memory_format=torch.channels_last)
    check_attention(attention, device, dtype)
    result["attention"] = attention
    result["layout"] = applied
    if applied:
        log(f"frame step modules: {', '.join(applied)}")
    # The components are given below; the config's family only has to be one that needs no model_id.
    config = PipelineConfig(family="tiny", width=resolution, height=resolution, strength=strength,
                            guidance_scale=guidance_scale, prompt=prompt, device=str(device), dtype=dtype_name,
                            smoothing={"enabled": False}, attention=attention)
    modes = ["eager"] if eager else []
    if should_compile(compile_setting, device):
        modes += list(dict.fromkeys(graph_mode(g, device) for g in graphs or ["auto"]))
    for vae_name in vaes:
        vae = taesd if vae_name == "taesd" else full_vae
        components = ModelComponents(reference.unet, vae, reference.scheduler, reference, family, sdxl, device,
                                     dtype)
        for mode in modes:
            ours = StreamPipeline(components, config)  # a fresh one per mode: compiling replaces its calls
            if mode != "eager":
                enable_compile(ours, batches, warm=False, graph=mode)
            kind = "eager" if mode == "eager" else f"compiled, {_MODE_NAMES[mode]}"
            for batch in batches:
                compile_s = None
                for k, steps in enumerate(steps_list):
                    ours.config = config.model_copy(update={"num_inference_steps": steps})
                    ours.streams.clear()  # streams take their settings from the config when first seen
                    if mode != "eager" and (k == 0 or mode == "whole"):  # a whole step compiles per step count
                        compile_s = warm_up(ours, [batch], progress=log)
                    for smooth in smoothing or [False]:
                        ours.config = config.model_copy(update={"num_inference_steps": steps,
                                                                "smoothing": SmoothingConfig(enabled=smooth)})
                        ours.streams.clear()
                        moving = _moving_frames(rng, batch, resolution) if smooth else [
                            rng.integers(0, 256, (batch, resolution, resolution, 3), dtype=np.uint8)]
                        ids = [f"s{i}" for i in range(batch)]
                        turn = iter(range(10**9))

                        def call(m: list = moving, i: list = ids, p: StreamPipeline = ours, t=turn) -> object:
                            return p(m[next(t) % len(m)], i)

                        measure.row(f"streamer frame step ({kind}{', smoothing on' if smooth else ''})",
                                    vae_name, batch, steps, call, baselines[vae_name, steps], compile_s)
                        compile_s = None
            failed = _compile_failures(ours)
            if failed:
                log(f"warning: compiling failed at the {', '.join(failed)}; those rows ran eagerly")
                result.setdefault("compile_failed", []).extend(failed)
    if style_image is not None:
        from pipelines.conditioning.ip_adapter_bench import ip_adapter_rows

        reference.vae = taesd

        def reference_once(steps: int, image: np.ndarray, extra: dict[str, Any]) -> object:
            return reference(**prompt_kwargs, **extra, image=image, strength=strength, guidance_scale=guidance_scale,
                             num_inference_steps=img2img_inference_steps(steps, strength) if sdxl else steps,
                             output_type="np", generator=torch.Generator("cpu").manual_seed(0))

        components = ModelComponents(reference.unet, taesd, reference.scheduler, reference, family, sdxl, device,
                                     dtype)
        ip_adapter_rows(measure, reference, components, config, style_image, style_scale, batches=batches,
                        steps_list=steps_list, call_reference=reference_once, log=log)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


_MODE_NAMES = {"whole": "whole-step graph", "seams": "three graphs", "off": "no CUDA graphs"}


def _compile_failures(pipe: StreamPipeline) -> list[str]:
    calls = [pipe.whole_step] if pipe.whole_step is not None else [pipe.vae_encode, pipe.unet_forward,
                                                                   pipe.vae_decode]
    return [c.name for c in calls if getattr(c, "failed", False)]


def _moving_frames(rng: np.random.Generator, batch: int, resolution: int, count: int = 16) -> list[np.ndarray]:
    """Frames of a smooth picture with a square moving across it: smoothing blends and never skips."""
    ramp = np.linspace(0, 255, resolution, dtype=np.float32)
    base = np.stack([np.add.outer(ramp, ramp) / 2, np.tile(ramp, (resolution, 1)),
                     np.tile(ramp[:, None], (1, resolution))], axis=-1)
    side = max(4, resolution // 8)
    out = []
    for k in range(count):
        frame = base.copy()
        x = (k * side // 2) % (resolution - side)
        frame[x:x + side, x:x + side] = 255 - frame[x:x + side, x:x + side]
        out.append(np.repeat(frame[None].astype(np.uint8), batch, axis=0))
    return out


def _format(row: BenchRow) -> str:
    extra = ""
    if row.ratio_vs_diffusers is not None:
        extra += f" {row.ratio_vs_diffusers:6.2f}x"
    if row.unet_tflops is not None:
        extra += f" {row.unet_tflops:7.3g} TFLOP/s"
    if row.peak_memory_mb is not None:
        extra += f" peak {row.peak_memory_mb:7.0f} MB"
    if row.compile_s is not None:
        extra += f" (compiled in {row.compile_s:.1f} s)"
    return (f"{row.name:<48} vae={row.vae:<6} batch={row.batch:<3} steps={row.steps} "
            f"{row.ms_per_frame:9.2f} ms/frame {row.fps:8.2f} fps{extra}")
