"""How `streamer file` and `streamer run` stop on a signal, and the exit status they then return.

SIGINT (Ctrl-C), SIGTERM (``timeout``, systemd, ``docker stop``) and SIGHUP (the terminal closed) all stop
a job the same way: no new frames are read, the frames in flight are finished, every output is closed and
renamed into place (a recording plays, audio in sync), and the exit status is 128 + the signal's number
(130, 143, 129). A second Ctrl-C abandons the clean stop: unfinished outputs are removed, an existing OUT
is left as it was, exit status 130. Further SIGTERM/SIGHUP while stopping change nothing.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

EXIT_STATUS_HELP = ("exit status: 0 when the job completed; 128 + the signal's number when SIGINT (Ctrl-C, "
                    "130), SIGTERM (143) or SIGHUP (129) stopped it, with every output finished and playable; "
                    "130 when a second Ctrl-C abandoned the stop (unfinished outputs are removed, an existing "
                    "file is left as it was); 2 for something that cannot be opened or a wrong setting (one "
                    "line on stderr); 1 for an unexpected failure.")


class StopOnSignals:
    """While entered (in the main thread), the first stop signal calls ``stop()`` once and is remembered in
    ``signum``; a second SIGINT raises KeyboardInterrupt (the caller abandons the stop). A signal that was
    ignored when the job started (``nohup``) stays ignored."""

    def __init__(self, stop: Callable[[], None], message: str = "finishing the frames in flight, closing outputs"
                 ) -> None:
        self._stop = stop
        self._message = message
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def exit_status(self) -> int:
        """0 without a signal, else 128 + the number of the signal that stopped the job."""
        return 0 if self.signum is None else 128 + self.signum

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.signum = signum
        try:  # after SIGHUP the terminal may be gone
            print(f"\nstreamer: {signal.Signals(signum).name} received, stopping ({self._message})...",
                  file=sys.stderr, flush=True)
        except OSError:
            pass
        self._stop()

    def __enter__(self) -> StopOnSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                if signal.getsignal(signum) is signal.SIG_IGN:
                    continue  # nohup, or a background job: the user asked for this signal to be ignored
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
