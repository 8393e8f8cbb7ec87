"""Sink specs from the command line or a setup file -> Sink objects (not opened yet).

``virtualcam``, ``virtualcam:/dev/video10``, ``preview``, a file path (``out.mp4``, ``out.mkv``), or a
network URL (``udp://``, ``srt://``, ``rtsp://``, ``rtmp://``, ``tcp://``). Bad specs raise ValueError or
SinkError with one line saying what would work.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from streamer.engine.outputs import check_output, local_path
from streamer.sinks.base import Sink, SinkError

NETWORK_SCHEMES = ("udp", "srt", "rtsp", "rtsps", "rtmp", "rtmps", "tcp")
FILE_SUFFIXES = (".mp4", ".mkv", ".mov", ".webm", ".ts", ".avi", ".flv", ".y4m")
SINK_HELP = ("virtualcam, virtualcam:/dev/videoN, preview, a file (out.mp4, out.mkv) or a URL "
             "(udp://127.0.0.1:5000, srt://:9000?mode=listener, rtsp://host:8554/path)")


def make_sink(spec: str, *, overwrite: bool = False, inputs: Sequence[str | None] = (), **av_options: Any) -> Sink:
    """One sink from its spec; ``av_options`` go to AvSink for files and network outputs (codec, crf...).
    A file is checked now (streamer.engine.outputs.check_output: ``overwrite``, not one of ``inputs``)."""
    text = spec.strip()
    if not text:
        raise ValueError(f"empty --sink; use one of: {SINK_HELP}")
    kind, _, rest = text.partition(":")
    if kind == "virtualcam":
        from streamer.sinks.virtualcam import VirtualCamSink

        return VirtualCamSink(rest or None)
    if text == "preview":
        from streamer.sinks.preview import PreviewSink, preview_unavailable_reason

        reason = preview_unavailable_reason()
        if reason:
            raise SinkError(reason)
        return PreviewSink()
    scheme = urlsplit(text).scheme.lower()
    if "://" in text:
        if scheme not in NETWORK_SCHEMES:
            raise ValueError(f"sink {spec!r}: unsupported protocol {scheme!r}; use one of: {SINK_HELP}")
        return _av_sink(text, **av_options)
    path = local_path(text, what="sink")
    check_output(path, inputs=inputs, overwrite=overwrite, what="sink")  # a folder, the input, exists...
    if path.suffix.lower() not in FILE_SUFFIXES:
        raise ValueError(f"sink {spec!r} is not something streamer can write; use one of: {SINK_HELP}")
    return _av_sink(str(path), overwrite=overwrite, inputs=inputs, **av_options)


def make_sinks(specs: list[str], *, overwrite: bool = False, inputs: Sequence[str | None] = (),
               **av_options: Any) -> list[Sink]:
    """The sinks of ``specs``; ``inputs`` are the run's sources (a file sink may not be one of them)."""
    if not specs:
        raise ValueError(f"give at least one --sink: {SINK_HELP}")
    sinks = [make_sink(spec, overwrite=overwrite, inputs=inputs, **av_options) for spec in specs]
    files = [os.path.realpath(sink.file) for sink in sinks if sink.file]
    twice = next((f for f in files if files.count(f) > 1), None)
    if twice is not None:
        raise ValueError(f"the file {twice} is given as a sink more than once; give each file once")
    return sinks


def _av_sink(target: str, **av_options: Any) -> Sink:
    try:
        from streamer.sinks.av_sink import AvSink
    except ImportError as exc:
        raise SinkError(f"file and network output is not available: {exc}") from None
    return AvSink(target, **av_options)
