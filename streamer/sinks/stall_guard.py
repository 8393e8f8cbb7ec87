"""Unblocks a network write stuck on a peer that stopped reading (used by the AvSink for RTSP and TCP)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

# A network open or write may stall this long before the sink gives up on the peer.
NETWORK_STALL_SECONDS = 5.0


def _socket_fds() -> set[int]:
    """This process's open sockets (Linux /proc; empty elsewhere)."""
    fds: set[int] = set()
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return fds
    for name in names:
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                fds.add(int(name))
        except (OSError, ValueError):
            continue
    return fds


class StallGuard:
    """Unblocks a TCP write stuck on a peer that stopped reading.

    FFmpeg's RTSP muxer has no write timeout and PyAV installs no interrupt callback on output, so a
    stalled receiver would block ``write()`` forever. Only calls that release the GIL (encode, mux) can
    be guarded: FFmpeg's header and trailer run holding it. While a call runs under ``busy()``, a watchdog
    thread checks its age; past ``limit`` seconds it shuts down the sockets this sink opened to ``port``
    (found in /proc/self/fd), and the blocked FFmpeg call returns with an error.
    """

    def __init__(self, port: int, limit: float = NETWORK_STALL_SECONDS) -> None:
        self.port, self.limit = port, limit
        self.tripped = False
        self._sockets_before = _socket_fds()
        self._busy_since: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="av-sink-stall-guard", daemon=True)
        self._thread.start()

    @contextmanager
    def busy(self) -> Iterator[None]:
        self._busy_since = time.monotonic()
        try:
            yield
        finally:
            self._busy_since = None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            since = self._busy_since
            if since is not None and time.monotonic() - since > self.limit:
                self.tripped = True
                self._shut_down_sockets()
                return

    def _shut_down_sockets(self) -> None:
        for fd in _socket_fds() - self._sockets_before:
            try:
                sock = socket.socket(fileno=os.dup(fd))
            except OSError:
                continue
            try:
                if sock.type == socket.SOCK_STREAM and sock.getpeername()[1] == self.port:
                    sock.shutdown(socket.SHUT_RDWR)  # acts on the shared socket, so FFmpeg's fd fails too
            except (OSError, IndexError, TypeError):
                pass
            finally:
                sock.close()
