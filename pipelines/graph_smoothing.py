"""Temporal smoothing (pipelines/smoothing.py) as batched tensor arithmetic, for the whole-step graph.

The eager ``StreamSmoother`` decides per frame on the host (skip the model? a scene cut?), which waits for
the GPU twice per frame. Here the same decisions are made on the device for the whole batch at once with
``torch.where``: every row runs the model, and a skipped row's output is the previous one. A stream's state
between frames is a dict of tensors (``StreamSmoother.device_state``); ``back_to_eager`` turns it back into
the smoother's own fields when a frame of that stream next runs the eager step. Motion compensation (optical
flow on the host) has no place in a graph: streams with it run the eager step.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from pipelines.smoothing import MIN_MOTION_SIDE, MOTION_POOL, StreamSmoother

# One row of state per stream: the eager smoother's fields, with a flag where it would hold None.
STATE_KEYS = ("ref", "has_ref", "motion", "has_motion", "prev_in", "has_prev_in", "prev_den", "has_prev_den",
              "prev_out", "has_out", "skips", "cuts")
# Per-frame settings (SmoothingConfig) as numbers: on, input_blend, output_blend, motion_threshold,
# skip_similarity, max_skip, scene_cut_threshold.
CONFIG_COLUMNS = 7


def pool_factor(height: int, width: int) -> int:
    return max(1, min(MOTION_POOL, min(height, width) // MIN_MOTION_SIDE))


def empty_state(image_shape: tuple[int, int, int], latent_shape: tuple[int, int, int], dtype: torch.dtype,
                device: torch.device) -> dict[str, torch.Tensor]:
    """The state of a stream that has seen nothing (the smoother just reset)."""
    c, h, w = image_shape
    k = pool_factor(h, w)
    hs, ws = -(-h // k), -(-w // k)
    no = torch.zeros((), dtype=torch.bool, device=device)
    return {
        "ref": torch.zeros((c, hs, ws), device=device), "has_ref": no,
        "motion": torch.zeros((hs, ws), device=device), "has_motion": no,
        "prev_in": torch.zeros(latent_shape, dtype=dtype, device=device), "has_prev_in": no,
        "prev_den": torch.zeros(latent_shape, dtype=dtype, device=device), "has_prev_den": no,
        "prev_out": torch.zeros(image_shape, dtype=dtype, device=device), "has_out": no,
        "skips": torch.zeros((), dtype=torch.int32, device=device),
        "cuts": torch.zeros((), dtype=torch.int32, device=device),
    }


def config_row(smoother: StreamSmoother | None, device: torch.device) -> torch.Tensor:
    """(CONFIG_COLUMNS,) float32; all zeros (smoothing off) without a smoother. Cached per config object,
    so a frame copies nothing to the device unless the settings changed."""
    if smoother is None:
        return torch.zeros(CONFIG_COLUMNS, device=device)
    cached = getattr(smoother, "_config_row", None)
    if cached is not None and cached[0] is smoother.config:
        return cached[1]
    c = smoother.config
    row = torch.tensor([1.0 if c.enabled else 0.0, c.input_blend, c.output_blend, c.motion_threshold,
                        c.skip_similarity, float(c.max_skip), c.scene_cut_threshold], dtype=torch.float32)
    row = row.to(device)
    smoother._config_row = (smoother.config, row)
    return row


def from_eager(smoother: StreamSmoother, empty: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The smoother's own fields as a state row (no wait: flags come from the host)."""
    if smoother.device_state is not None:
        return smoother.device_state
    s = dict(empty)
    device = empty["ref"].device

    def put(key: str, flag: str | None, value: torch.Tensor | None) -> None:
        if value is not None and tuple(value.shape) == tuple(empty[key].shape):
            s[key] = value.to(device, empty[key].dtype)
            if flag is not None:
                s[flag] = torch.ones((), dtype=torch.bool, device=device)

    put("ref", "has_ref", smoother._reference)
    put("motion", "has_motion", smoother._motion)
    put("prev_in", "has_prev_in", smoother._previous_input)
    put("prev_den", "has_prev_den", smoother._previous_denoised)
    put("prev_out", "has_out", smoother._previous_output)
    s["skips"] = torch.tensor(smoother._skips_in_row, dtype=torch.int32).to(device)
    s["cuts"] = torch.tensor(smoother.scene_cuts, dtype=torch.int32).to(device)
    return s


def back_to_eager(smoother: StreamSmoother) -> None:
    """Move a stream's device state back into the smoother's fields (reads the flags: waits for the GPU;
    only when a stream leaves the graph for the eager step)."""
    s = smoother.device_state
    if s is None:
        return
    smoother.device_state = None
    flags = {k: bool(s[k]) for k in ("has_ref", "has_motion", "has_prev_in", "has_prev_den", "has_out")}
    smoother._reference = s["ref"] if flags["has_ref"] else None
    smoother._motion = s["motion"] if flags["has_motion"] else None
    smoother._flow = None
    smoother._previous_input = s["prev_in"] if flags["has_prev_in"] else None
    smoother._previous_denoised = s["prev_den"] if flags["has_prev_den"] else None
    smoother._previous_output = s["prev_out"] if flags["has_out"] else None
    smoother._skips_in_row = int(s["skips"])
    smoother.scene_cuts = int(s["cuts"])


def gather(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([r[k] for r in rows]) for k in STATE_KEYS}


def scatter(new: dict[str, torch.Tensor], smoothers: list[StreamSmoother | None]) -> None:
    """Row i of the batch's new state becomes smoother i's (copied out of graph-owned memory first)."""
    owned = {k: v.clone() for k, v in new.items()}
    for i, smoother in enumerate(smoothers):
        if smoother is not None:
            smoother.device_state = {k: v[i] for k, v in owned.items()}


def _col(config: torch.Tensor, i: int) -> torch.Tensor:
    return config[:, i]


def _b(x: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1), to broadcast over images and latents."""
    return x.view(-1, 1, 1, 1)


class BatchSmoothing:
    """The smoothing of one batch inside the traced step: ``decide`` then ``blend_input``, ``blend_output``,
    ``output``, in the frame step's order; ``state`` is the new state of every row."""

    def __init__(self, images: torch.Tensor, state: dict[str, torch.Tensor], config: torch.Tensor) -> None:
        self.s = dict(state)
        self.on = _col(config, 0) > 0.5
        self.in_blend, self.out_blend = _col(config, 1), _col(config, 2)
        self.threshold = _col(config, 3)
        on, s = self.on, state
        k = pool_factor(images.shape[-2], images.shape[-1])
        small = F.avg_pool2d(images.float(), k, ceil_mode=True)
        change = (small - s["ref"]).abs().mean(1) * 0.5
        had_ref = s["has_ref"] & on
        cut = had_ref & (change.mean((1, 2)) > _col(config, 6))
        fresh = on & ~had_ref | cut  # the eager smoother resets on these frames
        has_out = s["has_out"] & ~fresh
        self.skip = (on & ~fresh & has_out & (s["skips"] < _col(config, 5))
                     & (1.0 - change.amax((1, 2)) >= _col(config, 4)))
        moving = on & ~fresh & ~self.skip  # the model runs and the motion map is remembered
        motion = F.max_pool2d(change[:, None], 3, stride=1, padding=1)[:, 0]
        n = self.s
        n["motion"] = torch.where(moving[:, None, None], motion, torch.where(fresh[:, None, None], 0.0, s["motion"]))
        n["has_motion"] = torch.where(moving, True, torch.where(fresh, False, s["has_motion"]))
        n["ref"] = torch.where((on & ~self.skip)[:, None, None, None], small, s["ref"])
        n["has_ref"] = s["has_ref"] | on
        n["skips"] = torch.where(self.skip, s["skips"] + 1, torch.where(on, 0, s["skips"]))
        n["cuts"] = torch.where(cut, s["cuts"] + 1, torch.where(on & ~s["has_ref"], 0, s["cuts"]))
        n["has_prev_in"] = s["has_prev_in"] & ~fresh
        n["has_prev_den"] = s["has_prev_den"] & ~fresh
        n["has_out"] = has_out
        self.runs = on & ~self.skip

    def _blend(self, current: torch.Tensor, key: str, strength: torch.Tensor) -> torch.Tensor:
        n = self.s
        motion = F.interpolate(n["motion"][:, None], size=tuple(current.shape[-2:]), mode="bilinear",
                               align_corners=False)
        weights = (1.0 - motion / _b(self.threshold)).clamp(0.0, 1.0) * _b(strength)
        use = self.runs & n["has_" + key] & n["has_motion"] & (strength > 0.0)
        weights = torch.where(_b(use), weights, 0.0).to(current.dtype)
        blended = torch.lerp(current, n[key].to(current.dtype), weights)
        n[key] = torch.where(_b(self.runs), blended, n[key]).to(n[key].dtype)
        n["has_" + key] = n["has_" + key] | self.runs
        return blended

    def blend_input(self, latents: torch.Tensor) -> torch.Tensor:
        return self._blend(latents, "prev_in", self.in_blend)

    def blend_output(self, denoised: torch.Tensor) -> torch.Tensor:
        return self._blend(denoised, "prev_den", self.out_blend)

    def output(self, decoded: torch.Tensor) -> torch.Tensor:
        """Skipped rows re-emit the previous output; the rows that ran are remembered."""
        n = self.s
        out = torch.where(_b(self.skip), n["prev_out"].to(decoded.dtype), decoded)
        n["prev_out"] = torch.where(_b(self.runs), decoded, n["prev_out"]).to(n["prev_out"].dtype)
        n["has_out"] = n["has_out"] | self.runs
        return out

    @property
    def state(self) -> dict[str, torch.Tensor]:
        return self.s


def eligible(smoother: Any) -> bool:
    """Streams whose smoothing the graph can do (everything but motion compensation)."""
    return smoother is None or not smoother.config.motion_compensation
