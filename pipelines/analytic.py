"""A deterministic stand-in for an LCM model whose outputs are real pictures (no weights to download).

- ``AnalyticAutoencoder``: pixel-space "VAE": encode = average-pool the [-1, 1] image by 8 into 4 latent
  channels (R, G, B, luma), decode = bilinear upsampling of the colour channels.
- ``AnalyticDenoiser``: a UNet stand-in predicting epsilon. It estimates the clean latent from the noisy
  one with a Wiener filter under a natural-image (1/f^2) prior, then stylizes that estimate (warm colour
  shift, soft posterization) and returns the noise that implies it. Like a real model it cannot tell all
  of the noise from the picture: fresh noise per frame makes the output flicker, fixed noise much less.

``build_analytic_components(width, height)`` gives ``unet``, ``vae`` and an ``LCMScheduler`` that plug into
the same frame step as a diffusers model.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import LCMScheduler
from diffusers.configuration_utils import FrozenDict

LATENT_CHANNELS = 4
DOWNSCALE = 8
# Pooled [-1, 1] pictures have a standard deviation near 0.25; this gain brings the latents to about unit
# variance like SD's scaled latents, so each timestep leaves the same signal-to-noise ratio as in SD.
LATENT_GAIN = 4.0
# Prior of the denoiser: per-pixel latent variance and the knee of its 1/(f^2 + f0^2) power spectrum
# (cycles per latent pixel). CONFIDENCE < 1 makes it keep more detail than the optimal filter would,
# like a trained model that is sure of itself (sharper, and more sensitive to the noise).
# The prior lives in a decorrelated colour basis: brightness, two colour differences, and the luma channel's
# disagreement with the colour channels (zero in every clean latent, so its noise is removed entirely).
COLOUR_BASIS = ((1, 1, 1, 1), (1, -1, 0, 0), (1, 1, -2, 0), (1, 1, 1, -3))
PRIOR_VARIANCE = (3.5, 0.7, 0.7, 2e-3)
PRIOR_KNEE = 0.02
CONFIDENCE = 0.5
# The style: a warm colour matrix, then posterization into about POSTERIZE_LEVELS bands per unit.
WARM = ((1.10, 0.08, -0.05), (0.02, 0.98, 0.0), (-0.06, 0.0, 0.85))
WARM_OFFSET = (0.05, 0.0, -0.08)
POSTERIZE_LEVELS = 2.5
POSTERIZE_AMOUNT = 0.85


class _Module(torch.nn.Module):
    """A module with diffusers-like ``config``, ``dtype`` and ``device`` and no weights."""

    def __init__(self, **config: Any) -> None:
        super().__init__()
        self.config = FrozenDict(config)
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return self._anchor.dtype

    @property
    def device(self) -> torch.device:
        return self._anchor.device


class AnalyticAutoencoder(_Module):
    def __init__(self) -> None:
        super().__init__(latent_channels=LATENT_CHANNELS, scaling_factor=1.0, shift_factor=None,
                         in_channels=3, out_channels=3, block_out_channels=(8, 8, 8, 8),
                         force_upcast=False)

    def encode(self, image: torch.Tensor, return_dict: bool = True) -> SimpleNamespace:
        """(N, 3, H, W) in [-1, 1] -> ``.latents`` (N, 4, H/8, W/8)."""
        rgb = F.avg_pool2d(image, DOWNSCALE) * LATENT_GAIN
        latents = torch.cat([rgb, rgb.mean(1, keepdim=True)], dim=1)
        return SimpleNamespace(latents=latents) if return_dict else (latents,)

    def decode(self, latents: torch.Tensor, return_dict: bool = True, **_: Any) -> SimpleNamespace:
        """(N, 4, h, w) -> ``.sample`` (N, 3, 8h, 8w), roughly [-1, 1]."""
        latents = latents / LATENT_GAIN
        rgb = latents[:, :3]
        # The luma channel was stylized too: let it correct the colour channels' brightness.
        rgb = rgb + (latents[:, 3:4] - rgb.mean(1, keepdim=True)) * 0.5
        sample = F.interpolate(rgb, scale_factor=DOWNSCALE, mode="bilinear", align_corners=False)
        return SimpleNamespace(sample=sample) if return_dict else (sample,)


class AnalyticDenoiser(_Module):
    """UNet stand-in: ``(sample, timestep, ...) -> .sample`` = predicted noise (epsilon)."""

    def __init__(self, alphas_cumprod: torch.Tensor, sample_size: int = 64) -> None:
        super().__init__(in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, sample_size=sample_size,
                         time_cond_proj_dim=None, cross_attention_dim=32, addition_embed_type=None)
        self._alphas_cumprod = alphas_cumprod.detach().to(torch.float64).cpu()
        self._filters: dict[tuple[int, int, int, str], torch.Tensor] = {}

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int, encoder_hidden_states: Any = None,
                timestep_cond: Any = None, added_cond_kwargs: Any = None, return_dict: bool = True,
                **_: Any) -> SimpleNamespace:
        x_t = sample.float()
        steps = torch.as_tensor(timestep).reshape(-1).long().cpu()
        steps = steps.expand(x_t.shape[0]) if steps.numel() == 1 else steps
        alphas = self._alphas_cumprod[steps].to(device=x_t.device, dtype=torch.float32).view(-1, 1, 1, 1)
        x0 = torch.stack([self._denoise(x_t[i], int(steps[i])) for i in range(x_t.shape[0])])
        x0 = stylize(x0)
        eps = (x_t - alphas.sqrt() * x0) / (1 - alphas).sqrt()
        eps = eps.to(sample.dtype)
        return SimpleNamespace(sample=eps) if return_dict else (eps,)

    def _denoise(self, x_t: torch.Tensor, step: int) -> torch.Tensor:
        """Wiener estimate of x0 from x_t (C, h, w) at one timestep."""
        h, w = x_t.shape[-2:]
        key = (h, w, step, str(x_t.device))
        gain = self._filters.get(key)
        if gain is None:
            gain = self._wiener_gain(h, w, float(self._alphas_cumprod[step])).to(x_t.device)
            self._filters[key] = gain
        basis = _colour_basis(x_t.device)
        spectrum = torch.fft.rfft2(torch.einsum("kc,chw->khw", basis, x_t), norm="ortho")
        x0 = torch.fft.irfft2(spectrum * gain, s=(h, w), norm="ortho")
        return torch.einsum("kc,khw->chw", basis, x0)

    @staticmethod
    def _wiener_gain(h: int, w: int, alpha: float) -> torch.Tensor:
        fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
        fx = torch.fft.rfftfreq(w, dtype=torch.float64)[None, :]
        shape = 1.0 / (fx**2 + fy**2 + PRIOR_KNEE**2)
        full_mean = (shape.sum() * 2 - shape[:, 0].sum()) / (h * w)  # rfft holds half the spectrum
        variance = torch.tensor(PRIOR_VARIANCE, dtype=torch.float64).view(-1, 1, 1)
        power = variance * (shape / full_mean)
        noise = (1.0 - alpha) * CONFIDENCE
        return (math.sqrt(alpha) * power / (alpha * power + noise)).float()


def _colour_basis(device: torch.device) -> torch.Tensor:
    basis = torch.tensor(COLOUR_BASIS, dtype=torch.float32, device=device)
    return basis / basis.norm(dim=1, keepdim=True)


def stylize(x0: torch.Tensor) -> torch.Tensor:
    """The look: warm colour shift and soft posterization of a latent (N, 4, h, w); smooth in x0."""
    x0 = x0 / LATENT_GAIN  # style in picture units ([-1, 1])
    matrix = torch.tensor(WARM, dtype=x0.dtype, device=x0.device)
    offset = torch.tensor(WARM_OFFSET, dtype=x0.dtype, device=x0.device).view(1, 3, 1, 1)
    rgb = torch.einsum("oc,nchw->nohw", matrix, x0[:, :3]) + offset
    luma = x0[:, 3:4]
    bands = 2 * math.pi * POSTERIZE_LEVELS
    posterize = lambda v: v - POSTERIZE_AMOUNT * torch.sin(bands * v) / bands  # noqa: E731
    return torch.cat([posterize(rgb), posterize(luma)], dim=1).clamp(-1.2, 1.2) * LATENT_GAIN


def build_analytic_components(width: int, height: int) -> dict[str, Any]:
    """``unet``, ``vae`` and ``scheduler`` (SD 1.5's LCM schedule) for a working size of width x height."""
    if width % DOWNSCALE or height % DOWNSCALE:
        raise ValueError(f"analytic model needs width and height divisible by {DOWNSCALE}, got {width}x{height}")
    scheduler = LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                             clip_sample=False, set_alpha_to_one=True, timestep_scaling=10.0)
    unet = AnalyticDenoiser(scheduler.alphas_cumprod, sample_size=max(width, height) // DOWNSCALE)
    return {"unet": unet, "vae": AnalyticAutoencoder(), "scheduler": scheduler}
