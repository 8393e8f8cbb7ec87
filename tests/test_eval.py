"""Temporal metrics on cases with known answers, the generated clips, and `streamer eval` end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from streamer.eval.clips import cut_clip, moving_clip, read_clip, still_clip, write_clip
from streamer.eval.metrics import (
    LAG_NO_MOTION,
    LAG_NOT_FOLLOWING,
    flicker,
    lag,
    lag_with_reason,
    measure,
    warp_errors,
)
from streamer.eval.plot import panels_of
from streamer.eval.run import frames_to_reset, summary_lines

CLI_TIMEOUT = 240


def ema(frames: np.ndarray, weight: float) -> np.ndarray:
    out = [frames[0].astype(np.float32)]
    for frame in frames[1:]:
        out.append(weight * out[-1] + (1 - weight) * frame)
    return np.stack(out).round().astype(np.uint8)


def test_still_output_with_added_noise_has_the_expected_flicker() -> None:
    clip = still_clip(8, 96, 64)
    rng = np.random.default_rng(0)
    grey = np.full_like(clip.frames, 128)
    noisy = np.clip(grey + rng.normal(0, 5, grey.shape), 0, 255).astype(np.uint8)
    # |n1 - n2| with n ~ N(0, 5^2): mean 2 * 5 / sqrt(pi)
    assert np.nanmean(flicker(clip.frames, noisy)) == pytest.approx(2 * 5 / np.sqrt(np.pi), rel=0.05)
    assert np.nanmean(flicker(clip.frames, grey)) == 0.0


def test_translated_texture_has_near_zero_warp_error() -> None:
    clip = moving_clip(5, 128, 96, dx=3, dy=1, rotation_deg=0, noise_std=0)
    followed = np.nanmean(warp_errors(clip.frames, clip.frames))
    assert followed < 2.5  # what is left: bilinear resampling of fine texture
    # An output that ignores the motion is clearly worse.
    frozen = np.repeat(clip.frames[:1], len(clip.frames), axis=0)
    assert np.nanmean(warp_errors(clip.frames, frozen)) > 1.8 * followed


def test_lag_of_known_delays() -> None:
    frames = moving_clip(14, 256, 192).frames
    assert abs(lag(frames, frames)[0]) < 0.05
    delayed = np.concatenate([frames[:1], frames[:-1]])
    assert lag(frames, delayed)[0] == pytest.approx(1.0, abs=0.05)
    # An exponential average with weight 0.3 on the past lags 0.3 / 0.7 = 0.43 frames.
    assert lag(frames, ema(frames, 0.3))[0] == pytest.approx(0.43, abs=0.06)


def test_lag_says_why_it_is_not_a_number() -> None:
    still = still_clip(8, 96, 64, noise_std=0, lighting_flicker=0).frames
    assert lag_with_reason(still, still)[2] == LAG_NO_MOTION
    moving = moving_clip(8, 96, 64).frames
    frozen = np.repeat(moving[:1], len(moving), axis=0)
    value, _, reason = lag_with_reason(moving, frozen)
    assert np.isnan(value) and reason == LAG_NOT_FOLLOWING
    assert lag_with_reason(moving, moving)[2] is None
    assert measure(still, still).to_dict()["lag_note"] == LAG_NO_MOTION


def test_summary_explains_every_na() -> None:
    metrics = {"flicker": float("nan"), "warp_error": float("nan"), "lag_frames": float("nan"),
               "lag_note": LAG_NO_MOTION, "change_vs_reference": None}
    lines = summary_lines({"clips": {"input": {"variants": {"output": metrics}}}})
    assert lines[-3:] == ["[1] flicker n/a: the input is never still (nothing to flicker against)",
                          "[2] warp error n/a: the optical flow could follow no pixel",
                          f"[3] lag n/a: {LAG_NO_MOTION}"]
    assert lines[3].split() == ["input", "output", "n/a", "[1]", "n/a", "[2]", "n/a", "[3]"]
    assert not any("nan" in line for line in lines)


def test_measure_reports_per_frame_curves_and_change_against_a_reference() -> None:
    clip = still_clip(6, 64, 48)
    metrics = measure(clip.frames, clip.frames, reference=np.clip(clip.frames.astype(int) + 2, 0, 255).astype(np.uint8))
    assert len(metrics.per_frame["flicker"]) == 6 and len(metrics.per_frame["warp_error"]) == 6
    assert metrics.change_vs_reference == pytest.approx(2.0, abs=0.1)


def test_frames_to_reset_counts_from_the_cut() -> None:
    off = np.zeros((6, 8, 8, 3), np.uint8)
    on = off.copy()
    on[3] = 40  # one frame still carrying the old scene after a cut at 3
    assert frames_to_reset(on, off, cut=3) == 1
    assert frames_to_reset(off, off, cut=3) == 0


def test_generated_clips_have_their_known_structure() -> None:
    clip = moving_clip(3, 96, 64, dx=4, dy=0, rotation_deg=0, noise_std=0)
    assert np.abs(clip.frames[1][:, 4:].astype(int) - clip.frames[0][:, :-4]).mean() < 1.0
    cut = cut_clip(8, 96, 64, cut_at=5)
    changes = [np.abs(cut.frames[i].astype(int) - cut.frames[i - 1]).mean() for i in range(1, 8)]
    assert int(np.argmax(changes)) + 1 == 5 and cut.cut_frames == [5]


def test_clip_file_round_trip(tmp_path: Path) -> None:
    clip = still_clip(5, 64, 48)
    path = tmp_path / "still.mp4"
    write_clip(path, clip.frames)
    frames, fps = read_clip(path)
    assert frames.shape == clip.frames.shape and fps == pytest.approx(30.0)
    assert np.abs(frames.astype(int) - clip.frames).mean() < 3.0  # sensor noise costs bits


def streamer(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-m", "streamer", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=CLI_TIMEOUT)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["analytic", "tiny"])
def test_cli_runs_a_preset_and_writes_json_and_png(tmp_path: Path, preset: str) -> None:
    result = streamer("eval", "--preset", preset, "--frames", "6", "--clip-size", "64x48", "--json", "r.json",
                      "--plot", "r.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert set(report["clips"]) == {"still", "moving", "cut"}
    still = report["clips"]["still"]["variants"]
    assert set(still) == {"fresh", "off", "on"}
    assert len(still["on"]["per_frame"]["flicker"]) == 6
    assert report["clips"]["cut"]["cut_reset_frames"] == [0]
    assert "still: flicker on <= 0.5 x off" in report["targets"]
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The plot: on against off per clip metric, lag plotted, fresh noise only in a panel of its own.
    panels = panels_of(report)
    assert [(clip, metric) for clip, metric, *_ in panels] == [
        ("still", "flicker"), ("moving", "warp_error"), ("moving", "lag"), ("cut", "change_vs_reference"),
        ("still", "flicker")]
    assert [variants for _, _, variants, _ in panels[:4]] == [["off", "on"], ["off", "on"], ["off", "on"], ["on"]]
    assert panels[4][2] == ["fresh", "off", "on"] and "fresh noise" in panels[4][3]
    assert [title.split("\n")[0] for *_, title in panels[:4]] == [
        "still: flicker (px)", "moving: warp error (px)", "moving: lag (frames)", "cut: |out - off| (px)"]
    if preset == "analytic":  # real pictures: fresh noise flickers far more than fixed noise
        assert still["fresh"]["flicker"] > 3 * still["off"]["flicker"]


@pytest.mark.slow
def test_cli_measures_two_files(tmp_path: Path) -> None:
    clip = moving_clip(6, 96, 64)
    write_clip(tmp_path / "in.mp4", clip.frames)
    write_clip(tmp_path / "out.mp4", ema(clip.frames, 0.5))
    result = streamer("eval", "in.mp4", "out.mp4", "--reference", "in.mp4", "--json", "r.json", "--plot", "r.png",
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "r.json").read_text())["clips"]["input"]["variants"]["output"]
    assert metrics["lag_frames"] > 0.3 and metrics["change_vs_reference"] > 0
    assert (tmp_path / "r.png").stat().st_size > 1000


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    result = streamer("eval", "missing.mp4", "also-missing.mp4", cwd=tmp_path)
    assert result.returncode == 2 and "missing.mp4 does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    write_clip(tmp_path / "in.mp4", still_clip(4, 32, 24).frames)
    result = streamer("eval", "--check", "in.mp4", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "streamer: error: --check compares against targets set for the generated clips; leave out INPUT to use them"]


def test_cli_without_preset_runs_the_documented_default(tmp_path: Path) -> None:
    """`streamer eval` alone runs the default preset, as --help says (offline here: the one-line download hint)."""
    assert "(default lcm-dreamshaper)" in " ".join(streamer("eval", "--help", cwd=tmp_path).stdout.split())
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin",
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    result = subprocess.run([sys.executable, "-m", "streamer", "eval"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=CLI_TIMEOUT)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("streamer: error:"), result.stderr
    assert "SimianLuo/LCM_Dreamshaper_v7" in lines[0] and "hf download" in lines[0]


@pytest.mark.slow
def test_cli_text_has_units_explains_na_and_check_passes(tmp_path: Path) -> None:
    result = streamer("eval", "--preset", "analytic", "--frames", "6", "--size", "64x48", "--check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    lines = out.splitlines()
    assert "nan" not in out and "[0]" not in out
    assert lines[0].startswith("px: mean absolute pixel difference (0-255)")
    assert "flicker vs off: flicker / flicker with smoothing off" in out
    header = " ".join(lines[2].split()) + " / " + " ".join(lines[3].split())
    assert header == ("flicker flicker warp err lag |out-off| time / "
                      "clip variant (px) vs off (px) (frames) (px) (ms/frame)")
    rows = {tuple(line.split()[:2]): line.split() for line in lines if line.split()[:1] in (["still"], ["moving"])}
    assert rows[("still", "off")][3] == "1.00x" and rows[("still", "on")][3].endswith("x")
    assert float(rows[("still", "on")][3][:-1]) < 0.5
    assert rows[("still", "on")][5:7] == ["n/a", "[1]"]  # the still clip cannot lag
    assert "[1] lag n/a: the input does not move: nothing to lag behind" in lines
    assert "cut      on       smoothing state reset at frame 3, on the cut frame (cut at frame 3)" in lines
    assert "variants: fresh = fresh noise per frame; off = smoothing off (fixed noise); on = smoothing on" in lines
    assert sum(line.startswith("MET  ") for line in lines) == 5
    assert lines[-1] == "check: all 5 targets met"


@pytest.mark.slow
def test_cli_check_exits_1_when_a_target_is_missed(tmp_path: Path) -> None:
    # No blending at all: smoothing on is smoothing off, so "flicker on <= 0.5 x off" cannot hold.
    (tmp_path / "flat.yaml").write_text("smoothing:\n  input_blend: 0.0\n  output_blend: 0.0\n  max_skip: 0\n")
    args = ("eval", "--preset", "analytic", "--config", "flat.yaml", "--frames", "6", "--size", "64x48")
    result = streamer(*args, "--check", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        "streamer: eval --check: 1 of 5 targets missed: still: flicker on <= 0.5 x off: 1.017 (limit 0.508)"]
    assert "MISS still: flicker on <= 0.5 x off: 1.017 (limit 0.508)" in result.stdout.splitlines()
    assert streamer(*args, cwd=tmp_path).returncode == 0  # without --check a miss is only reported


def test_cli_outputs_go_through_the_one_output_check(tmp_path: Path) -> None:
    """--json and --plot are refused like `streamer file`'s OUT (before anything is read), replaced only
    with -y, and written whole: no partial file stays behind."""
    clip = still_clip(5, 64, 48)
    write_clip(tmp_path / "in.mp4", clip.frames)
    write_clip(tmp_path / "out.mp4", clip.frames)
    (tmp_path / "r.json").write_text("old")
    refused = [
        (["--json", "r.json"], "--json r.json already exists; add --overwrite (-y)"),
        (["--plot", "in.mp4", "-y"], "--plot in.mp4 is the input file in.mp4"),
        (["--json", "missing/r.json"], "the output folder missing does not exist"),
        (["--plot", "."], "--plot . is a folder"),
    ]
    for args, words in refused:
        result = streamer("eval", "in.mp4", "out.mp4", *args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("streamer: error: ") and words in lines[0], lines
        assert result.stdout == ""  # refused before anything was measured
    assert (tmp_path / "r.json").read_text() == "old" and not (tmp_path / "missing").exists()
    result = streamer("eval", "in.mp4", "out.mp4", "--json", "r.json", "--plot", "r.png", "-y", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "flicker" in json.loads((tmp_path / "r.json").read_text())["clips"]["input"]["variants"]["output"]
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4", "out.mp4", "r.json", "r.png"]


def test_cli_describes_an_unreadable_input_as_file_does(tmp_path: Path) -> None:
    """One reader, one description of an input FFmpeg cannot read (eval and file alike)."""
    (tmp_path / "junk.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, np.uint8).tobytes())
    write_clip(tmp_path / "ok.mp4", still_clip(4, 64, 48).frames)
    evaluated = streamer("eval", "junk.mp4", "ok.mp4", cwd=tmp_path)
    filed = streamer("file", "junk.mp4", "x.mp4", "--preset", "passthrough", cwd=tmp_path)
    assert evaluated.returncode == filed.returncode == 2
    assert evaluated.stderr.strip().splitlines() == filed.stderr.strip().splitlines() == [
        "streamer: error: cannot read junk.mp4: not a video file FFmpeg understands "
        "(Invalid data found when processing input)"]
