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
from streamer.eval.metrics import flicker, lag, measure, warp_errors
from streamer.eval.run import frames_to_reset

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
    result = streamer("eval", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "streamer: error: give --preset NAME (e.g. --preset tiny) to run a model, or INPUT OUTPUT to measure files"]
    result = streamer("eval", "missing.mp4", "also-missing.mp4", cwd=tmp_path)
    assert result.returncode == 2 and "missing.mp4 does not exist" in result.stderr
    assert "Traceback" not in result.stderr


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
