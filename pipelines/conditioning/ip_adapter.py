"""A style image through IP-Adapter, on the live frame step, with diffusers' own machinery.

Loading is diffusers' ``load_ip_adapter`` (its state-dict layout, its image projection into the UNet's
``encoder_hid_proj``, its CLIP image encoder by ``from_pretrained``); the image embedding is diffusers'
``prepare_ip_adapter_image_embeds``, computed once per style change of a stream (on the worker thread, in
``update``), never per frame. The one change: diffusers' IP-Adapter attention processors take one scale for
the whole batch; ``FrameScaledIPAdapterProcessor`` takes one per frame, so frames of streams with different
style images, scales or none (scale 0, zero embedding) share one UNet call.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, IPAdapterAttnProcessor2_0

from pipelines.conditioning.style_image import StyleImage
from pipelines.config import IPAdapterConfig
from pipelines.errors import PipelineError


class FrameScales:
    """The per-frame IP-Adapter scales of the UNet call under way, shared by every IP-Adapter processor:
    (B,) float, one per row of the batch (both halves with classifier-free guidance)."""

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None


class FrameScaledIPAdapterProcessor(IPAdapterAttnProcessor2_0):
    """diffusers' ``IPAdapterAttnProcessor2_0`` (same weights, same arithmetic) with the image attention
    weighted per frame by ``scales.value`` instead of one float. One adapter; no masks."""

    def __init__(self, hidden_size: int, cross_attention_dim: int, num_tokens: list[int],
                 scales: FrameScales) -> None:
        super().__init__(hidden_size, cross_attention_dim, num_tokens=num_tokens, scale=1.0)
        self.scales = scales

    def __call__(self, attn: Attention, hidden_states: torch.Tensor,
                 encoder_hidden_states: Any = None, attention_mask: torch.Tensor | None = None,
                 temb: torch.Tensor | None = None, scale: float = 1.0,
                 ip_adapter_masks: torch.Tensor | None = None) -> torch.Tensor:
        residual = hidden_states
        encoder_hidden_states, ip_hidden_states = encoder_hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = encoder_hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)

        def merged(x: torch.Tensor) -> torch.Tensor:
            return x.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)

        query = heads(query)
        hidden_states = merged(F.scaled_dot_product_attention(query, heads(key), heads(value),
                                                              attn_mask=attention_mask, dropout_p=0.0,
                                                              is_causal=False))
        frame_scale = self.scales.value.to(hidden_states.dtype).view(-1, 1, 1)
        for ip_states, to_k_ip, to_v_ip in zip(ip_hidden_states, self.to_k_ip, self.to_v_ip, strict=True):
            ip_out = F.scaled_dot_product_attention(query, heads(to_k_ip(ip_states)), heads(to_v_ip(ip_states)),
                                                    attn_mask=None, dropout_p=0.0, is_causal=False)
            hidden_states = hidden_states + frame_scale * merged(ip_out)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def load_ip_adapter(pipe: Any, config: IPAdapterConfig, source: str, model_id: str | None) -> FrameScales:
    """Load the adapter (``source``: its hub id or folder, located) into ``pipe`` (a diffusers pipeline with
    IPAdapterMixin) through diffusers' ``load_ip_adapter``, then give its attention layers per-frame scales.
    PipelineError (one line) when the adapter cannot be loaded or does not fit the model."""
    try:
        pipe.load_ip_adapter(source, subfolder=config.subfolder, weight_name=config.weight_name,
                             image_encoder_folder=config.image_encoder_folder)
    except OSError as exc:
        raise PipelineError(f"could not load IP-Adapter {config.model_id!r} ({config.subfolder}/"
                            f"{config.weight_name}, image encoder {config.image_encoder_subfolder()}): "
                            f"{_one_line(exc)}") from None
    except (RuntimeError, ValueError, KeyError) as exc:  # shapes that do not match the UNet
        raise PipelineError(f"IP-Adapter {config.model_id!r} ({config.weight_name}) does not fit model "
                            f"{model_id!r}: {_one_line(exc)}; use the adapter made for this model's family "
                            "(SD 1.5 or SDXL)") from None
    if getattr(pipe, "image_encoder", None) is None:
        raise PipelineError(f"IP-Adapter {config.model_id!r} came without a CLIP image encoder "
                            f"({config.image_encoder_subfolder()}); set ip_adapter.image_encoder_folder")
    return use_frame_scales(pipe.unet)


def use_frame_scales(unet: Any) -> FrameScales:
    """Swap diffusers' IP-Adapter processors for per-frame-scale ones holding the same weights."""
    scales = FrameScales()
    processors = {}
    for name, proc in unet.attn_processors.items():
        if isinstance(proc, IPAdapterAttnProcessor2_0):
            if len(proc.num_tokens) != 1:
                raise PipelineError("one IP-Adapter at a time: the model has several loaded")
            new = FrameScaledIPAdapterProcessor(proc.hidden_size, proc.cross_attention_dim, proc.num_tokens,
                                                scales)
            new.load_state_dict(proc.state_dict())
            weight = proc.to_k_ip[0].weight
            processors[name] = new.to(weight.device, weight.dtype)
        else:
            processors[name] = proc
    unet.set_attn_processor(processors)
    return scales


def frame_scales(unet: Any) -> FrameScales | None:
    """The per-frame scales of a UNet that has an IP-Adapter loaded by ``load_ip_adapter``; else None."""
    for proc in (getattr(unet, "attn_processors", None) or {}).values():
        if isinstance(proc, FrameScaledIPAdapterProcessor):
            return proc.scales
    return None


class StyleEncoder:
    """Style image -> IP-Adapter image embeddings (cond, uncond), each (1, ...), by diffusers' own
    ``prepare_ip_adapter_image_embeds`` of the pipeline the adapter was loaded into."""

    KEEP = 8  # embeddings of recent pictures, by content: streams (sessions) with the same style share one

    def __init__(self, pipe: Any, device: torch.device, dtype: torch.dtype) -> None:
        self.pipe, self.device, self.dtype = pipe, device, dtype
        self._zeros: tuple[torch.Tensor, torch.Tensor] | None = None
        self._recent: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def encode(self, style: StyleImage) -> tuple[torch.Tensor, torch.Tensor]:
        """A style picture -> (cond, uncond) embeddings on the model's device and dtype."""
        found = self._recent.pop(style.digest, None)
        if found is None:
            found = self._encode(style.image)
        self._recent[style.digest] = found  # the most recent last
        while len(self._recent) > self.KEEP:
            self._recent.pop(next(iter(self._recent)))
        return found

    @torch.no_grad()
    def _encode(self, image: Any) -> tuple[torch.Tensor, torch.Tensor]:
        (both,) = self.pipe.prepare_ip_adapter_image_embeds(image, None, self.device, 1, True)
        uncond, cond = both.to(self.device, self.dtype).chunk(2)
        return cond, uncond

    def none(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The embedding of a stream without a style: zeros of the right shape (its scale is 0)."""
        if self._zeros is None:
            from PIL import Image

            cond, _ = self._encode(Image.new("RGB", (64, 64)))
            self._zeros = (torch.zeros_like(cond), torch.zeros_like(cond))
        return self._zeros
