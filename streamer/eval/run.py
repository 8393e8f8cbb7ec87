"""Run a pipeline over clips with smoothing on, off (fixed noise) and fresh noise per frame; measure each."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from streamer.eval.clips import Clip
from streamer.eval.metrics import measure

VARIANTS = ("fresh", "off", "on")
VARIANT_LABELS = {"fresh": "fresh noise per frame", "off": "smoothing off (fixed noise)", "on": "smoothing on"}
CLIP_NOTE = "CLIP frame consistency skipped: no CLIP model is available locally"


def run_variant(pipe: Any, frames: np.ndarray, variant: str, smoothing: dict[str, Any],
                stream_id: str) -> tuple[np.ndarray, float]:
    """Frames through ``pipe`` one at a time as one stream; returns outputs and seconds per frame."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    pipe.update(stream_id, smoothing={**smoothing, "enabled": variant == "on"})
    outputs, seconds = [], 0.0
    try:
        for i, frame in enumerate(frames):
            if variant == "fresh":
                pipe.update(stream_id, seed=i)
            start = time.perf_counter()
            outputs.append(pipe(frame[None], [stream_id])[0])
            seconds += time.perf_counter() - start
    finally:
        pipe.remove_stream(stream_id)
    return np.stack(outputs), seconds / len(frames)


def frames_to_reset(on: np.ndarray, off: np.ndarray, cut: int, tolerance: float = 0.5) -> int | None:
    """Frames after a cut until the smoothed output stops carrying the old scene (0 = on the cut frame).

    After a reset the smoother has no past, so its output equals the unsmoothed one exactly."""
    for k in range(cut, len(on)):
        if np.abs(on[k].astype(np.float32) - off[k].astype(np.float32)).mean() <= tolerance:
            return k - cut
    return None


def evaluate_clip(pipe: Any, clip: Clip, smoothing: dict[str, Any],
                  variants: Sequence[str] = VARIANTS) -> dict[str, Any]:
    outputs, timing = {}, {}
    for variant in variants:
        outputs[variant], timing[variant] = run_variant(pipe, clip.frames, variant, smoothing,
                                                        stream_id=f"eval-{clip.name}-{variant}")
    report: dict[str, Any] = {"description": clip.description, "frames": len(clip.frames),
                              "cut_frames": list(clip.cut_frames), "variants": {}}
    for variant in variants:
        reference = outputs.get("off") if variant != "off" else None
        metrics = measure(clip.frames, outputs[variant], reference).to_dict()
        metrics["seconds_per_frame"] = timing[variant]
        report["variants"][variant] = metrics
    base = report["variants"].get("off")
    for variant, metrics in report["variants"].items():
        if base is not None and variant != "off":
            # A softer output reads as some lag on moving content already; this is what smoothing adds.
            metrics["lag_added_frames"] = metrics["lag_frames"] - base["lag_frames"]
    if clip.cut_frames and "on" in outputs and "off" in outputs:
        report["cut_reset_frames"] = [frames_to_reset(outputs["on"], outputs["off"], c) for c in clip.cut_frames]
    return report


def check_targets(clips: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The smoothing targets, each with its measured value, its limit and whether it is met."""
    targets: dict[str, dict[str, Any]] = {}

    def add(name: str, value: float | None, limit: float | None) -> None:
        ok = value is not None and limit is not None and math.isfinite(value) and value <= limit
        targets[name] = {"value": value, "limit": limit, "met": bool(ok)}

    still = clips.get("still", {}).get("variants", {})
    if "on" in still and "off" in still:
        add("still: flicker on <= 0.5 x off", still["on"]["flicker"], 0.5 * still["off"]["flicker"])
    if "on" in still and "fresh" in still:
        add("still: flicker on <= 0.2 x fresh noise", still["on"]["flicker"], 0.2 * still["fresh"]["flicker"])
    moving = clips.get("moving", {}).get("variants", {})
    if "on" in moving and "off" in moving:
        add("moving: warp error on <= 1.05 x off", moving["on"]["warp_error"], 1.05 * moving["off"]["warp_error"])
        add("moving: lag on <= 1 frame", moving["on"]["lag_frames"], 1.0)
    resets = clips.get("cut", {}).get("cut_reset_frames")
    if resets:
        worst = None if None in resets else float(max(resets))
        add("cut: state reset within 1 frame", worst, 1.0)
    return targets


def evaluate_pipeline(pipe: Any, clips: Sequence[Clip], smoothing: dict[str, Any]) -> dict[str, Any]:
    """The whole report: per clip and variant, the metrics with per-frame curves, and the targets."""
    results = {clip.name: evaluate_clip(pipe, clip, smoothing) for clip in clips}
    return {"variants": VARIANT_LABELS, "smoothing": smoothing, "clips": results,
            "targets": check_targets(results), "notes": [CLIP_NOTE]}


def evaluate_files(inputs: np.ndarray, outputs: np.ndarray, reference: np.ndarray | None = None) -> dict[str, Any]:
    """Metrics of a stylized clip given as files (the input, its output, optionally another output)."""
    metrics = measure(inputs, outputs, reference).to_dict()
    return {"clips": {"input": {"frames": int(min(len(inputs), len(outputs))), "variants": {"output": metrics}}},
            "notes": [CLIP_NOTE]}


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A plain table for the terminal."""
    lines = [f"{'clip':8} {'variant':8} {'flicker':>8} {'warp err':>9} {'lag':>6} {'vs off':>7} {'ms/frame':>9}"]
    for name, clip in report["clips"].items():
        for variant, m in clip["variants"].items():
            change = m.get("change_vs_reference")
            ms = m.get("seconds_per_frame")
            lines.append(f"{name:8} {variant:8} {m['flicker']:8.2f} {m['warp_error']:9.2f} {m['lag_frames']:6.2f} "
                         f"{'' if change is None else f'{change:.2f}':>7} {'' if ms is None else f'{ms * 1e3:.1f}':>9}")
        if "cut_reset_frames" in clip:
            lines.append(f"{name:8} smoothing state reset {clip['cut_reset_frames']} frame(s) after the cut")
    for target, t in report.get("targets", {}).items():
        value = "n/a" if t["value"] is None else f"{t['value']:.3f}"
        lines.append(f"{'MET ' if t['met'] else 'MISS'} {target}: {value} (limit {t['limit']:.3f})")
    lines.extend(f"note: {note}" for note in report.get("notes", []))
    return lines
