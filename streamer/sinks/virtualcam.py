"""A virtual camera other apps (Zoom, OBS, a browser) can pick: v4l2loopback on Linux, OBS on Windows/macOS."""

from __future__ import annotations

import platform

import cv2
import numpy as np

from streamer.frames import Frame
from streamer.sinks.base import Sink, SinkError


def missing_device_hint(reason: str = "") -> str:
    """One line telling how to get a virtual camera device on this system."""
    system = platform.system()
    if system == "Linux":
        where = reason or "no v4l2loopback device found"
        return (f"virtual camera: {where}; load one with "
                "'sudo modprobe v4l2loopback devices=1 exclusive_caps=1 card_label=streamer' "
                "(Debian/Ubuntu package v4l2loopback-dkms), then pass virtualcam or virtualcam:/dev/videoN")
    return ("virtual camera: no OBS Virtual Camera found; install OBS Studio 26 or newer "
            "(https://obsproject.com), start its virtual camera once, then try again")


class VirtualCamSink(Sink):
    """Sends each frame with ``pyvirtualcam.Camera.send``; the runtime does the pacing.

    ``backend`` picks a pyvirtualcam backend by name (None = the platform's own); frames of another size
    than the camera was opened with are scaled to it.
    """

    live = True

    def __init__(self, device: str | None = None, *, backend: str | None = None) -> None:
        self.device = device
        self.backend = backend
        self.name = f"virtualcam:{device}" if device else "virtualcam"
        self._camera = None
        self._size: tuple[int, int] | None = None

    def open(self, width: int, height: int, fps: float) -> None:
        import pyvirtualcam

        try:
            self._camera = pyvirtualcam.Camera(width, height, fps, fmt=pyvirtualcam.PixelFormat.RGB,
                                               device=self.device, backend=self.backend)
        except KeyError:
            raise SinkError(f"virtual camera: no pyvirtualcam backend named {self.backend!r}") from None
        except RuntimeError as exc:
            # pyvirtualcam lists why each backend failed, one line each, as "'name' backend: why".
            reasons = [line.split("backend: ", 1)[-1].split(". ")[0].rstrip(".")
                       for line in str(exc).splitlines()]
            if self.backend is None:
                raise SinkError(missing_device_hint("; ".join(reasons))) from None
            raise SinkError(f"virtual camera: {'; '.join(reasons)}") from None
        self._size = (width, height)

    def write(self, frame: Frame) -> None:
        if self._camera is None or self._size is None:
            raise SinkError("virtual camera: write() before open()")
        image = frame.image
        if (image.shape[1], image.shape[0]) != self._size:
            image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
        self._camera.send(np.ascontiguousarray(image))

    def close(self) -> None:
        if self._camera is not None:
            self._camera.close()
            self._camera = None
