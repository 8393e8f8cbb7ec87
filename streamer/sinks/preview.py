"""A local window showing the output with its frame rate; needs a display and OpenCV with GUI support."""

from __future__ import annotations

import os
import platform
import time

import cv2

from streamer.media.frames import Frame
from streamer.observe.stats import Rate
from streamer.sinks.base import Sink, SinkError

WINDOW = "streamer preview (q to quit)"


def preview_unavailable_reason() -> str | None:
    """None when a preview window can open here, else one line saying why not and what to do."""
    if platform.system() == "Linux" and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return ("preview: no display here (DISPLAY is not set); run on a desktop session or drop "
                "--sink preview and record to a file instead")
    info = cv2.getBuildInformation()
    gui_line = next((line for line in info.splitlines() if line.strip().startswith("GUI:")), "GUI: NONE")
    if gui_line.split(":", 1)[1].strip().upper() in ("", "NONE"):
        return ("preview: this OpenCV has no window support (opencv-python-headless); "
                "install it with 'pip uninstall opencv-python-headless && pip install opencv-python'")
    return None


class PreviewSink(Sink):
    """An OpenCV window; ``q`` or Esc in it, or closing it, asks the runtime to stop (``stop_requested``)."""

    live = True
    name = "preview"

    def __init__(self) -> None:
        self.stop_requested = False
        self._rate = Rate()
        self._open = False

    def open(self, width: int, height: int, fps: float) -> None:
        reason = preview_unavailable_reason()
        if reason:
            raise SinkError(reason)
        try:
            cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)
            cv2.resizeWindow(WINDOW, width, height)
        except cv2.error as exc:
            raise SinkError(f"preview: cannot open a window: {str(exc).strip().splitlines()[-1]}") from None
        self._open = True

    def write(self, frame: Frame) -> None:
        now = time.monotonic()
        self._rate.tick(now)
        fps = f"{self._rate.per_second(now):.0f} fps"
        bgr = cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR)
        cv2.putText(bgr, fps, (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 0, 0), 4)
        cv2.putText(bgr, fps, (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2)
        cv2.imshow(WINDOW, bgr)
        key = cv2.waitKey(1) & 0xFF
        if key in (ord("q"), 27) or cv2.getWindowProperty(WINDOW, cv2.WND_PROP_VISIBLE) < 1:
            self.stop_requested = True

    def close(self) -> None:
        if self._open:
            cv2.destroyWindow(WINDOW)
            self._open = False
