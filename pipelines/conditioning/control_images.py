"""Control images for ControlNets, made per frame on the model's device inside the frame step.

Every maker takes frames as (B, 3, H, W) in [-1, 1] at the working size (what the frame step holds) and
returns (B, 3, H, W) in [0, 1], what diffusers' ControlNet pipelines give a ControlNet after their
``control_image_processor``:

- ``canny``: OpenCV's Canny on torch (3x3 Sobel, L1 gradient, non-maximum suppression, hysteresis), with the
  thresholds on OpenCV's 0-255 scale, so ``cv2.Canny(gray, 100, 200)`` settings carry over.
- ``depth``: a transformers depth estimator (e.g. Depth Anything), its relative depth scaled to [0, 1] per
  frame (near = white, as depth ControlNets are trained).
- ``input``: the frame itself; ``previous``: the stream's last stylized output (``previous_or_input``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
_HYSTERESIS_ROUNDS = 8  # dilation rounds between convergence checks (each check waits for the device)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] frames -> [0, 1] (as the frame step turns its output into pixels)."""
    return (images.float() / 2 + 0.5).clamp(0, 1)


def canny(images: torch.Tensor, low: torch.Tensor | float, high: torch.Tensor | float) -> torch.Tensor:
    """Edges of (B, 3, H, W) frames in [-1, 1] -> (B, 3, H, W) of 0 and 1. ``low``/``high``: thresholds on
    the L1 Sobel gradient of 0-255 grey, as numbers or (B,) tensors (one pair per frame)."""
    b, _, h, w = images.shape
    rgb = (images.float() + 1) * 127.5
    gray = (0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]).unsqueeze(1)
    kx = _SOBEL_X.to(gray.device).view(1, 1, 3, 3)
    padded = F.pad(gray, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(padded, kx)
    gy = F.conv2d(padded, kx.transpose(2, 3))
    mag = gx.abs() + gy.abs()
    # Non-maximum suppression: keep a pixel that beats its two neighbours across the edge (the gradient's
    # direction quantised to 0, 45, 90, 135 degrees), strictly on one side, as OpenCV does.
    m = F.pad(mag, (1, 1, 1, 1))

    def at(dy: int, dx: int) -> torch.Tensor:
        return m[:, :, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]

    ax, ay = gx.abs(), gy.abs()
    tan22 = math.tan(math.radians(22.5))
    horizontal = ay <= ax * tan22  # gradient along x: compare left/right
    vertical = ax <= ay * tan22
    same_sign = (gx * gy) > 0
    keep_h = (mag > at(0, -1)) & (mag >= at(0, 1))
    keep_v = (mag > at(-1, 0)) & (mag >= at(1, 0))
    keep_d1 = (mag > at(-1, -1)) & (mag >= at(1, 1))  # gradient down-right (image rows grow downwards)
    keep_d2 = (mag > at(-1, 1)) & (mag >= at(1, -1))
    keep = torch.where(horizontal, keep_h, torch.where(vertical, keep_v, torch.where(same_sign, keep_d1, keep_d2)))
    low_t = torch.as_tensor(low, dtype=mag.dtype, device=mag.device).reshape(-1, 1, 1, 1)
    high_t = torch.as_tensor(high, dtype=mag.dtype, device=mag.device).reshape(-1, 1, 1, 1)
    candidate = keep & (mag > low_t)
    edges = candidate & (mag > high_t)
    # Hysteresis: weak edges joined (8-connected) to strong ones become edges.
    while True:
        before = edges
        for _ in range(_HYSTERESIS_ROUNDS):
            edges = candidate & (F.max_pool2d(edges.float(), 3, stride=1, padding=1) > 0)
        if torch.equal(edges, before):
            break
    return edges.float().expand(b, 3, h, w).contiguous()


class DepthEstimator:
    """A transformers depth estimator run on tensors already on the device: resize to ``side`` pixels high
    (width to keep the aspect, multiples of 14), normalise as its image processor does, estimate, scale each
    frame's depth to [0, 1] and resize back."""

    def __init__(self, model: Any, mean: list[float], std: list[float], side: int) -> None:
        self.model = model
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.mean = torch.tensor(mean, device=self.device, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device, dtype=torch.float32).view(1, 3, 1, 1)
        self.side = side

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        _, _, h, w = images.shape
        height = self.side
        width = max(14, round(self.side * w / h / 14) * 14)
        x = F.interpolate(to_unit(images), size=(height, width), mode="bicubic", align_corners=False)
        x = ((x.clamp(0, 1) - self.mean) / self.std).to(self.dtype)
        depth = self.model(pixel_values=x).predicted_depth.float().unsqueeze(1)
        depth = F.interpolate(depth, size=(h, w), mode="bicubic", align_corners=False)
        lo = depth.amin(dim=(1, 2, 3), keepdim=True)
        hi = depth.amax(dim=(1, 2, 3), keepdim=True)
        return ((depth - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1).expand(-1, 3, -1, -1).contiguous()


def load_depth_estimator(source: str, *, side: int, device: torch.device, dtype: torch.dtype) -> DepthEstimator:
    """A depth estimator from a hub id or folder (its config and image processor config)."""
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    processor = AutoImageProcessor.from_pretrained(source)
    model = AutoModelForDepthEstimation.from_pretrained(source, torch_dtype=dtype).to(device).eval()
    mean = list(getattr(processor, "image_mean", None) or [0.485, 0.456, 0.406])
    std = list(getattr(processor, "image_std", None) or [0.229, 0.224, 0.225])
    return DepthEstimator(model, mean, std, side)
