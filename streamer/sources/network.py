"""Network streams (RTSP, HTTP(S) MJPEG/HLS, SRT, UDP, RTMP) read live through PyAV, reconnecting forever."""

from __future__ import annotations

import socket
import time
from typing import Any
from urllib.parse import urlsplit

import av
import av.error

from streamer.media.av_io import describe_error
from streamer.sources.av_live import AvLiveSource, low_latency_options
from streamer.sources.base import SourceError

NETWORK_SCHEMES = ("rtsp", "rtsps", "http", "https", "srt", "udp", "rtmp")


class NetworkSource(AvLiveSource):
    """An RTSP/HTTP(S) (MJPEG, HLS)/SRT/UDP/RTMP stream, opened for low latency, reconnecting forever.

    See :class:`ThreadedSource` for the ``read(timeout)`` contract. ``transport`` is the RTSP transport
    ("tcp" is robust through NAT and loss; "udp" can be lower latency on clean networks).
    """

    def __init__(self, url: str, *, transport: str = "tcp", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if transport not in ("tcp", "udp"):
            raise SourceError(f"unknown RTSP transport {transport!r}: use tcp or udp")
        self.url = url
        self.scheme = urlsplit(url).scheme.lower()
        self.transport = transport
        self.name = url

    def _connect(self, first: bool) -> av.container.InputContainer:
        started = time.monotonic()
        try:
            return av.open(
                self.url,
                options=low_latency_options(self.scheme, self.transport),
                timeout=(self.timeout, self.read_timeout),
            )
        except av.error.FFmpegError as exc:
            if first:
                reason = self._explain(exc, time.monotonic() - started)
                raise SourceError(f"cannot open {self.url}: {reason}") from None
            raise

    def _explain(self, exc: av.error.FFmpegError, elapsed: float) -> str:
        if elapsed >= self.timeout - 0.05:
            # Our open timeout interrupted FFmpeg; its demuxers then report odd errors (e.g. invalid data).
            return f"no answer within {self.timeout:g} s (check the address and that the server is streaming)"
        if isinstance(exc, av.error.ProtocolNotFoundError):
            return f"the FFmpeg inside PyAV was built without {self.scheme}:// support"
        reason = describe_error(exc, self.timeout)
        parts = urlsplit(self.url)
        host = parts.hostname
        if isinstance(exc, av.error.InvalidDataError) and host:
            # The connection was made, then closed (or answered with something else) before any reply
            # FFmpeg understood: FFmpeg says "invalid data", the user needs to hear that the host did not answer.
            where = f"{host}:{parts.port}" if parts.port else host
            if self.scheme in ("rtsp", "rtsps"):
                return (f"{where} did not answer as an RTSP server (the connection closed without a reply; "
                        "check the address, port and path)")
            return f"{where} did not answer with a video stream (check the address, port and path)"
        if isinstance(exc, av.error.OSError) and host:
            try:  # FFmpeg reports a failed name lookup as a bare I/O error
                socket.getaddrinfo(host, None)
            except OSError:
                return f"cannot resolve host {host!r}"
        return reason
