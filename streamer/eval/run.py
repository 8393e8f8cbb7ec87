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


def _number(value: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:{spec}}{suffix}"


def _reset_line(cut: int, frames_late: int | None) -> str:
    if frames_late is None:
        return f"smoothing state not reset by the end of the clip (cut at frame {cut})"
    when = "on the cut frame" if frames_late == 0 else f"{frames_late} frame(s) after the cut"
    return f"smoothing state reset at frame {cut + frames_late}, {when} (cut at frame {cut})"


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A plain table for the terminal, units in the header, every n/a explained below it."""
    variants = report.get("variants", {})
    ref = "off" if "off" in variants else "ref"
    lines = [f"px: mean absolute pixel difference (0-255), lower is steadier; |out-{ref}|: the output against "
             f"the {'unsmoothed' if ref == 'off' else 'reference'} one",
             *(["flicker vs off: flicker / flicker with smoothing off (0.5x = half as much)"] if ref == "off" else []),
             f"{'':17}{'flicker':>8} {'flicker':>8} {'warp err':>9} {'lag':>9} {f'|out-{ref}|':>10} {'time':>10}",
             f"{'clip':8} {'variant':8}{'(px)':>8} {'vs off':>8} {'(px)':>9} {'(frames)':>9} {'(px)':>10} "
             f"{'(ms/frame)':>10}"]
    notes: list[str] = []

    def explained(value: float | None, note: str | None) -> str:
        text = _number(value, ".2f")
        if text == "n/a" and note:
            if note not in notes:
                notes.append(note)
            text = f"n/a [{notes.index(note) + 1}]"
        return text

    for name, clip in report["clips"].items():
        off = clip["variants"].get("off")
        for variant, m in clip["variants"].items():
            ratio = None
            if off is not None and off["flicker"] is not None and math.isfinite(off["flicker"]) and off["flicker"] > 0:
                ratio = m["flicker"] / off["flicker"]
            flicker = explained(m["flicker"], "flicker n/a: the input is never still (nothing to flicker against)")
            warp = explained(m["warp_error"], "warp error n/a: the optical flow could follow no pixel")
            lag_text = explained(m["lag_frames"], m.get("lag_note") and f"lag n/a: {m['lag_note']}")
            change, ms = m.get("change_vs_reference"), m.get("seconds_per_frame")
            lines.append(f"{name:8} {variant:8}{flicker:>8} {'' if off is None else _number(ratio, '.2f', 'x'):>8} "
                         f"{warp:>9} {lag_text:>9} "
                         f"{'' if change is None else _number(change, '.2f'):>10} "
                         f"{'' if ms is None else f'{ms * 1e3:.1f}':>10}")
        for cut, late in zip(clip.get("cut_frames", []), clip.get("cut_reset_frames", []), strict=False):
            lines.append(f"{name:8} {'on':8} {_reset_line(cut, late)}")
    lines.extend(f"[{i}] {note}" for i, note in enumerate(notes, start=1))
    if variants:
        lines.append("variants: " + "; ".join(f"{key} = {label}" for key, label in variants.items()))
    for target, t in report.get("targets", {}).items():
        lines.append(f"{'MET ' if t['met'] else 'MISS'} {target}: {_target_values(t)}")
    lines.extend(f"note: {note}" for note in report.get("notes", []))
    return lines


def _target_values(target: dict[str, Any]) -> str:
    return f"{_number(target['value'], '.3f')} (limit {_number(target['limit'], '.3f')})"


def missed_targets(report: dict[str, Any]) -> list[str]:
    """The targets a report misses, each as 'name: value (limit L)'."""
    return [f"{name}: {_target_values(t)}" for name, t in report.get("targets", {}).items() if not t["met"]]
