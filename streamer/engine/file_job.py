"""Stylize a whole video file: every frame, original timestamps, audio remuxed unchanged.

The job opens the input (``streamer.media.av_io``) and the output (``AvSink``), then runs the decode,
model and encode stages of ``streamer.engine.file_stages`` and sums up what they did.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pipelines.frames import FramePipeline
from streamer.engine.file_stages import run_stages
from streamer.engine.outputs import check_output, local_path
from streamer.media.av_io import (
    DEFAULT_FPS,
    decode_media,
    expected_frames,
    open_file,
    peek_picture,
    stream_fps,
)
from streamer.media.picture import upright_size
from streamer.sinks.av_sink import AvSink
from streamer.sources.base import SourceError

MAX_DEMUX_ERRORS = 50  # give up on a file after this many unreadable stretches in a row


@dataclass
class FileJobSummary:
    """What a file job did; ``seconds_*`` are busy time per stage (they overlap, so they add up to more
    than ``seconds``)."""

    in_path: str
    out_path: str
    frames: int = 0
    expected_frames: int | None = None
    width: int = 0
    height: int = 0
    audio_packets: int = 0
    audio_transcoded_to: str = ""  # the audio encoder, when the output's container could not hold the audio
    damaged_packets: int = 0
    interrupted: bool = False
    seconds: float = 0.0
    decode_seconds: float = 0.0
    model_seconds: float = 0.0
    encode_seconds: float = 0.0

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def ended_early(self) -> bool:
        """The file held fewer frames than its header announced (cut short or damaged)."""
        if self.interrupted or not self.expected_frames:
            return False
        return self.frames < self.expected_frames - max(2, self.expected_frames // 50)

    def problem(self) -> str | None:
        """One line about damaged input, or None when the file read cleanly."""
        if not self.damaged_packets and not self.ended_early:
            return None
        read = f"{self.frames} of about {self.expected_frames}" if self.expected_frames else str(self.frames)
        damage = f"{self.damaged_packets} unreadable packet(s), " if self.damaged_packets else "it ends early, "
        return (f"{self.in_path} is damaged or cut short: {damage}{read} frames decoded; "
                "the output holds every frame that could be read")

    def report(self) -> str:
        if self.frames == 0:
            return f"stopped before the first frame; {self.out_path} was not written"
        status = "stopped early, wrote" if self.interrupted else "wrote"
        how = f"transcoded to {self.audio_transcoded_to}" if self.audio_transcoded_to else "remuxed"
        audio = f", {self.audio_packets} audio packets {how}" if self.audio_packets else ""
        return (f"{status} {self.out_path}: {self.frames} frames {self.width}x{self.height}{audio} in "
                f"{self.seconds:.1f} s ({self.fps:.1f} fps); busy seconds: decode {self.decode_seconds:.1f}, "
                f"model {self.model_seconds:.1f}, encode {self.encode_seconds:.1f}")


def stylize_file(
    in_path: str | Path,
    out_path: str | Path,
    pipeline: FramePipeline,
    *,
    batch: int = 4,
    size: tuple[int, int] | None = None,
    codec: str | None = None,
    crf: int = 23,
    progress: bool = False,
    stream_id: str = "default",
    stop: threading.Event | None = None,
    encoder_options: dict[str, str] | None = None,
    overwrite: bool = False,
) -> FileJobSummary:
    """Run every frame of ``in_path`` through ``pipeline`` into ``out_path``.

    Frames keep their pts (variable frame rate and audio sync survive); audio is remuxed unchanged, or
    transcoded when the container cannot hold it. Rotated input (phone portrait) is turned upright before
    the model; colour tags carry over. ``size`` (width, height, as shown; odd rounds down to even) scales
    the video, else the input's shown size is kept. ``codec`` None: by the output's container.
    Setting ``stop``, or Ctrl-C in the calling thread, ends the job early: frames already stylized are
    written, the file is finalized and playable, and the summary says ``interrupted``. A second Ctrl-C
    abandons it. ``out_path`` gets its name only once complete (streamer.engine.outputs); an existing one is
    replaced only with ``overwrite``, and never when it is the input file.
    Raises SourceError (unreadable input), SinkError (unwritable output) or ValueError (bad arguments).
    """
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    if size is not None and (size[0] <= 0 or size[1] <= 0):
        raise ValueError(f"size must be positive, got {size[0]}x{size[1]}")
    in_path = local_path(in_path, what="input")
    check_output(out_path, inputs=[in_path], overwrite=overwrite)
    stop = stop if stop is not None else threading.Event()
    summary = FileJobSummary(str(in_path), str(out_path))
    started = time.perf_counter()

    def damaged() -> None:
        summary.damaged_packets += 1

    source = open_file(in_path)
    try:
        video = source.streams.video[0]
        video.thread_type = "AUTO"
        audio_streams = list(source.streams.audio)
        items = decode_media(source, video, audio=audio_streams, stop=stop, on_damage=damaged,
                             max_demux_errors=MAX_DEMUX_ERRORS)
        picture, items = peek_picture(items)  # rotation and colour tags, from the frames the job will use
        width, height = size or upright_size(video.codec_context.width, video.codec_context.height, picture.turns)
        if width <= 0 or height <= 0:
            raise SourceError(f"{in_path}: the video stream has no picture size; the file may be damaged")
        summary.expected_frames = expected_frames(source, video)
        fps = stream_fps(video) or DEFAULT_FPS
        sink = AvSink(str(out_path), codec=codec, crf=crf, options=encoder_options, overwrite=overwrite,
                      inputs=[in_path])
        sink.open(width, height, fps, time_base=video.time_base, audio_from=audio_streams,
                  colour=picture.colour)
        summary.width, summary.height = sink.width, sink.height  # odd sizes become even
        abandoned = False
        try:
            run_stages(items, video.time_base, sink, pipeline, summary, batch=batch, stream_id=stream_id,
                       stop=stop, progress=progress)
        except KeyboardInterrupt:  # a second Ctrl-C while stopping: no file, out_path as it was
            abandoned = True
            raise
        finally:
            summary.audio_packets = sink.audio_packets_written
            summary.audio_transcoded_to = ", ".join(sink.audio_encoders)
            if abandoned:
                sink.discard()
            else:  # out_path gets a file only when it holds a frame
                sink.close(publish=summary.frames > 0)
    finally:
        source.close()
    summary.seconds = time.perf_counter() - started
    if summary.frames == 0 and not summary.interrupted:
        problem = f" ({summary.damaged_packets} unreadable packets)" if summary.damaged_packets else ""
        raise SourceError(f"no video frame could be decoded from {in_path}{problem}; the file is damaged")
    return summary
