"""Time the project's frame step against diffusers' LatentConsistencyModelImg2ImgPipeline, in one process,
on the same random-weight components (no download), the same prompt embeddings, steps and strength."""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from pipelines.compiled import enable_compile, should_compile
from pipelines.config import PipelineConfig
from pipelines.lcm_img2img import StreamPipeline
from pipelines.loading import ModelComponents, resolve_device, resolve_dtype
from pipelines.random_models import random_components


@dataclass
class BenchRow:
    name: str
    vae: str
    batch: int
    steps: int
    ms_per_frame: float
    fps: float
    ratio_vs_diffusers: float | None = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, *, warmup: int, iterations: int) -> float:
    """Median seconds of one call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iterations):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_bench(*, size: str, device_name: str, dtype_name: str, resolution: int, batches: list[int],
              steps_list: list[int], vaes: list[str], strength: float, warmup: int, iterations: int,
              compile_setting: str = "auto", log: Callable[[str], None] = print) -> dict:
    from diffusers import LatentConsistencyModelImg2ImgPipeline

    device = resolve_device(device_name)
    dtype = resolve_dtype(dtype_name, device)
    parts = random_components(size, dtype=dtype)
    taesd = parts.pop("taesd")
    full_vae = parts["vae"]
    reference = LatentConsistencyModelImg2ImgPipeline(**parts).to(device)
    reference.set_progress_bar_config(disable=True)
    prompt = "an oil painting of a city at night"
    embeds, _ = reference.encode_prompt(prompt, device, 1, False)
    rng = np.random.default_rng(0)
    rows: list[BenchRow] = []
    for vae_name in vaes:
        reference.vae = (taesd if vae_name == "taesd" else full_vae).to(device)
        baselines: dict[int, BenchRow] = {}
        for steps in steps_list:
            frame01 = rng.random((1, resolution, resolution, 3), dtype=np.float32)
            generator = torch.Generator("cpu").manual_seed(0)

            def call_reference(steps: int = steps, image: np.ndarray = frame01,
                               generator: torch.Generator = generator) -> object:
                return reference(prompt_embeds=embeds, image=image, num_inference_steps=steps,
                                 strength=strength, guidance_scale=8.0, output_type="np",
                                 generator=generator)

            seconds = time_call(call_reference, device, warmup=warmup, iterations=iterations)
            baselines[steps] = BenchRow("diffusers LatentConsistencyModelImg2ImgPipeline", vae_name, 1, steps,
                                        seconds * 1000, 1 / seconds, 1.0)
            rows.append(baselines[steps])
            log(_format(baselines[steps]))
        config = PipelineConfig(family="tiny", width=resolution, height=resolution, strength=strength,
                                guidance_scale=8.0, prompt=prompt, device=str(device), dtype=dtype_name,
                                smoothing={"enabled": False})
        components = ModelComponents(reference.unet, reference.vae, reference.scheduler, reference, "lcm",
                                     False, device, dtype)
        ours = StreamPipeline(components, config)
        kinds = ["eager"]
        if should_compile(compile_setting, device):
            kinds.append("compiled")
        for kind in kinds:
            if kind == "compiled":
                seconds = enable_compile(ours, batches, progress=log)
                log(f"compiled for batches {batches} in {seconds:.1f} s")
            for steps in steps_list:
                ours.config = config.model_copy(update={"num_inference_steps": steps})
                ours.streams.clear()  # streams take their settings from the config when first seen
                for batch in batches:
                    frames = rng.integers(0, 256, (batch, resolution, resolution, 3), dtype=np.uint8)
                    ids = [f"s{i}" for i in range(batch)]
                    seconds = time_call(lambda f=frames, i=ids, p=ours: p(f, i), device, warmup=warmup,
                                        iterations=iterations)
                    row = BenchRow(f"streamer frame step ({kind})", vae_name, batch, steps,
                                   seconds * 1000 / batch, batch / seconds)
                    row.ratio_vs_diffusers = baselines[steps].ms_per_frame / row.ms_per_frame
                    rows.append(row)
                    log(_format(row))
    return {
        "machine": {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
            or platform.machine(),
            "cpu_count": __import__("os").cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "model_size": size, "resolution": resolution, "dtype": str(dtype).removeprefix("torch."),
        "strength": strength, "iterations": iterations,
        "rows": [asdict(r) | {"ms_per_frame": round(r.ms_per_frame, 3), "fps": round(r.fps, 3),
                              "ratio_vs_diffusers": None if r.ratio_vs_diffusers is None
                              else round(r.ratio_vs_diffusers, 3)} for r in rows],
    }


def _format(row: BenchRow) -> str:
    ratio = "" if row.ratio_vs_diffusers is None else f"{row.ratio_vs_diffusers:6.2f}x"
    return (f"{row.name:<48} vae={row.vae:<6} batch={row.batch:<3} steps={row.steps} "
            f"{row.ms_per_frame:9.2f} ms/frame {row.fps:8.2f} fps {ratio}")


def write_json(result: dict, path: Path) -> None:
    if path.parent and not path.parent.exists():
        raise ValueError(f"cannot write {path}: folder {path.parent} does not exist")
    path.write_text(json.dumps(result, indent=2) + "\n")


def print_table(result: dict, stream=sys.stdout) -> None:
    m = result["machine"]
    print(f"# {result['model_size']} components, {result['resolution']}x{result['resolution']}, "
          f"{result['dtype']}, on {m['device']} ({m['cpu_count']} CPUs), torch {m['torch']}", file=stream)
    print(f"{'name':<48} {'vae':<6} {'batch':>5} {'steps':>5} {'ms/frame':>10} {'fps':>8} {'vs diffusers':>12}",
          file=stream)
    for r in result["rows"]:
        ratio = "" if r["ratio_vs_diffusers"] is None else f"{r['ratio_vs_diffusers']:.2f}x"
        print(f"{r['name']:<48} {r['vae']:<6} {r['batch']:>5} {r['steps']:>5} {r['ms_per_frame']:>10.2f} "
              f"{r['fps']:>8.2f} {ratio:>12}", file=stream)
