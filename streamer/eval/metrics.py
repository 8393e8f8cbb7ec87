"""Temporal metrics of a stylized clip against its input, all on the 0-255 scale.

- flicker: mean |out_t - out_t-1| where the input is still (its own change below a threshold);
- warp error: out_t-1 warped to t by the input's optical flow, occlusions masked (forward-backward check);
- lag: delay in frames of the output's change behind the input's in moving regions (impulse-response
  centroid of a least-squares fit of the output change on the input changes at t, t-1, ...);
- change against another output (e.g. the unsmoothed one): mean |a - b|.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

STILL_THRESHOLD = 8.0  # blurred input change (0-255) below which a pixel counts as still
MOVING_THRESHOLD = 3.0  # change of the coarse (8x downscaled) input above which it counts as moving (lag)
LAG_TAPS = 4
LAG_SCALE = 8


def _gray(frame: np.ndarray, blur: float = 0.0) -> np.ndarray:
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return cv2.GaussianBlur(gray, (0, 0), blur) if blur > 0 else gray


def _coarse(frame: np.ndarray, factor: int = LAG_SCALE) -> np.ndarray:
    """Gray, area-downscaled: detail a stylizer redraws (or a latent model cannot keep) is averaged away,
    so spatial softness is not mistaken for delay on moving content."""
    h, w = frame.shape[:2]
    size = (max(4, w // factor), max(4, h // factor))
    return _gray(cv2.resize(frame, size, interpolation=cv2.INTER_AREA), 1.0)


def check_pair(inputs: np.ndarray, outputs: np.ndarray) -> None:
    if inputs.ndim != 4 or outputs.ndim != 4 or inputs.shape[-1] != 3 or outputs.shape[-1] != 3:
        raise ValueError(f"clips must be (N, H, W, 3) RGB, got {inputs.shape} and {outputs.shape}")
    if inputs.shape[1:3] != outputs.shape[1:3]:
        raise ValueError(f"input is {inputs.shape[2]}x{inputs.shape[1]} but output is "
                         f"{outputs.shape[2]}x{outputs.shape[1]}; give the output of this input")
    if len(inputs) < 3 or len(outputs) < 3:
        raise ValueError(f"need at least 3 frames, got {len(inputs)} input and {len(outputs)} output frames")


def still_masks(inputs: np.ndarray, threshold: float = STILL_THRESHOLD) -> list[np.ndarray]:
    """Mask per frame t >= 1: the input barely changed from t-1 (blurred, so sensor noise counts as still)."""
    grays = [_gray(f, 1.5) for f in inputs]
    return [np.abs(grays[t] - grays[t - 1]) < threshold for t in range(1, len(grays))]


def flicker(inputs: np.ndarray, outputs: np.ndarray, threshold: float = STILL_THRESHOLD) -> list[float]:
    """Per frame t >= 1: mean |out_t - out_t-1| over pixels (and channels) where the input is still."""
    per_frame = []
    for t, mask in enumerate(still_masks(inputs, threshold), start=1):
        if not mask.any():
            per_frame.append(float("nan"))
            continue
        diff = np.abs(outputs[t].astype(np.float32) - outputs[t - 1].astype(np.float32)).mean(-1)
        per_frame.append(float(diff[mask].mean()))
    return per_frame


def optical_flow(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Flow (H, W, 2) such that source(x) matches target(x + flow(x)); Farneback on gray frames."""
    return cv2.calcOpticalFlowFarneback(source, target, None, pyr_scale=0.5, levels=4, winsize=21,
                                        iterations=5, poly_n=7, poly_sigma=1.5, flags=0)


def _sample(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    h, w = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(image, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=np.nan)


def warp_errors(inputs: np.ndarray, outputs: np.ndarray) -> list[float]:
    """Per frame t >= 1: mean |out_t - warp(out_t-1)| with the input's flow; occluded/outside pixels left out."""
    grays = [_gray(f) for f in inputs]
    per_frame = []
    for t in range(1, len(inputs)):
        backward = optical_flow(grays[t], grays[t - 1])  # t -> where it was in t-1
        forward = optical_flow(grays[t - 1], grays[t])
        # Forward-backward check (Sundaram et al. 2010): following the flow there and back returns home.
        round_trip = backward + _sample(forward, backward)
        bound = 0.01 * ((backward**2).sum(-1) + (_sample(forward, backward) ** 2).sum(-1)) + 0.5
        warped = _sample(outputs[t - 1].astype(np.float32), backward)
        valid = ((round_trip**2).sum(-1) < bound) & np.isfinite(warped).all(-1)
        if not valid.any():
            per_frame.append(float("nan"))
            continue
        diff = np.abs(outputs[t].astype(np.float32) - warped).mean(-1)
        per_frame.append(float(diff[valid].mean()))
    return per_frame


MIN_RESPONSE = 0.05  # below this total gain the output does not follow the input: no lag to speak of


def _lag_from_fit(coefficients: np.ndarray) -> float:
    weights = np.clip(coefficients, 0, None)
    if weights.sum() < MIN_RESPONSE:
        return float("nan")
    return float((np.arange(len(weights)) * weights).sum() / weights.sum())


LAG_NO_MOTION = "the input does not move: nothing to lag behind"
LAG_NOT_FOLLOWING = "the output does not follow the input's motion"


def lag(inputs: np.ndarray, outputs: np.ndarray, threshold: float = MOVING_THRESHOLD,
        taps: int = LAG_TAPS) -> tuple[float, list[float]]:
    """Delay (frames) of the output behind the input in moving regions: (whole clip, per frame)."""
    value, per_frame, _ = lag_with_reason(inputs, outputs, threshold, taps)
    return value, per_frame


def lag_with_reason(inputs: np.ndarray, outputs: np.ndarray, threshold: float = MOVING_THRESHOLD,
                    taps: int = LAG_TAPS) -> tuple[float, list[float], str | None]:
    """Delay (frames) of the output behind the input in moving regions: (whole clip, per frame, why the
    whole-clip value is NaN: ``LAG_NO_MOTION`` or ``LAG_NOT_FOLLOWING``; None when it is a number).

    Fits out_t - out_t-1 ~ sum_k a_k (in_t-k - in_t-k-1) per pixel where the input moves (least squares
    on gray frames downscaled by 8, so a stylized, softer output still lines up), lag = sum k a_k / sum a_k. A plain output
    gives 0; an exponential average with weight b on the previous frame gives about b / (1 - b), a bit
    less as the fit keeps only ``taps`` frames.
    """
    grays_in = [_coarse(f) for f in inputs]
    grays_out = [_coarse(f) for f in outputs]
    d_in = [grays_in[t] - grays_in[t - 1] for t in range(1, len(inputs))]
    d_out = [grays_out[t] - grays_out[t - 1] for t in range(1, len(outputs))]
    rows, targets, per_frame = [], [], [float("nan")] * len(inputs)
    for i in range(taps - 1, len(d_in)):
        moving = np.abs(d_in[i]) > threshold
        if moving.sum() < 8:
            continue
        x = np.stack([d_in[i - k][moving] for k in range(taps)], axis=1)
        y = d_out[i][moving]
        rows.append(x)
        targets.append(y)
        coefficients, *_ = np.linalg.lstsq(x, y, rcond=None)
        per_frame[i + 1] = _lag_from_fit(coefficients)
    if not rows:
        return float("nan"), per_frame, LAG_NO_MOTION
    coefficients, *_ = np.linalg.lstsq(np.concatenate(rows), np.concatenate(targets), rcond=None)
    value = _lag_from_fit(coefficients)
    return value, per_frame, (LAG_NOT_FOLLOWING if np.isnan(value) else None)


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> list[float]:
    """Per frame mean |a - b| (0-255), e.g. the smoothed output against the unsmoothed one."""
    if a.shape != b.shape:
        raise ValueError(f"clips differ in shape: {a.shape} vs {b.shape}")
    return [float(np.abs(x.astype(np.float32) - y.astype(np.float32)).mean()) for x, y in zip(a, b, strict=True)]


def _mean(values: list[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


@dataclass
class ClipMetrics:
    flicker: float
    warp_error: float
    lag_frames: float
    change_vs_reference: float | None = None
    per_frame: dict[str, list[float]] = field(default_factory=dict)
    lag_note: str | None = None  # why lag_frames is NaN

    def to_dict(self) -> dict:
        return {"flicker": self.flicker, "warp_error": self.warp_error, "lag_frames": self.lag_frames,
                "lag_note": self.lag_note, "change_vs_reference": self.change_vs_reference,
                "per_frame": self.per_frame}


def measure(inputs: np.ndarray, outputs: np.ndarray, reference: np.ndarray | None = None) -> ClipMetrics:
    """Every metric for one output clip; ``reference`` is another output of the same input (e.g. unsmoothed)."""
    n = min(len(inputs), len(outputs))
    inputs, outputs = inputs[:n], outputs[:n]
    check_pair(inputs, outputs)
    flick = flicker(inputs, outputs)
    warp = warp_errors(inputs, outputs)
    clip_lag, frame_lag, lag_note = lag_with_reason(inputs, outputs)
    per_frame = {"flicker": [float("nan"), *flick], "warp_error": [float("nan"), *warp], "lag": frame_lag}
    change = None
    if reference is not None:
        diffs = mean_abs_diff(outputs, reference[:n])
        per_frame["change_vs_reference"] = diffs
        change = _mean(diffs)
    return ClipMetrics(_mean(flick), _mean(warp), clip_lag, change, per_frame, lag_note)
