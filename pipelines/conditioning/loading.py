"""ControlNets and the depth estimator, loaded for real with ``from_pretrained`` (hub id or local folder)
next to the base model; a ControlNet of another family than the base model is refused in one line."""

from __future__ import annotations

from typing import Any

import torch

from pipelines.config import PipelineConfig
from pipelines.errors import PipelineError


def needed_models(config: PipelineConfig) -> list[tuple[str, str, str]]:
    """(setting, hub id or folder, a file that shows it is downloaded) of every conditioning model the
    config needs: for pipelines/loading.py's offline check, which names them all at once."""
    needed = [(f"controlnets[{i}].model_id", net.model_id, "config.json") for i, net in enumerate(config.controlnets)]
    if uses_depth(config):
        needed.append(("depth_model_id", config.depth_model_id, "config.json"))
    return needed


def uses_depth(config: PipelineConfig) -> bool:
    return any(net.type == "depth" for net in config.controlnets)


def family_of(model_config: Any) -> str:
    """SDXL, SD 1.5 or SD 2 by the UNet's (or ControlNet's) conditioning, as users name them."""
    if getattr(model_config, "addition_embed_type", None) == "text_time" or (
            isinstance(model_config, dict) and model_config.get("addition_embed_type") == "text_time"):
        return "SDXL"
    dim = model_config.get("cross_attention_dim") if isinstance(model_config, dict) else getattr(
        model_config, "cross_attention_dim", None)
    return {768: "SD 1.5", 1024: "SD 2"}.get(dim, f"text width {dim}")


def check_family(net_id: str, net_config: dict, unet: Any) -> None:
    """PipelineError (one line) unless the ControlNet was made for the base model's architecture."""
    unet_config = unet.config
    base, net = family_of(unet_config), family_of(net_config)
    same = (net_config.get("addition_embed_type") == getattr(unet_config, "addition_embed_type", None)
            and net_config.get("cross_attention_dim") == unet_config.cross_attention_dim
            and list(net_config.get("block_out_channels", [])) == list(unet_config.block_out_channels))
    if not same:
        if base == net:  # same family by name, other widths (e.g. a tiny test model)
            base, net = f"{base} (blocks {list(unet_config.block_out_channels)})", \
                f"{net} (blocks {list(net_config.get('block_out_channels', []))})"
        raise PipelineError(f"ControlNet {net_id!r} is for {net} models but the base model is {base}; "
                            "use a ControlNet made for the base model's family")


def load_controlnets(config: PipelineConfig, unet: Any, device: torch.device, dtype: torch.dtype) -> list[Any]:
    from diffusers import ControlNetModel

    from pipelines.loading import locate

    nets = []
    for spec in config.controlnets:
        source = locate(spec.model_id, "ControlNet", ("config.json",))
        try:
            net_config = ControlNetModel.load_config(source)
        except (OSError, ValueError) as exc:
            raise PipelineError(f"could not load ControlNet {spec.model_id!r}: {str(exc).splitlines()[0]}") \
                from None
        if net_config.get("_class_name") not in (None, "ControlNetModel"):
            raise PipelineError(f"{spec.model_id!r} is a {net_config.get('_class_name')}, not a ControlNetModel")
        check_family(spec.model_id, net_config, unet)
        try:
            net = ControlNetModel.from_pretrained(source, torch_dtype=dtype)
        except (OSError, ValueError) as exc:
            raise PipelineError(f"could not load ControlNet {spec.model_id!r}: {str(exc).splitlines()[0]}") \
                from None
        nets.append(net.to(device).eval())
    return nets


def load_depth(config: PipelineConfig, device: torch.device, dtype: torch.dtype) -> Any:
    """The depth estimator when a ControlNet is given depth images, else None."""
    if not uses_depth(config):
        return None
    from pipelines.conditioning.control_images import load_depth_estimator
    from pipelines.loading import locate

    source = locate(config.depth_model_id, "depth estimator", ("config.json",))
    try:
        return load_depth_estimator(source, side=config.depth_resolution, device=device, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise PipelineError(f"could not load depth estimator {config.depth_model_id!r}: "
                            f"{str(exc).splitlines()[0]}") from None
