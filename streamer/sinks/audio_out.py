"""An encoder sink's audio streams: packets copied unchanged when the container holds their codec, else
transcoded (AAC into WebM becomes Opus); timed as the file job gives them (``packets``: the input's own
timing, which the video keeps too) or placed on the sink's video clock (``place``: the live paths, whose
video pts the sink rebases and makes strictly increasing).
"""

from __future__ import annotations

import logging

import av
import av.error

from streamer.media.audio import AudioChunk
from streamer.sinks.base import SinkError
from streamer.sinks.encoders import AudioTranscoder, audio_encoder_for

log = logging.getLogger(__name__)

OVERLAP_S = 0.002  # a live packet that starts this much before the last one ended is a repeat: skipped


class AudioOut:
    """The audio streams of one output container, keyed by the index of the input stream they come from."""

    def __init__(self, container: av.container.OutputContainer, target: str) -> None:
        self.container = container
        self.target = target
        self.skipped = 0  # live packets left out: before the video began, or overlapping the last one
        self._streams: dict[int, av.stream.Stream] = {}
        self._transcoders: dict[int, AudioTranscoder] = {}
        self._end: float | None = None  # live: where the last placed packet ends (output seconds)

    def add(self, template: av.stream.Stream) -> None:
        """An output stream for the input audio stream ``template`` (SinkError when the container cannot
        hold it even transcoded)."""
        encoder = audio_encoder_for(self.container, template.codec_context.name)
        try:
            if encoder is None:
                out = self.container.add_stream_from_template(template)
            else:
                transcoder = self._transcoders[template.index] = AudioTranscoder(self.container, template, encoder)
                out = transcoder.stream
                log.info("%s cannot hold %s audio: transcoding it to %s", self.target,
                         template.codec_context.name, encoder)
        except (av.error.FFmpegError, ValueError) as exc:
            raise SinkError(f"{self.target} cannot hold {template.codec_context.name} audio ({exc}); "
                            "write .mkv or .mp4 instead") from None
        self._streams[template.index] = out

    @property
    def active(self) -> bool:
        return bool(self._streams)

    @property
    def encoders(self) -> list[str]:
        """The encoders of audio streams transcoded because the container cannot hold their codec."""
        return [transcoder.stream.codec_context.name for transcoder in self._transcoders.values()]

    def packets(self, packet: av.Packet) -> list[av.Packet]:
        """What to mux for one input packet, its timing unchanged (none for a stream not added, or a
        demuxer's flush packet)."""
        index = packet.stream.index if packet.stream is not None else None
        out = self._streams.get(index) if index is not None else None
        if out is None or packet.dts is None:  # dts None: a demuxer flush packet, nothing to store
            return []
        transcoder = self._transcoders.get(index)
        if transcoder is not None:
            return transcoder.encode(packet)
        packet.stream = out
        return [packet]

    def place(self, chunk: AudioChunk, shift: float) -> list[av.Packet]:
        """What to mux for a live chunk: a copy of its packet at ``chunk.seconds + shift`` on the output's
        clock (``shift``: the output's video pts minus the frames' own, in seconds). Skipped (counted) when
        it would start before 0 (before the first video frame) or inside the last packet placed (a
        reconnect's audio that overlaps the last connection's)."""
        if not self._streams:
            return []
        start = chunk.seconds + shift
        if start < 0 or (self._end is not None and start < self._end - OVERLAP_S):
            self.skipped += 1
            return []
        self._end = start + chunk.duration
        index, out = next(iter(self._streams.items()))  # the live paths carry one audio stream
        source = chunk.packet
        time_base = source.time_base
        packet = av.Packet(bytes(source))  # each sink its own copy: several sinks share the chunk
        packet.pts = packet.dts = round(start / time_base)
        packet.duration = source.duration
        packet.time_base = time_base
        packet.is_keyframe = source.is_keyframe
        transcoder = self._transcoders.get(index)
        if transcoder is not None:
            return transcoder.encode(packet)
        packet.stream = out
        return [packet]

    def flush(self) -> list[av.Packet]:
        """The transcoders' last packets (at close)."""
        return [packet for transcoder in self._transcoders.values() for packet in transcoder.encode(None)]
