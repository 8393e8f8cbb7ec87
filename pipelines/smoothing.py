"""Per-stream temporal smoothing in latent space: the model runs on each frame, but where the picture is
still, its input and output latents lean on the previous frame's, so noise-driven flicker averages out
while moving regions follow the camera at once.

One ``StreamSmoother`` per stream. The frame step calls, per frame and in this order:
``check_input`` (scene cuts, motion, may the model be skipped?), ``blend_input`` (encoded latent),
``blend_output`` (denoised latent), ``remember_output`` (decoded image). With ``config.enabled`` False
every call is a no-op, so the frame step equals diffusers' reference exactly.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.config import SmoothingConfig

# Motion is measured on the input pooled by this factor (the VAE's 8x): one value per latent pixel for
# the usual models, and small enough that optical flow on CPU copies costs well under a millisecond.
MOTION_POOL = 8
# Smallest side of the motion map; tiny working sizes pool less so the map keeps some detail.
MIN_MOTION_SIDE = 8


class StreamSmoother:
    """Temporal state of one stream: previous input/output latents, motion map, skip counter."""

    def __init__(self, config: SmoothingConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        """Forget the past (new stream, scene cut, new size, smoothing switched off)."""
        self._reference: torch.Tensor | None = None  # pooled input of the last frame the model ran on
        self._motion: torch.Tensor | None = None  # (hs, ws) change since then, 0-1 scale
        self._flow: torch.Tensor | None = None  # (hs, ws, 2) where each pixel was in the reference
        self._previous_input: torch.Tensor | None = None
        self._previous_denoised: torch.Tensor | None = None
        self._previous_output: torch.Tensor | None = None
        self._skips_in_row = 0
        self.scene_cuts = 0
        # While the whole-step graph smooths this stream, its state is tensors here (pipelines/graph_smoothing.py).
        self.device_state: dict[str, torch.Tensor] | None = None

    # -- per frame ------------------------------------------------------------------------------------

    def check_input(self, image: torch.Tensor) -> bool:
        """Look at the input (3, H, W) in [-1, 1]; True when the previous output may be re-emitted."""
        if not self.config.enabled:
            if self._reference is not None or self._previous_output is not None:
                self.reset()
            return False
        small = _pool(image)
        reference = self._reference
        if reference is None or reference.shape != small.shape:
            self.reset()
            self._reference = small
            return False
        change = (small - reference).abs().mean(0) * 0.5  # [-1, 1] -> 0-1 scale
        mean_change = float(change.mean())
        if mean_change > self.config.scene_cut_threshold:
            cuts = self.scene_cuts
            self.reset()
            self.scene_cuts = cuts + 1
            self._reference = small
            return False
        # Similarity from the most-changed spot, not the mean: a slow pan or a small moving object
        # must run the model, or the re-emitted frames lag behind it.
        may_skip = (
            self._previous_output is not None
            and self._skips_in_row < self.config.max_skip
            and 1.0 - float(change.amax()) >= self.config.skip_similarity
        )
        if may_skip:
            # The reference stays: drift across skipped frames adds up until the model runs again.
            self._skips_in_row += 1
            return True
        self._skips_in_row = 0
        if self.config.motion_compensation:
            self._flow = _estimate_flow(small, reference)
            change = (small - _warp(reference, self._flow)).abs().mean(0) * 0.5
        else:
            self._flow = None
        # Dilate so the rim of a moving object counts as moving too (no ghost trail behind it).
        self._motion = F.max_pool2d(change[None, None], 3, stride=1, padding=1)[0, 0]
        self._reference = small
        return False

    def blend_input(self, latent: torch.Tensor) -> torch.Tensor:
        """Encoded latent (C, h, w) -> the latent to noise and denoise (leans on the previous where still)."""
        if not self.config.enabled:
            return latent
        blended = self._blend(latent, self._previous_input, self.config.input_blend)
        self._previous_input = blended
        return blended

    def blend_output(self, denoised: torch.Tensor) -> torch.Tensor:
        """Denoised latent (C, h, w) before decoding -> the latent to decode; remembered for the next frame."""
        if not self.config.enabled:
            return denoised
        blended = self._blend(denoised, self._previous_denoised, self.config.output_blend)
        self._previous_denoised = blended
        return blended

    def remember_output(self, image: torch.Tensor) -> None:
        """Keep the decoded output (3, H, W) so a skipped frame can re-emit it."""
        if self.config.enabled:
            self._previous_output = image

    def previous_output(self) -> torch.Tensor | None:
        return self._previous_output if self.config.enabled else None

    # -- helpers --------------------------------------------------------------------------------------

    def blend_weights(self, size: tuple[int, int], strength: float) -> torch.Tensor | None:
        """Weight of the previous latent per latent pixel (1, h, w): ``strength`` where still, 0 where moving."""
        if self._motion is None or strength <= 0.0:
            return None
        motion = F.interpolate(self._motion[None, None], size=size, mode="bilinear", align_corners=False)[0]
        return (1.0 - motion / self.config.motion_threshold).clamp_(0.0, 1.0) * strength

    def _blend(self, current: torch.Tensor, previous: torch.Tensor | None, strength: float) -> torch.Tensor:
        if previous is None or previous.shape != current.shape:
            return current
        weights = self.blend_weights(tuple(current.shape[-2:]), strength)
        if weights is None:
            return current
        if self._flow is not None:
            previous = _warp(previous, self._flow)
        weights = weights.to(device=current.device, dtype=current.dtype)
        return torch.lerp(current, previous.to(current.dtype), weights)


def _pool(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) -> (3, H/k, W/k) float32, k = MOTION_POOL or less for tiny frames."""
    factor = max(1, min(MOTION_POOL, min(image.shape[-2:]) // MIN_MOTION_SIDE))
    return F.avg_pool2d(image[None].float(), factor, ceil_mode=True)[0]


def _warp(previous: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``previous`` (C, h, w) at ``pixel + flow`` (flow (hs, ws, 2) in motion-map pixels, resized)."""
    c, h, w = previous.shape
    hs, ws = flow.shape[:2]
    flow = flow.to(device=previous.device, dtype=torch.float32)
    if (hs, ws) != (h, w):
        scale = torch.tensor([w / ws, h / hs], device=flow.device)
        flow = F.interpolate(flow.permute(2, 0, 1)[None], size=(h, w), mode="bilinear",
                             align_corners=False)[0].permute(1, 2, 0) * scale
    ys, xs = torch.meshgrid(torch.arange(h, device=flow.device, dtype=torch.float32),
                            torch.arange(w, device=flow.device, dtype=torch.float32), indexing="ij")
    # grid_sample wants x, y in [-1, 1] with align_corners=False: pixel centre i -> (2i + 1) / n - 1.
    gx = (2 * (xs + flow[..., 0]) + 1) / w - 1
    gy = (2 * (ys + flow[..., 1]) + 1) / h - 1
    grid = torch.stack([gx, gy], dim=-1)[None]
    warped = F.grid_sample(previous[None].float(), grid, mode="bilinear", padding_mode="border",
                           align_corners=False)
    return warped[0].to(previous.dtype)


def _estimate_flow(current: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """Backward flow (hs, ws, 2): for each pixel of ``current``, where it was in ``previous`` (Farneback)."""
    import cv2  # only with motion compensation on

    def gray(img: torch.Tensor) -> np.ndarray:
        luma = img.mean(0).clamp(-1, 1).add(1).mul(127.5)
        return luma.to("cpu", torch.uint8).numpy()

    flow = cv2.calcOpticalFlowFarneback(gray(current), gray(previous), None, pyr_scale=0.5, levels=2,
                                        winsize=9, iterations=3, poly_n=5, poly_sigma=1.1, flags=0)
    return torch.from_numpy(flow)
