"""Per-frame curves of an eval report as one PNG (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# The metric each clip is best judged by.
CLIP_METRIC = {"still": "flicker", "moving": "warp_error", "cut": "change_vs_reference"}
METRIC_LABEL = {"flicker": "flicker (0-255)", "warp_error": "warp error (0-255)",
                "change_vs_reference": "mean |on - off| (0-255)", "lag": "lag (frames)"}
COLOURS = {"fresh": "tab:red", "off": "tab:orange", "on": "tab:green", "output": "tab:blue"}


def plot_report(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clips = report["clips"]
    panels = [(name, CLIP_METRIC.get(name, "flicker")) for name in clips]
    if set(clips) == {"input"}:  # two files: show every metric of the one output
        panels = [("input", "flicker"), ("input", "warp_error"), ("input", "lag")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False)
    for ax, (name, metric) in zip(axes[0], panels, strict=True):
        for variant, metrics in clips[name]["variants"].items():
            values = metrics["per_frame"].get(metric)
            if values is None:
                continue
            label = report.get("variants", {}).get(variant, variant)
            ax.plot(range(len(values)), values, label=label, color=COLOURS.get(variant), linewidth=1.5)
        for cut in clips[name].get("cut_frames", []):
            ax.axvline(cut, color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"{name}: {METRIC_LABEL.get(metric, metric)}", fontsize=10)
        ax.set_xlabel("frame")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
