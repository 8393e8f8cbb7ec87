"""A virtual camera other apps (Zoom, OBS, a browser) can pick: v4l2loopback on Linux, OBS on Windows/macOS."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import cv2
import numpy as np

from streamer.media.frames import Frame
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


def loopback_devices(sysfs: Path = Path("/sys/class/video4linux"), dev: Path = Path("/dev"),
                     proc: Path = Path("/proc")) -> list[tuple[str, str, list[str]]]:
    """(device path, label, programs holding it open) of each virtual (v4l2loopback) video device: what a
    user needs to hear when no device takes our frames. Other users' programs may not be visible."""
    devices: dict[str, str] = {}
    for entry in sorted(sysfs.glob("video*")):
        if "/virtual/" not in f"{entry.resolve()}/":  # cameras hang off USB or PCI; loopback devices do not
            continue
        name = entry / "name"
        devices[str(dev / entry.name)] = name.read_text().strip() if name.is_file() else ""
    holders: dict[str, list[str]] = {path: [] for path in devices}
    if devices:
        for fd_dir in proc.glob("[0-9]*/fd"):
            if fd_dir.parent.name == str(os.getpid()):
                continue
            try:
                targets = {os.readlink(fd) for fd in fd_dir.iterdir()}
                comm = (fd_dir.parent / "comm").read_text().strip()
            except OSError:  # gone, or another user's
                continue
            for path in sorted(targets & holders.keys()):
                holders[path].append(f"{comm} (pid {fd_dir.parent.name})")
    return [(path, label, holders[path]) for path, label in devices.items()]


def busy_device_hint(wanted: str | None, devices: list[tuple[str, str, list[str]]]) -> str | None:
    """One line when loopback devices exist but none took our frames: they are in use by another program."""
    devices = [d for d in devices if wanted is None or d[0] == wanted]
    if not devices:
        return None
    parts = []
    for path, label, users in devices:
        named = f"{path} ({label})" if label else path
        parts.append(f"{named} is in use by {', '.join(users)}" if users else
                     f"{named} is in use by another program (not visible to this user; `sudo fuser -v {path}` "
                     "names it)")
    return (f"virtual camera: {'; '.join(parts)}; close that program's virtual camera, or add a device "
            "('sudo modprobe -r v4l2loopback && sudo modprobe v4l2loopback devices=2 exclusive_caps=1') and "
            "pass virtualcam:/dev/videoN")


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
                # With exclusive_caps=1 a device another program writes to stops offering output: pyvirtualcam
                # then calls it missing. Say it is busy, and with whom, when that can be seen.
                no_output = any("loopback device found" in r or "not a video output device" in r for r in reasons)
                busy = busy_device_hint(self.device, loopback_devices()) if no_output else None
                raise SinkError(busy or missing_device_hint("; ".join(reasons))) from None
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
