"""Virtual camera (through pyvirtualcam's own Camera with a real file-writing backend), preview, sink factory."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import pytest
import pyvirtualcam

from pipelines.passthrough import PassthroughPipeline
from streamer.engine.runtime import Runtime
from streamer.engine.worker import GpuWorker
from streamer.media.frames import Frame
from streamer.observe.stats import RunStats
from streamer.sinks.av_sink import AvSink
from streamer.sinks.base import SinkError
from streamer.sinks.factory import make_sink, make_sinks
from streamer.sinks.preview import PreviewSink
from streamer.sinks.virtualcam import VirtualCamSink
from streamer.sources.testsrc import TestSource, read_marks


def file_camera_backend(path: Path) -> type:
    """A pyvirtualcam backend class that appends every frame it is sent to ``path`` as raw RGB."""

    class FileCamera:
        def __init__(self, *, width: int, height: int, fps: float, fourcc: int, device: str | None, **kw) -> None:
            if fourcc != pyvirtualcam.util.encode_fourcc(pyvirtualcam.PixelFormat.RGB.value):
                raise RuntimeError("FileCamera takes RGB only")
            self.width, self.height, self.fps = width, height, fps
            self._device = device or str(path)
            self._file = open(path, "wb")  # noqa: SIM115 - closed in close(), as pyvirtualcam requires

        def send(self, frame: np.ndarray) -> None:
            self._file.write(frame.tobytes())

        def close(self) -> None:
            self._file.close()

        def device(self) -> str:
            return self._device

        def native_fourcc(self) -> int:
            return pyvirtualcam.util.encode_fourcc(pyvirtualcam.PixelFormat.RGB.value)

    return FileCamera


@pytest.fixture
def file_backend(tmp_path: Path):
    """Registers the file backend as "streamer-test-file"; yields the file it writes; unregisters it."""
    raw = tmp_path / "camera.rgb"
    pyvirtualcam.register_backend("streamer-test-file", file_camera_backend(raw))
    try:
        yield raw
    finally:
        pyvirtualcam.camera.BACKENDS.pop("streamer-test-file", None)


def test_virtualcam_sends_every_frame_through_pyvirtualcam(file_backend: Path) -> None:
    raw = file_backend
    sink = VirtualCamSink(backend="streamer-test-file")
    stats = RunStats()
    worker = GpuWorker(PassthroughPipeline())
    try:
        snap = Runtime(TestSource(320, 180, 30.0), [sink], worker, stats=stats, duration=2.0).run()
    finally:
        worker.close()
    frames = np.fromfile(raw, np.uint8).reshape(-1, 180, 320, 3)
    indices = [read_marks(f) for f in frames]
    assert None not in indices
    indices = [m[0] for m in indices]
    assert len(indices) == snap["sinks"]["virtualcam"]["written"] >= 50
    assert all(b > a for a, b in zip(indices, indices[1:], strict=False))
    assert indices[-1] - indices[0] + 1 - len(indices) == snap["dropped"]  # every gap is a counted drop


def test_virtualcam_scales_frames_of_another_size(file_backend: Path) -> None:
    raw = file_backend
    sink = VirtualCamSink(backend="streamer-test-file")
    sink.open(320, 180, 30.0)
    with TestSource(640, 360, 30.0) as source:
        sink.write(source.read())
    sink.close()
    frame = np.fromfile(raw, np.uint8).reshape(180, 320, 3)
    assert read_marks(frame)[0] == 0


@pytest.mark.skipif(platform.system() != "Linux" or any(Path("/dev").glob("video*")),
                    reason="needs Linux without a v4l2loopback device")
def test_virtualcam_without_a_device_says_how_to_get_one() -> None:
    sink = VirtualCamSink()
    with pytest.raises(SinkError) as info:
        sink.open(640, 360, 30.0)
    message = str(info.value)
    assert "\n" not in message
    assert "sudo modprobe v4l2loopback devices=1 exclusive_caps=1 card_label=streamer" in message
    with pytest.raises(SinkError, match="/dev/video10 does not exist"):
        VirtualCamSink("/dev/video10").open(640, 360, 30.0)


def test_preview_without_a_display_explains_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    if platform.system() == "Linux":
        with pytest.raises(SinkError, match="no display") as info:
            make_sink("preview")
        assert "\n" not in str(info.value)
    monkeypatch.setenv("DISPLAY", ":99")
    with pytest.raises(SinkError) as info:  # this venv has opencv-python-headless: no windows at all
        PreviewSink().open(320, 180, 30.0)
    assert "opencv-python" in str(info.value) or "cannot open a window" in str(info.value)


def test_factory_maps_specs_to_sinks(tmp_path: Path) -> None:
    assert isinstance(make_sink("virtualcam"), VirtualCamSink)
    assert make_sink("virtualcam:/dev/video10").device == "/dev/video10"
    file_sink = make_sink(str(tmp_path / "out.mkv"), crf=30)
    assert isinstance(file_sink, AvSink) and file_sink.crf == 30
    assert isinstance(make_sink("udp://127.0.0.1:5999"), AvSink)
    assert isinstance(make_sink("srt://127.0.0.1:9000?mode=listener"), AvSink)


@pytest.mark.parametrize(("spec", "words"), [
    ("", "empty"),
    ("ftp://127.0.0.1/x", "unsupported protocol"),
    ("out.txt", "not something streamer can write"),
    ("/no/such/folder/out.mp4", "does not exist"),
])
def test_factory_rejects_bad_specs_in_one_line(spec: str, words: str) -> None:
    with pytest.raises(ValueError, match=words) as info:
        make_sink(spec)
    assert "\n" not in str(info.value)


def test_factory_needs_a_sink() -> None:
    with pytest.raises(ValueError, match="at least one --sink"):
        make_sinks([])


def test_a_failing_sink_does_not_stop_the_others(tmp_path: Path) -> None:
    class BrokenAfterFive(AvSink):
        def write(self, frame: Frame) -> None:
            if self.frames_written >= 5:
                raise SinkError("the receiver went away")
            super().write(frame)

    good, broken = AvSink(tmp_path / "good.mkv"), BrokenAfterFive(tmp_path / "broken.mkv")
    worker = GpuWorker(PassthroughPipeline())
    try:
        snap = Runtime(TestSource(160, 96, 30.0), [good, broken], worker, duration=1.5).run()
    finally:
        worker.close()
    assert snap["sinks"][good.name]["written"] >= 35
    assert snap["sinks"][broken.name]["written"] == 5 and snap["sinks"][broken.name]["errors"] == 1
