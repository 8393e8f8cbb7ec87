"""A local camera through OpenCV, read by the threaded source (latest frame wins, reopened with backoff
when it drops out): this module says only how to open the camera and read a frame."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import cv2
import numpy as np

from streamer.sources.base import SourceError
from streamer.sources.threaded import CLOCK_TIME_BASE, ThreadedSource, clock_pts


def camera_backends() -> list[int]:
    """OpenCV capture backends to try, in order, for this operating system."""
    if sys.platform.startswith("linux"):
        return [cv2.CAP_V4L2]
    if sys.platform == "win32":
        return [cv2.CAP_DSHOW, cv2.CAP_MSMF]  # DirectShow opens faster and honours MJPG
    if sys.platform == "darwin":
        return [cv2.CAP_AVFOUNDATION]
    return [cv2.CAP_ANY]


def list_devices_hint() -> str:
    if sys.platform.startswith("linux"):
        return "list cameras with `v4l2-ctl --list-devices` (webcam:N means /dev/videoN)"
    if sys.platform == "win32":
        return "check the camera in Device Manager and that no other app holds it (webcam:0 is the first)"
    return "check the camera is connected and allowed in System Settings > Privacy (webcam:0 is the first)"


def parse_device(spec: str) -> tuple[int | str, str]:
    """``webcam``, ``webcam:N`` or ``/dev/videoN`` -> (what OpenCV opens, a name for messages)."""
    if spec.startswith("/dev/"):
        match = re.fullmatch(r"/dev/video(\d+)", spec)
        return (int(match.group(1)) if match else spec), spec
    index = spec.partition(":")[2] or "0"
    if not index.isdigit():
        raise SourceError(f"bad camera {spec!r}: use webcam:N with N a number, e.g. webcam:0")
    return int(index), f"webcam:{index}"


class WebcamSource(ThreadedSource):
    """A camera: ``webcam:N`` or ``/dev/videoN``; asks for width, height, fps and MJPG where offered.

    See :class:`~streamer.sources.threaded.ThreadedSource` for the ``read(timeout)`` contract. A camera
    that stops delivering (unplugged, taken by another app) is reopened with backoff; ``reconnects``
    counts the reopenings.
    """

    def __init__(self, spec: str = "webcam:0", *, fps: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.device, self.name = parse_device(spec)
        self.requested_fps = fps

    def _device_path(self) -> str | None:
        if isinstance(self.device, str):
            return self.device
        return f"/dev/video{self.device}" if sys.platform.startswith("linux") else None

    def open(self) -> None:
        path = self._device_path()
        if path is not None and not os.path.exists(path):
            raise SourceError(f"no camera at {path}: the device does not exist; {list_devices_hint()}")
        super().open()

    def _connect(self, first: bool) -> cv2.VideoCapture:
        for backend in camera_backends():
            capture = cv2.VideoCapture(self.device, backend)
            if capture.isOpened():
                self._configure(capture)
                return capture
            capture.release()
        raise SourceError(f"cannot open camera {self.name}: it exists but would not start; {list_devices_hint()}")

    def _configure(self, capture: cv2.VideoCapture) -> None:
        # MJPG first: most USB cameras give full frame rate at high resolutions only compressed.
        capture.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*"MJPG"))
        if self.width:
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        if self.height:
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        if self.requested_fps:
            capture.set(cv2.CAP_PROP_FPS, self.requested_fps)
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the driver's queue would add latency
        self._fps = capture.get(cv2.CAP_PROP_FPS) or self.requested_fps

    def _frames(self, capture: cv2.VideoCapture) -> Iterator[tuple[Any, int | None, Fraction]]:
        while not self._stop.is_set():
            ok, image = capture.read()
            if not ok:
                raise SourceError("the camera stopped delivering frames")
            yield image, clock_pts(), CLOCK_TIME_BASE

    def _disconnect(self, capture: cv2.VideoCapture) -> None:
        capture.release()

    def _no_frame_message(self, reason: str) -> str:
        return f"camera {self.name} opened but delivered no frame; {list_devices_hint()}"

    def _to_rgb(self, raw: np.ndarray) -> np.ndarray:
        image = cv2.cvtColor(raw, cv2.COLOR_BGR2RGB)
        width, height = self.width or image.shape[1], self.height or image.shape[0]
        if (width, height) != (image.shape[1], image.shape[0]):
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        return image
