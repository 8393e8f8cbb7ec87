"""Presets -> diffusers components, loaded for real with ``from_pretrained`` from the hub or a local folder.

Every failure a user can fix (offline without the model cached, a folder that is not a diffusers model,
CUDA asked for but absent) becomes a PipelineError with one line saying what to do.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipelines.config import PipelineConfig
from pipelines.errors import PipelineError
from pipelines.quiet import quiet_libraries

log = logging.getLogger(__name__)

HUB_HOST = "huggingface.co"


@dataclass
class ModelComponents:
    """What the frame step needs. ``prompt_pipe`` is the diffusers pipeline whose ``encode_prompt`` (and
    guidance embedding) the frame step uses, so prompts are encoded exactly as diffusers does."""

    unet: Any
    vae: Any
    scheduler: Any
    prompt_pipe: Any | None
    family: str
    sdxl: bool
    device: torch.device
    dtype: torch.dtype
    controlnets: list[Any] = field(default_factory=list)  # ControlNetModels, in the config's order
    depth: Any = None  # the depth estimator of 'depth' control images (pipelines/conditioning)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PipelineError(f"unknown device {name!r}; use cuda, cuda:N, cpu or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PipelineError(
            f"CUDA was asked for (--device {name}) but this torch ({torch.__version__}) sees no CUDA GPU; "
            "use --device cpu, or install a CUDA build of torch on a machine with an NVIDIA GPU")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise PipelineError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[name]
    if dtype == torch.float16 and device.type == "cpu":
        raise PipelineError("float16 is not supported on CPU; use --dtype float32 (default) or bfloat16")
    return dtype


def hub_reachable(timeout: float = 3.0) -> bool:
    """False when HF_HUB_OFFLINE is set or the hub cannot be reached; checked before the hub client's
    long retries so an offline user gets an answer in seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", f"https://{HUB_HOST}")
    host = endpoint.split("://", 1)[-1].split("/", 1)[0]
    name, _, port = host.partition(":")
    try:
        with socket.create_connection((name, int(port or 443)), timeout=timeout):
            return True
    except OSError:
        return False


def _is_folder(model_id: str) -> bool:
    return Path(model_id).expanduser().exists() or model_id.startswith((".", "/", "~"))


def _in_cache(model_id: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(model_id, filename), str)


# What each of a config's hub ids must hold: the file that shows it is in the local cache.
_MODEL_FILES = (("model_id", "model_index.json"), ("lora_id", "pytorch_lora_weights.safetensors"),
                ("vae_id", "config.json"))


def check_downloaded(config: PipelineConfig) -> None:
    """Offline, every hub model the config needs and the cache lacks, named at once with one command that
    fetches them all: one trip to a machine with network, not one per model."""
    from pipelines.conditioning.loading import needed_models

    needed = [(key, getattr(config, key), filename, "") for key, filename in _MODEL_FILES]
    needed += [(key, model_id, filename, "") for key, model_id, filename in needed_models(config)]
    if config.ip_adapter is not None:  # the adapter's weights and its image encoder: only those files
        ipa = config.ip_adapter
        weights, encoder = ipa.weights_path(), ipa.image_encoder_subfolder()
        only = f" --include {weights} '{encoder}/*'"
        needed += [("ip_adapter.model_id", ipa.model_id, weights, only),
                   ("ip_adapter.model_id", ipa.model_id, f"{encoder}/config.json", only)]
    missing = list(dict.fromkeys((key, model_id, only) for key, model_id, filename, only in needed
                                 if model_id and not _is_folder(model_id) and not _in_cache(model_id, filename)))
    if not missing or hub_reachable():
        return
    keys = list(dict.fromkeys(key for key, _, _ in missing))
    keys_text = " and ".join([", ".join(keys[:-1]), keys[-1]] if len(keys) > 1 else keys)
    raise PipelineError(
        f"offline (the Hugging Face hub cannot be reached) and not in the local cache: "
        f"{', '.join(model_id for _, model_id, _ in missing)}; where there is network run "
        f"`{' && '.join(f'hf download {model_id}{only}' for _, model_id, only in missing)}` and copy "
        f"~/.cache/huggingface here, or set {keys_text} to {'a local folder' if len(keys) == 1 else 'local folders'} "
        f"(--config FILE with {missing[0][0]}: /path/to/folder)")


def locate(model_id: str, what: str, required: tuple[str, ...] = ()) -> str:
    """Check a hub id or folder before diffusers tries it; return what to pass to from_pretrained."""
    path = Path(model_id).expanduser()
    if _is_folder(model_id):
        if not path.is_dir():
            raise PipelineError(f"{what} folder {model_id} does not exist")
        missing = [name for name in required if not (path / name).exists()]
        if missing:
            raise PipelineError(
                f"{model_id} is not a diffusers {what}: missing {', '.join(missing)} (save one with "
                "save_pretrained, or download a hub model with `hf download <id> --local-dir <folder>`)")
        return str(path)
    if _in_cache(model_id, required[0] if required else "config.json"):
        return model_id
    if not hub_reachable():
        raise PipelineError(
            f"{what} {model_id!r} is not in the local Hugging Face cache and the hub cannot be reached "
            f"(offline); download it where there is network with `hf download {model_id}`, "
            "or set model_id (vae_id, lora_id) to a local folder")
    return model_id


def _load_prompt_pipe(config: PipelineConfig, dtype: torch.dtype) -> Any:
    from diffusers import (
        LatentConsistencyModelImg2ImgPipeline,
        StableDiffusionImg2ImgPipeline,
        StableDiffusionXLImg2ImgPipeline,
    )

    if config.sdxl:
        cls = StableDiffusionXLImg2ImgPipeline
    elif config.family == "lcm":
        cls = LatentConsistencyModelImg2ImgPipeline
    else:
        cls = StableDiffusionImg2ImgPipeline
    source = locate(config.model_id, "model", ("model_index.json", "unet", "scheduler"))
    kwargs: dict[str, Any] = {"torch_dtype": dtype}
    if not config.sdxl:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        pipe = cls.from_pretrained(source, **kwargs)
    except OSError as exc:
        raise PipelineError(f"could not load model {config.model_id!r}: {str(exc).splitlines()[0]}") from None
    if config.lora_id:
        lora = locate(config.lora_id, "LoRA")
        try:
            pipe.load_lora_weights(lora)
        except (OSError, ValueError) as exc:
            raise PipelineError(f"could not load LoRA {config.lora_id!r}: {str(exc).splitlines()[0]}") from None
        pipe.fuse_lora()
        pipe.unload_lora_weights()  # the fused weights stay; the adapter layers go
    return pipe


def _swap_scheduler(pipe: Any, family: str) -> Any:
    from diffusers import EulerDiscreteScheduler, LCMScheduler

    if family == "lcm-lora" and not isinstance(pipe.scheduler, LCMScheduler):
        return LCMScheduler.from_config(pipe.scheduler.config)
    if family == "turbo" and not isinstance(pipe.scheduler, EulerDiscreteScheduler):
        return EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    return pipe.scheduler


def load_components(config: PipelineConfig) -> ModelComponents:
    quiet_libraries()
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    if config.family == "tiny":
        from diffusers import LatentConsistencyModelImg2ImgPipeline

        from pipelines.tiny import tiny_components

        pipe = LatentConsistencyModelImg2ImgPipeline(**tiny_components("lcm"))
    elif config.family == "random-sd15":
        from diffusers import LatentConsistencyModelImg2ImgPipeline

        from pipelines.random_models import random_components

        parts = random_components("sd15", dtype=dtype)
        parts["vae"] = parts.pop("taesd")  # the real-time setup: a TAESD-size autoencoder
        pipe = LatentConsistencyModelImg2ImgPipeline(**parts)
    elif config.family == "analytic":
        from pipelines.analytic import build_analytic_components

        parts = build_analytic_components(config.width, config.height)
        return ModelComponents(parts["unet"].to(device, dtype), parts["vae"].to(device, dtype),
                               parts["scheduler"], None, "analytic", False, device, dtype)
    else:
        check_downloaded(config)
        pipe = _load_prompt_pipe(config, dtype)
    vae = pipe.vae
    if config.vae_id:
        from diffusers import AutoencoderTiny

        source = locate(config.vae_id, "tiny autoencoder", ("config.json",))
        try:
            vae = AutoencoderTiny.from_pretrained(source, torch_dtype=dtype)
        except OSError as exc:
            raise PipelineError(f"could not load {config.vae_id!r}: {str(exc).splitlines()[0]}") from None
        pipe.vae = vae
    if config.ip_adapter is not None:
        from pipelines.conditioning.ip_adapter import load_ip_adapter

        ipa = config.ip_adapter
        source = locate(ipa.model_id, "IP-Adapter", (ipa.weights_path(), f"{ipa.image_encoder_subfolder()}/config.json"))
        load_ip_adapter(pipe, ipa, source, config.model_id)
    pipe.to(device)
    if any(p.dtype != dtype for p in pipe.unet.parameters()):
        pipe.to(dtype=dtype)
    scheduler = _swap_scheduler(pipe, config.family)
    pipe.scheduler = scheduler
    from pipelines.conditioning.loading import load_controlnets, load_depth

    return ModelComponents(pipe.unet.eval(), pipe.vae.eval(), scheduler, pipe, config.family, config.sdxl,
                           device, dtype, load_controlnets(config, pipe.unet, device, dtype),
                           load_depth(config, device, dtype))
