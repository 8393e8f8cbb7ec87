"""The A/V sync measure (streamer.eval.av_sync) on real encoded clips with a known, deliberately introduced
offset, in each container/codec pair, at constant and variable frame rate, and after stylization."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from streamer.eval.av_sync import decoded, make_sync_clip, measure, measure_file

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 0.002  # the measure itself: Opus in Matroska is timed in whole milliseconds


@pytest.mark.parametrize("name", ["clip.mp4", "clip.mkv", "clip.webm", "clip.ts"])
@pytest.mark.parametrize("offset", [0.0, 0.1, -0.05])
def test_a_known_offset_is_measured_in_every_container(tmp_path: Path, name: str, offset: float) -> None:
    clip = make_sync_clip(tmp_path / name, seconds=4, audio_offset=offset)
    report = measure_file(clip.path)
    assert report.events == len(clip.events) == 4
    start = report.flashes[0] - clip.events[0]  # MPEG-TS starts its clock a little after 0
    assert [t - start for t in report.flashes] == pytest.approx(clip.events, abs=1e-6)
    assert report.offsets == pytest.approx([offset] * 4, abs=TOLERANCE)
    assert report.longest_audio_gap <= TOLERANCE


def test_variable_frame_rate_flashes_keep_their_own_pts(tmp_path: Path) -> None:
    clip = make_sync_clip(tmp_path / "vfr.mp4", seconds=4, vfr=True, audio_offset=0.03)
    spacing = np.diff([t for t, _ in decoded(clip.path)[0]])
    assert spacing.min() == pytest.approx(1 / 30, abs=1e-3) and spacing.max() == pytest.approx(1.5 / 30, abs=1e-3)
    report = measure_file(clip.path)
    assert report.flashes == pytest.approx(clip.events, abs=1e-6)
    assert report.offsets == pytest.approx([0.03] * len(clip.events), abs=TOLERANCE)


def test_decoded_frames_and_samples_show_dropped_frames_and_a_hole_in_the_audio(tmp_path: Path) -> None:
    """The helper a WebRTC receiver uses: frames and samples already decoded. Dropping video frames around a
    flash moves nothing; cutting 100 ms out of the audio shows as the longest gap."""
    clip = make_sync_clip(tmp_path / "clip.mp4", seconds=4, audio_offset=-0.02)
    video, audio = decoded(clip.path)
    flash_frames = {round(t * 30) for t in clip.events}
    kept = [v for i, v in enumerate(video) if i % 3 or i in flash_frames]  # a slow model: 2 of 3 frames
    rate = audio[0][2]
    holed = [chunk for chunk in audio if not 2.0 <= chunk[0] < 2.1]
    report = measure(kept, holed)
    assert report.offsets == pytest.approx([-0.02] * 4, abs=TOLERANCE)
    assert 0.09 <= report.longest_audio_gap <= 0.1 + 2 * 1024 / rate
    assert report.video_frames == len(kept)


def test_no_flash_or_no_click_pairs_nothing(tmp_path: Path) -> None:
    flat_video = [(i / 30, 30.0 + (i % 2)) for i in range(90)]  # flicker of 1 level is not a flash
    silence = [(i * 0.02, np.zeros(960, np.float32), 48_000) for i in range(150)]
    report = measure(flat_video, silence)
    assert report.flashes == [] and report.clicks == [] and report.events == 0
    assert "no paired events" in report.summary()


@pytest.mark.parametrize("preset", ["analytic", "tiny"])
def test_flashes_survive_stylization(tmp_path: Path, preset: str) -> None:
    """The presets' outputs still show every flash on its own frame (the tiny model's random weights turn the
    white frame darker than its grey, which counts as well), and `streamer file` keeps the clicks with them."""
    clip = make_sync_clip(tmp_path / "in.mp4", seconds=3, audio_offset=0.0)
    out = tmp_path / "out.mp4"
    done = subprocess.run([sys.executable, "-m", "streamer", "file", str(clip.path), str(out), "--preset", preset],
                          capture_output=True, text=True, timeout=240,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    report = measure_file(out)
    assert report.flashes == pytest.approx(clip.events, abs=1e-3)
    assert report.offsets == pytest.approx([0.0] * len(clip.events), abs=TOLERANCE)
