"""StreamSmoother on its own tensors: still -> strong blend, moving -> little, cut -> reset, skips bounded,
off -> identity; and the analytic model behaves like a real one (noise-sensitive, deterministic)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipelines.analytic import build_analytic_components
from pipelines.config import SmoothingConfig
from pipelines.smoothing import StreamSmoother, _warp


def texture(size: int = 128, seed: int = 0) -> torch.Tensor:
    """A smooth random picture (3, size, size) in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(1, 3, size // 16, size // 16, generator=g) * 2 - 1
    return F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False)[0].clamp(-1, 1)


def latent_of(image: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(image[None], 8)[0]


def run_frame(smoother: StreamSmoother, image: torch.Tensor) -> tuple[bool, torch.Tensor, torch.Tensor]:
    skipped = smoother.check_input(image)
    latent = latent_of(image)
    blended = smoother.blend_input(latent)
    smoother.blend_output(blended)
    smoother.remember_output(image)
    return skipped, latent, blended


def test_off_is_identity_and_free() -> None:
    smoother = StreamSmoother(SmoothingConfig(enabled=False))
    image = texture()
    for _ in range(3):
        assert smoother.check_input(image) is False
        latent = latent_of(image)
        assert smoother.blend_input(latent) is latent
        assert smoother.blend_output(latent) is latent
        smoother.remember_output(image)
        assert smoother.previous_output() is None


def test_still_input_blends_with_the_previous_latent_at_input_blend() -> None:
    config = SmoothingConfig(max_skip=0, input_blend=0.6, output_blend=0.5)
    smoother = StreamSmoother(config)
    image = texture()
    run_frame(smoother, image)
    first_input = smoother._previous_input
    noisy = image + 0.01 * torch.randn(image.shape, generator=torch.Generator().manual_seed(1))
    assert smoother.check_input(noisy) is False
    latent = latent_of(noisy)
    blended = smoother.blend_input(latent)
    weight = ((blended - latent) / (first_input - latent)).median()
    assert abs(float(weight) - 0.6) < 0.05
    denoised = latent + 0.1
    out = smoother.blend_output(denoised)
    assert torch.allclose(out, torch.lerp(denoised, first_input, 0.5), atol=0.02)


def test_moving_region_barely_blends_and_still_region_does() -> None:
    smoother = StreamSmoother(SmoothingConfig(max_skip=0))
    background = torch.zeros(3, 128, 128)
    first = background.clone()
    first[:, 0:32, 0:32] = 1.0
    second = background.clone()
    second[:, 0:32, 32:64] = 1.0  # the square jumped right
    run_frame(smoother, first)
    smoother.check_input(second)
    weights = smoother.blend_weights((16, 16), 0.6)[0]
    assert float(weights[0:4, 0:8].max()) < 0.05  # where the square was and is: moving
    assert float(weights[10:, 10:].min()) > 0.55  # far from it: still, full blend


def test_scene_cut_resets_state_on_the_cut_frame() -> None:
    # Two unrelated natural scenes differ by about 0.15 (mean, 0-1); a fast pan by about 0.02.
    smoother = StreamSmoother(SmoothingConfig(max_skip=0, scene_cut_threshold=0.12))
    first, second = texture(seed=0), texture(seed=5)
    run_frame(smoother, first)
    run_frame(smoother, first)
    assert smoother.check_input(second) is False
    assert smoother.scene_cuts == 1
    latent = latent_of(second)
    assert torch.equal(smoother.blend_input(latent), latent)  # nothing of the old scene left
    assert smoother.previous_output() is None


def test_skips_at_most_max_skip_in_a_row() -> None:
    smoother = StreamSmoother(SmoothingConfig(max_skip=2))
    image = texture()
    decisions = []
    for _ in range(9):
        skipped = smoother.check_input(image)
        decisions.append(skipped)
        if not skipped:
            latent = latent_of(image)
            smoother.blend_output(smoother.blend_input(latent))
            smoother.remember_output(image)
    # First frame: nothing to re-emit. Then two skips, one model run, two skips, ...
    assert decisions == [False, True, True, False, True, True, False, True, True]
    assert smoother.previous_output() is image


def test_changed_input_is_not_skipped() -> None:
    smoother = StreamSmoother(SmoothingConfig(max_skip=5, skip_similarity=0.995))
    run_frame(smoother, texture())
    assert smoother.check_input(texture() + 0.1) is False


def test_config_replaced_live_switches_off() -> None:
    smoother = StreamSmoother(SmoothingConfig(max_skip=0))
    run_frame(smoother, texture())
    smoother.config = SmoothingConfig(enabled=False)
    assert smoother.check_input(texture()) is False
    latent = latent_of(texture())
    assert smoother.blend_input(latent) is latent
    smoother.config = SmoothingConfig(max_skip=0)  # back on: starts fresh, no stale latents
    smoother.check_input(texture())
    assert smoother.blend_input(latent) is latent


def test_half_precision_latents_keep_their_dtype() -> None:
    smoother = StreamSmoother(SmoothingConfig(max_skip=0))
    image = texture().half()
    for _ in range(2):
        smoother.check_input(image)
        out = smoother.blend_input(latent_of(image.float()).half())
    assert out.dtype == torch.float16


def test_warp_moves_content_by_the_flow() -> None:
    image = texture(64)
    flow = torch.zeros(64, 64, 2)
    flow[..., 0] = 3.0  # each pixel comes from 3 pixels to its right
    warped = _warp(image, flow)
    assert torch.allclose(warped[:, :, :-3], image[:, :, 3:], atol=1e-5)


def test_motion_compensation_blends_a_panning_picture() -> None:
    big = texture(320, seed=3)
    frames = [big[:, 32:288, 32 - 8 * i:288 - 8 * i] for i in range(2)]  # content moves 8 px right
    plain = StreamSmoother(SmoothingConfig(max_skip=0, scene_cut_threshold=0.5))
    compensated = StreamSmoother(SmoothingConfig(max_skip=0, scene_cut_threshold=0.5, motion_compensation=True))
    for frame in frames:
        plain.check_input(frame)
        compensated.check_input(frame)
    inner = (slice(4, -4), slice(4, -4))
    assert float(plain.blend_weights((32, 32), 0.6)[0][inner].mean()) < 0.3
    assert float(compensated.blend_weights((32, 32), 0.6)[0][inner].mean()) > 0.4


def test_analytic_model_is_deterministic_and_noise_sensitive() -> None:
    parts = build_analytic_components(64, 64)
    unet, vae, scheduler = parts["unet"], parts["vae"], parts["scheduler"]
    assert unet.config.time_cond_proj_dim is None and vae.config.scaling_factor == 1.0
    assert unet.config.in_channels == vae.config.latent_channels == 4
    image = texture(64)[None]
    clean = vae.encode(image).latents
    assert clean.shape == (1, 4, 8, 8)
    assert vae.decode(clean).sample.shape == (1, 3, 64, 64)
    alpha = scheduler.alphas_cumprod[499]

    def x0_from(seed: int) -> torch.Tensor:
        noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed))
        noisy = alpha.sqrt() * clean + (1 - alpha).sqrt() * noise
        eps = unet(noisy, torch.tensor(499), encoder_hidden_states=None).sample
        return (noisy - (1 - alpha).sqrt() * eps) / alpha.sqrt()

    same, again, other = x0_from(0), x0_from(0), x0_from(1)
    assert torch.equal(same, again)
    fresh_change = float((same - other).abs().mean())
    assert fresh_change > 0.05  # a different noise draw changes the picture
    # ...but the picture is still the input's: closer to it than to another picture.
    other_clean = vae.encode(texture(64, seed=9)[None]).latents
    assert float((same - clean).abs().mean()) < float((same - other_clean).abs().mean())
