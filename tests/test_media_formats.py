"""Video files as people have them, through the real `streamer file` CLI: phone rotation, colour tags,
WebM (VP9 + Opus), odd sizes, encoder presets and the encoders' own log lines; `run` says it drops audio.

Ground truth comes from a second implementation where there is one: Debian's ffmpeg/ffprobe (5.1) show
how a player turns a rotated clip and which colour tags a file carries.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from av.video.reformatter import Colorspace
from media import first_frame, make_clip, probe

from pipelines.frames import FramePipeline
from streamer.engine.file_job import stylize_file
from streamer.eval.clips import read_clip
from streamer.sinks.av_sink import AvSink
from streamer.sinks.base import SinkError
from streamer.sources import open_source

REPO = Path(__file__).resolve().parent.parent
PATCH = (200, 40, 60)  # a saturated red: BT.601 and BT.709 disagree about it by over 10 levels


def streamer(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamer", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO)})


def still_clip(path: Path, image: np.ndarray, *, frames: int = 8, rotation: int = 0,
               colour: dict[str, int] | None = None) -> Path:
    """``frames`` copies of ``image`` as H.264; ``rotation`` goes into the display matrix (as a phone writes
    it, counter-clockwise degrees); ``colour`` (colorspace, primaries, trc, range as FFmpeg numbers) tags the
    stream and picks the RGB->YUV matrix and range the samples are made with."""
    height, width = image.shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "12"}
        if rotation:
            stream.set_display_rotation(rotation)
        if colour:
            ctx = stream.codec_context
            ctx.colorspace, ctx.color_primaries = colour["colorspace"], colour["primaries"]
            ctx.color_trc, ctx.color_range = colour["trc"], colour["range"]
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if colour:
                matrix = Colorspace.ITU709 if colour["colorspace"] == 1 else Colorspace.ITU601
                frame = frame.reformat(format="yuv420p", dst_colorspace=matrix, dst_color_range=colour["range"])
                frame.colorspace, frame.color_range = colour["colorspace"], colour["range"]
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def ffprobe_video(path: Path) -> dict[str, Any]:
    done = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_streams", "-of", "json",
                           str(path)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)["streams"][0]


def shown_by_ffmpeg(path: Path) -> np.ndarray:
    """The first frame as Debian's ffmpeg shows it (it turns rotated video, as players do), grey levels."""
    info = ffprobe_video(path)
    turned = any(abs(round(float(s.get("rotation", 0)))) % 180 == 90 for s in info.get("side_data_list", []))
    width, height = (info["height"], info["width"]) if turned else (info["width"], info["height"])
    done = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-frames:v", "1", "-f", "rawvideo",
                           "-pix_fmt", "gray", "-"], capture_output=True, check=True)
    return np.frombuffer(done.stdout, np.uint8).reshape(height, width)


def corner_picture(width: int = 320, height: int = 240) -> np.ndarray:
    """Dark, with a bright block in the top-left corner and a dimmer one along the right edge: every
    turn and flip of it looks different."""
    image = np.full((height, width, 3), 20, np.uint8)
    image[:50, :70] = 250
    image[100:200, -30:] = 140
    return image


class Recorder(FramePipeline):
    """A pipeline that keeps the shape of what the model was given."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, frames: np.ndarray, stream_ids: Sequence[str] | None = None) -> np.ndarray:
        self.shapes.append(frames.shape[1:])
        return frames

    def update(self, stream_id: str = "default", **params: Any) -> None:
        pass

    def remove_stream(self, stream_id: str) -> None:
        pass


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotated_phone_clip_is_written_upright(tmp_path: Path, rotation: int) -> None:
    src = still_clip(tmp_path / "phone.mp4", corner_picture(), rotation=rotation)
    assert float(ffprobe_video(src)["side_data_list"][0]["rotation"]) % 360 == rotation % 360  # a real matrix
    shown = shown_by_ffmpeg(src)
    out = tmp_path / "out.mp4"
    done = streamer("file", str(src), str(out), "--preset", "passthrough", "--no-progress")
    assert done.returncode == 0, done.stderr
    written = first_frame(out)
    assert (written.width, written.height) == (shown.shape[1], shown.shape[0])
    assert written.rotation == 0 and "side_data_list" not in ffprobe_video(out)  # upright, no tag left
    # The picture sits as a player showed the input: same place for the bright and the dim block.
    assert np.abs(written.to_ndarray(format="gray").astype(int) - shown.astype(int)).mean() < 4


def test_the_model_sees_the_picture_upright_and_size_is_as_shown(tmp_path: Path) -> None:
    src = still_clip(tmp_path / "phone.mp4", corner_picture(), rotation=-90, frames=4)
    recorder = Recorder()
    summary = stylize_file(src, tmp_path / "out.mkv", recorder, batch=2)
    assert set(recorder.shapes) == {(320, 240, 3)}  # portrait: taller than wide
    assert (summary.width, summary.height) == (240, 320)
    done = streamer("file", str(src), str(tmp_path / "small.mp4"), "--preset", "passthrough", "--no-progress",
                    "--size", "120x160")  # the size as shown, not as stored
    assert done.returncode == 0, done.stderr
    info = probe(tmp_path / "small.mp4")
    assert (info.width, info.height) == (120, 160)


@pytest.mark.parametrize("realtime", [False, True])
def test_run_sources_turn_a_rotated_file_upright(tmp_path: Path, realtime: bool) -> None:
    src = still_clip(tmp_path / "phone.mp4", corner_picture(), rotation=90, frames=4)
    shown = shown_by_ffmpeg(src)
    source = open_source(str(src), realtime=realtime)
    source.open()
    try:
        frame = source.read(timeout=10)
    finally:
        source.close()
    assert frame is not None and frame.image.shape == (*shown.shape, 3)
    assert np.abs(frame.image.mean(axis=2) - shown).mean() < 4


@pytest.mark.parametrize("colour, names", [
    ({"colorspace": 1, "primaries": 1, "trc": 1, "range": 1}, ("bt709", "bt709", "bt709", "tv")),
    ({"colorspace": 6, "primaries": 6, "trc": 6, "range": 2}, ("smpte170m", "smpte170m", "smpte170m", "pc")),
])
def test_colour_tags_carry_over_and_colours_hold(tmp_path: Path, colour: dict[str, int],
                                                 names: tuple[str, ...]) -> None:
    image = np.full((240, 320, 3), 30, np.uint8)
    image[60:180, 80:240] = PATCH
    src = still_clip(tmp_path / "tagged.mp4", image, colour=colour)
    tags = ("color_space", "color_primaries", "color_transfer", "color_range")
    assert tuple(ffprobe_video(src)[tag] for tag in tags) == names
    out = tmp_path / "out.mp4"
    done = streamer("file", str(src), str(out), "--preset", "passthrough", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert tuple(ffprobe_video(out).get(tag) for tag in tags) == names
    # Decoded by the tags (as players do), the patch keeps its colour: RGB went back to YUV with the same
    # matrix and range it came from.
    patch = first_frame(out).to_ndarray(format="rgb24")[100:140, 120:200].reshape(-1, 3).mean(axis=0)
    assert np.abs(patch - np.array(PATCH)).max() < 6, patch


def test_a_piped_input_keeps_its_rotation_and_colour_tags(tmp_path: Path) -> None:
    """`streamer file <(...) out.mp4`: the input is a pipe, readable once. Rotation and colour tags come
    from the frames the job decodes anyway (not from opening the input a second time)."""
    colour = {"colorspace": 1, "primaries": 1, "trc": 1, "range": 2}
    src = still_clip(tmp_path / "phone.mp4", corner_picture(), rotation=90, frames=6, colour=colour)
    shown = shown_by_ffmpeg(src)
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["ffmpeg", "-v", "error", "-y", "-i", str(src), "-c", "copy", "-movflags",
                               "frag_keyframe+empty_moov", "-f", "mp4", str(fifo)], stdin=subprocess.DEVNULL)
    try:
        out = tmp_path / "out.mp4"
        done = streamer("file", str(fifo), str(out), "--preset", "passthrough", "--no-progress", timeout=120)
        assert done.returncode == 0, done.stderr
        assert writer.wait(timeout=30) == 0
    finally:
        writer.kill()
        writer.wait()
    written = first_frame(out)
    assert (written.width, written.height) == (shown.shape[1], shown.shape[0])  # upright: 240x320
    assert np.abs(written.to_ndarray(format="gray").astype(int) - shown.astype(int)).mean() < 4
    tags = ffprobe_video(out)
    assert (tags["color_space"], tags["color_range"]) == ("bt709", "pc")


def test_eval_reads_a_rotated_clip_as_shown(tmp_path: Path) -> None:
    """eval compares an input with `streamer file`'s output, which is written upright: both are read as a
    player shows them, by the same reader as the file job."""
    src = still_clip(tmp_path / "phone.mp4", corner_picture(), rotation=-90, frames=3)
    shown = shown_by_ffmpeg(src)
    frames, fps = read_clip(src)
    assert frames.shape == (3, *shown.shape, 3) and fps == pytest.approx(30)
    assert np.abs(frames[0].mean(axis=2) - shown).mean() < 4


def test_webm_gets_vp9_and_opus_in_sync(tmp_path: Path) -> None:
    src = make_clip(tmp_path / "clip.mp4", seconds=3, size=(320, 240), audio=True)  # H.264 + AAC
    out = tmp_path / "out.webm"
    done = streamer("file", str(src), str(out), "--preset", "passthrough", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "audio packets transcoded to libopus" in done.stderr
    with av.open(str(out)) as container:
        assert [(s.type, s.codec_context.name) for s in container.streams] == [("video", "vp9"), ("audio", "opus")]
    before, after = probe(src), probe(out)
    assert after.frames == before.frames == 90
    assert after.video_seconds == pytest.approx(before.video_seconds, abs=0.001)  # WebM counts milliseconds
    a, b = decoded_audio(src), decoded_audio(out)
    # The first sound plays at the same moment relative to the first picture, and lasts as long.
    assert b[0] - after.video_start == pytest.approx(a[0] - before.video_start, abs=0.002)
    assert b[1] == pytest.approx(a[1], abs=0.021)


@pytest.mark.parametrize("out_name, audio_codec", [
    ("out.mp4", "aac"),  # FFmpeg would write PCM into MP4; browsers and QuickTime would not play it
    ("out.ts", "aac"),  # MPEG-TS would carry PCM only as unplayable data
    ("out.mkv", "pcm_s16le"),  # Matroska holds PCM: copied unchanged
])
def test_audio_is_copied_where_players_take_it_else_transcoded(tmp_path: Path, out_name: str,
                                                                audio_codec: str) -> None:
    src = tmp_path / "camera.mov"  # H.264 with 44.1 kHz PCM, as cameras and screen recorders write
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=30", "-f", "lavfi",
                    "-i", "sine=frequency=440:sample_rate=44100", "-t", "1", "-c:v", "libx264", "-pix_fmt",
                    "yuv420p", "-c:a", "pcm_s16le", str(src)], check=True, capture_output=True)
    out = tmp_path / out_name
    done = streamer("file", str(src), str(out), "--preset", "passthrough", "--no-progress")
    assert done.returncode == 0, done.stderr
    with av.open(str(out)) as container:
        assert container.streams.audio[0].codec_context.name == audio_codec
    a, b = decoded_audio(src), decoded_audio(out)
    aac_frame = 1024 / 44100
    if out_name != "out.ts":  # MPEG-TS cannot mark the encoder's priming samples, copied AAC neither
        assert b[0] - probe(out).video_start == pytest.approx(a[0] - probe(src).video_start, abs=0.002)
    frames_added = 2 if out_name == "out.ts" else 1  # the last frame's padding (and TS: the priming)
    assert b[1] == pytest.approx(a[1], abs=frames_added * aac_frame + 0.001)


def decoded_audio(path: Path) -> tuple[float, float]:
    """(start, duration) in seconds of the sound a player plays (priming and pre-skip removed)."""
    with av.open(str(path)) as container:
        frames = list(container.decode(audio=0))
    start = float(frames[0].pts * frames[0].time_base)
    return start, sum(f.samples for f in frames) / frames[0].sample_rate


def test_odd_size_writes_even_yuv420p_and_says_so(tmp_path: Path) -> None:
    src = make_clip(tmp_path / "clip.mp4", seconds=0.5, size=(320, 240))
    out = tmp_path / "out.mp4"
    done = streamer("file", str(src), str(out), "--preset", "passthrough", "--no-progress", "--size", "321x181")
    assert done.returncode == 0, done.stderr
    notes = [line for line in done.stderr.splitlines() if "321x181" in line]
    assert len(notes) == 1 and "320x180" in notes[0], done.stderr
    info = ffprobe_video(out)
    assert (info["width"], info["height"], info["pix_fmt"]) == (320, 180, "yuv420p")


@pytest.mark.parametrize("out_name, extra, expected", [
    ("out.mp4", [], "veryfast"),  # libx264 by container: its preset names
    ("out.webm", [], "no presets"),  # libvpx-vp9 has none
    ("out.mkv", ["--codec", "libsvtav1"], "number from"),
])
def test_bad_encoder_preset_is_one_line_listing_valid_ones(tmp_path: Path, out_name: str, extra: list[str],
                                                           expected: str) -> None:
    src = make_clip(tmp_path / "clip.mp4", seconds=0.2, size=(64, 64))
    out = tmp_path / out_name
    done = streamer("file", str(src), str(out), "--preset", "passthrough", "--encoder-preset", "nosuch", *extra,
                    timeout=60)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("streamer: error:") and expected in lines[0], done.stderr
    assert "nosuch" in lines[0] and "container" not in lines[0]
    assert not out.exists()


def test_an_encoder_refusing_its_options_is_not_blamed_on_the_container(tmp_path: Path) -> None:
    with pytest.raises(SinkError, match="refused its options") as err:
        AvSink(str(tmp_path / "a.mp4"), options={"preset": "nosuch"}).open(64, 64, 30)
    assert "container" not in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("codec, banner", [("libx265", "x265 [info]"), ("libsvtav1", "Svt[info]")])
def test_encoder_banners_only_with_verbose(tmp_path: Path, codec: str, banner: str) -> None:
    src = make_clip(tmp_path / "clip.mp4", seconds=0.2, size=(64, 64))
    quiet = streamer("file", str(src), str(tmp_path / "quiet.mkv"), "--preset", "passthrough", "--no-progress",
                     "--codec", codec)
    assert quiet.returncode == 0, quiet.stderr
    assert banner not in quiet.stderr
    assert [line for line in quiet.stderr.splitlines() if line.strip()] == \
        [line for line in quiet.stderr.splitlines() if line.startswith("wrote ")]
    env_free = {k: v for k, v in os.environ.items() if k != "SVT_LOG"}
    loud = subprocess.run([sys.executable, "-m", "streamer", "-v", "file", str(src), str(tmp_path / "loud.mkv"),
                           "--preset", "passthrough", "--no-progress", "--codec", codec], capture_output=True,
                          text=True, timeout=240, stdin=subprocess.DEVNULL, env={**env_free, "PYTHONPATH": str(REPO)})
    assert loud.returncode == 0, loud.stderr
    assert banner in loud.stderr


def test_run_records_a_file_sources_audio(tmp_path: Path) -> None:
    """`run` used to warn that a file's sound would be lost; it now records it (sync: tests/test_av_live.py)."""
    with_audio = make_clip(tmp_path / "talk.mp4", seconds=0.5, size=(64, 64), audio=True)
    silent = make_clip(tmp_path / "silent.mp4", seconds=0.5, size=(64, 64))
    for src, sound in ((with_audio, True), (silent, False)):
        out = tmp_path / f"{src.stem}-out.mp4"
        done = streamer("run", "--source", str(src), "--sink", str(out), "--preset", "passthrough")
        assert done.returncode == 0, done.stderr
        assert "warning" not in done.stderr and "note" not in done.stderr
        assert (probe(out).audio_duration > 0.4) == sound
