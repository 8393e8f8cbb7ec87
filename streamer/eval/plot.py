"""Per-frame curves of an eval report as one PNG (matplotlib, no display needed).

One panel per thing to judge: smoothing on against off on the metric each clip is judged by, the lag, the
change at a cut (marked), fresh noise in a panel of its own (its scale would flatten the others), and the
targets met or missed."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

# The metrics each generated clip is judged by.
CLIP_METRICS = {"still": ["flicker"], "moving": ["warp_error", "lag"], "cut": ["change_vs_reference"]}
FILE_METRICS = ["flicker", "warp_error", "lag", "change_vs_reference"]
METRIC_LABEL = {"flicker": "flicker (px)", "warp_error": "warp error (px)",
                "change_vs_reference": "|out - off| (px)", "lag": "lag (frames)"}
METRIC_EXPLAINED = {"flicker": "frame-to-frame change where the input is still",
                    "warp_error": "change not explained by the input's motion",
                    "change_vs_reference": "difference from the unsmoothed output",
                    "lag": "delay of the output behind the input's motion"}
STYLE = {"fresh": {"color": "tab:red", "linewidth": 1.4},
         "off": {"color": "tab:orange", "linewidth": 3.2, "alpha": 0.55},
         "on": {"color": "tab:green", "linewidth": 1.4, "marker": "o", "markersize": 2.5},
         "output": {"color": "tab:blue", "linewidth": 1.4}}


def _mean(values: list[float | None]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def panels_of(report: dict[str, Any]) -> list[tuple[str, str, list[str], str]]:
    """(clip, metric, variants, title) for each curve panel."""
    clips = report["clips"]
    panels = []
    for name, clip in clips.items():
        variants = [v for v in clip["variants"] if v != "fresh"]
        metrics = CLIP_METRICS.get(name) or FILE_METRICS[:3]
        if name not in CLIP_METRICS and any(clip["variants"][v].get("change_vs_reference") is not None
                                            for v in variants):
            metrics = FILE_METRICS
        for metric in metrics:
            shown = [v for v in variants if metric in clip["variants"][v]["per_frame"]]
            if shown:
                panels.append((name, metric, shown, f"{name}: {METRIC_LABEL[metric]}\n{METRIC_EXPLAINED[metric]}"))
    fresh_clip = "still" if "fresh" in clips.get("still", {}).get("variants", {}) else next(
        (n for n, c in clips.items() if "fresh" in c["variants"]), None)
    if fresh_clip is not None:
        metric = "flicker" if fresh_clip == "still" else (CLIP_METRICS.get(fresh_clip) or ["flicker"])[0]
        panels.append((fresh_clip, metric, list(clips[fresh_clip]["variants"]),
                       f"{fresh_clip}: {METRIC_LABEL[metric]}, fresh noise per frame\n"
                       "for scale: why the noise is fixed per stream"))
    return panels


def _draw_curves(ax: Any, report: dict[str, Any], clip_name: str, metric: str, variants: list[str],
                 title: str) -> None:
    from matplotlib.ticker import MaxNLocator

    clip = report["clips"][clip_name]
    labels = report.get("variants", {})
    for variant in variants:
        metrics = clip["variants"][variant]
        values = [float("nan") if v is None else v for v in metrics["per_frame"][metric]]
        mean = metrics.get("lag_frames") if metric == "lag" else _mean(values)
        mean_text = "n/a" if mean is None or not math.isfinite(mean) else f"{mean:.2f}"
        label = f"{labels.get(variant, variant)}: {'whole clip' if metric == 'lag' else 'mean'} {mean_text}"
        ax.plot(range(len(values)), values, label=label, **STYLE.get(variant, {}))
    resets = clip.get("cut_reset_frames") or []
    for i, cut in enumerate(clip.get("cut_frames", [])):
        late = resets[i] if i < len(resets) else None
        text = f"cut at frame {cut}" + ("" if i >= len(resets) else
                                       "\nstate never reset" if late is None else f"\nstate reset at frame {cut + late}")
        ax.axvline(cut, color="grey", linestyle="--", linewidth=1)
        ax.annotate(text, xy=(cut, 1), xycoords=("data", "axes fraction"), xytext=(-4, -6), ha="right", va="top",
                    textcoords="offset points", fontsize=8, color="dimgrey",
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})
    if metric == "lag":
        if report.get("targets"):
            ax.axhline(1.0, color="grey", linestyle=":", linewidth=1, label="target: whole clip <= 1 frame")
        notes = {clip["variants"][v].get("lag_note") for v in variants} - {None}
        if notes:
            ax.text(0.5, 0.5, "n/a: " + "; ".join(sorted(notes)), transform=ax.transAxes, ha="center",
                    fontsize=8, wrap=True)
    else:
        ax.set_ylim(bottom=0)
    low, high = ax.get_ylim()
    ax.set_ylim(low, high + 0.45 * (high - low))  # headroom: the legend does not cover the curves
    ax.set_title(title, fontsize=9.5)
    ax.set_xlabel("frame")
    ax.set_xlim(0, max(1, clip.get("frames", 2) - 1))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="upper right" if clip.get("cut_frames") else "upper left")


def _draw_targets(ax: Any, targets: dict[str, dict[str, Any]]) -> None:
    ax.axis("off")
    ax.set_title("targets (smoothing on)", fontsize=9.5)
    for i, (name, t) in enumerate(targets.items()):
        value = "n/a" if t["value"] is None or not math.isfinite(t["value"]) else f"{t['value']:.3f}"
        limit = "n/a" if t["limit"] is None else f"{t['limit']:.3f}"
        ax.text(0.0, 0.92 - i * 0.16, ("MET  " if t["met"] else "MISS ") + name, transform=ax.transAxes,
                fontsize=8.5, color="tab:green" if t["met"] else "tab:red", fontweight="bold")
        ax.text(0.06, 0.92 - i * 0.16 - 0.07, f"{value} (limit {limit})", transform=ax.transAxes, fontsize=8)


def plot_report(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = panels_of(report)
    targets = report.get("targets") or {}
    count = len(panels) + (1 if targets else 0)
    columns = min(3, count)
    rows = math.ceil(count / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.0 * columns, 3.6 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax, panel in zip(flat, panels, strict=False):
        _draw_curves(ax, report, *panel)
    if targets:
        _draw_targets(flat[len(panels)], targets)
    for ax in flat[count:]:
        ax.axis("off")
    fig.suptitle("px: mean absolute pixel difference (0-255), lower is steadier", fontsize=9, color="dimgrey",
                 x=0.01, ha="left")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100, format="png")  # into the caller's temporary file (streamer.engine.outputs.write_file)
    finally:
        plt.close(fig)
