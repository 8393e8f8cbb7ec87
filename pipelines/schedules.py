"""Per-frame sampler arithmetic, read off diffusers' own scheduler objects.

diffusers' schedulers keep a step counter inside the scheduler object, so one scheduler cannot serve frames
that sit at different timesteps in the same batch. Here each frame gets its own list of ``StepScalars``:
plain numbers computed once per (strength, steps) setting by asking the diffusers scheduler, which the frame
step then applies as (B, 1, 1, 1) tensors. Everything is expressed on the variance-preserving sample
x_t = alpha_t * x_0 + sigma_t * noise, which is what the UNet sees for both LCM and Euler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers import EulerDiscreteScheduler, LCMScheduler

from pipelines.errors import PipelineError


@dataclass(frozen=True)
class StepScalars:
    timestep: float  # what the UNet is given
    alpha: float  # sqrt(alpha_bar_t)
    sigma: float  # sqrt(1 - alpha_bar_t)
    c_skip: float  # LCM boundary condition; Euler: 0
    c_out: float  # LCM boundary condition; Euler: 1
    next_alpha: float  # scalars of the following step (1, 0 after the last step)
    next_sigma: float
    renoise: bool  # LCM: fresh noise between steps; Euler: deterministic (DDIM-like) move


def img2img_inference_steps(steps: int, strength: float) -> int:
    """diffusers' img2img runs int(N * strength) of N scheduled steps: the N that runs exactly ``steps``."""
    n = math.ceil(steps / strength - 1e-9)
    while int(n * strength) < steps:  # guards float rounding
        n += 1
    return n


def _img2img_start(scheduler: LCMScheduler | EulerDiscreteScheduler, steps: int, strength: float) -> int:
    """diffusers' img2img rule: schedule N steps, skip the first N - int(N * strength); returns that index."""
    n = img2img_inference_steps(steps, strength)
    scheduler.set_timesteps(n, device="cpu")
    return n - int(n * strength)


def check_schedule(scheduler: LCMScheduler | EulerDiscreteScheduler, *, steps: int, strength: float,
                   img2img_semantics: bool, original_inference_steps: int | None = None) -> None:
    """ValueError (one line) unless ``build_schedule`` can make ``steps`` steps at ``strength``; computes
    nothing on the scheduler, so a tiny strength cannot ask it for millions of timesteps.

    Each rule picks the steps out of a schedule of ``limit`` steps and keeps int(limit * strength) of them:
    LCM (its own rule) out of original_inference_steps; the img2img rule schedules N with int(N * strength)
    = steps, where N can be at most the LCM schedule's length or the number of training timesteps (Euler).
    """
    train = int(scheduler.config.num_train_timesteps)
    if isinstance(scheduler, LCMScheduler):
        limit = int(scheduler.config.original_inference_steps)  # the img2img rule sets N steps of it
        if not img2img_semantics and original_inference_steps is not None:
            limit = int(original_inference_steps)
        if limit > train:
            raise ValueError(f"original_inference_steps must be at most {train} for this model, got {limit}")
    else:
        limit = train
    if int(limit * strength) < steps:
        raise ValueError(
            f"num_inference_steps {steps} needs strength {steps / limit:.4g} or more "
            f"(at strength {strength:g} this model's schedule of {limit} steps keeps {int(limit * strength)}); "
            "raise strength or lower num_inference_steps")


def build_schedule(scheduler: LCMScheduler | EulerDiscreteScheduler, *, steps: int, strength: float,
                   img2img_semantics: bool, original_inference_steps: int | None = None) -> list[StepScalars]:
    """The scalars of each denoising step for one frame.

    ``img2img_semantics``: pick timesteps like diffusers' StableDiffusion(XL)Img2ImgPipeline (LCM-LoRA and
    Turbo families); otherwise like LatentConsistencyModelImg2ImgPipeline (strength passed to LCM's own
    set_timesteps).
    """
    check_schedule(scheduler, steps=steps, strength=strength, img2img_semantics=img2img_semantics,
                   original_inference_steps=original_inference_steps)
    if isinstance(scheduler, LCMScheduler):
        if img2img_semantics:
            start = _img2img_start(scheduler, steps, strength)  # sets the timesteps: call before reading them
            timesteps = scheduler.timesteps[start:]
        else:
            try:
                scheduler.set_timesteps(steps, device="cpu", original_inference_steps=original_inference_steps,
                                        strength=strength)
            except ValueError as exc:
                raise PipelineError(f"strength {strength} is too low for {steps} LCM steps: {exc}") from None
            timesteps = scheduler.timesteps
        alphas_cumprod = scheduler.alphas_cumprod.double()
        out = []
        for i, t in enumerate(timesteps.tolist()):
            ab = float(alphas_cumprod[int(t)])
            c_skip, c_out = scheduler.get_scalings_for_boundary_condition_discrete(int(t))
            if i + 1 < len(timesteps):
                ab_next = float(alphas_cumprod[int(timesteps[i + 1])])
                next_alpha, next_sigma = math.sqrt(ab_next), math.sqrt(1 - ab_next)
            else:
                next_alpha, next_sigma = 1.0, 0.0
            out.append(StepScalars(float(t), math.sqrt(ab), math.sqrt(1 - ab), float(c_skip), float(c_out),
                                   next_alpha, next_sigma, renoise=True))
        return out
    if isinstance(scheduler, EulerDiscreteScheduler):
        start = _img2img_start(scheduler, steps, strength)
        timesteps = scheduler.timesteps[start:].tolist()
        sigmas = scheduler.sigmas[start:].double().tolist()  # Euler's sigma is sqrt((1 - ab) / ab)

        def vp(s: float) -> tuple[float, float]:
            return 1 / math.sqrt(1 + s * s), s / math.sqrt(1 + s * s)

        out = []
        for i, t in enumerate(timesteps):
            alpha, sigma = vp(sigmas[i])
            next_alpha, next_sigma = vp(sigmas[i + 1])
            out.append(StepScalars(float(t), alpha, sigma, 0.0, 1.0, next_alpha, next_sigma, renoise=False))
        return out
    raise PipelineError(f"scheduler {type(scheduler).__name__} is not supported; use LCMScheduler or "
                        "EulerDiscreteScheduler")


def predict_original(prediction_type: str, sample: torch.Tensor, model_output: torch.Tensor,
                     alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_0 from the model's output, for the three parameterizations diffusers models use."""
    if prediction_type == "epsilon":
        return (sample - sigma * model_output) / alpha
    if prediction_type == "v_prediction":
        return alpha * sample - sigma * model_output
    if prediction_type == "sample":
        return model_output
    raise PipelineError(f"prediction_type {prediction_type!r} is not supported")
