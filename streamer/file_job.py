"""Stylize a whole video file: every frame, original timestamps, audio remuxed unchanged.

Three stages overlap through bounded queues, so no frame is ever dropped and memory stays flat:

    decode thread (PyAV, rgb24) -> batches of frames through the pipeline (calling thread) -> encode thread

Audio packets travel through the same queues in demux order, so the output interleaves like the input.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import av.error
import numpy as np

from pipelines.frames import FramePipeline
from streamer.frames import Frame
from streamer.outputs import check_output, local_path
from streamer.picture import first_picture, upright_size
from streamer.sinks.av_sink import AvSink
from streamer.sources.av_source import describe_error, stream_fps, video_to_rgb
from streamer.sources.base import SourceError

log = logging.getLogger(__name__)

QUEUE_ITEMS = 48  # per queue: a few batches of frames plus the audio packets between them
POLL_SECONDS = 0.1  # how often a blocked stage looks up to see whether it should stop
MAX_DEMUX_ERRORS = 50  # give up on a file after this many unreadable stretches
_END = object()


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
    abandons it. ``out_path`` gets its name only once complete (streamer.outputs); an existing one is
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

    source = _open_input(in_path)
    try:
        video = source.streams.video[0]
        video.thread_type = "AUTO"
        audio_streams = list(source.streams.audio)
        picture = first_picture(in_path)
        width, height = size or upright_size(video.codec_context.width, video.codec_context.height, picture.turns)
        if width <= 0 or height <= 0:
            raise SourceError(f"{in_path}: the video stream has no picture size; the file may be damaged")
        summary.expected_frames = _expected_frames(source, video)
        fps = stream_fps(video) or 30.0
        sink = AvSink(str(out_path), codec=codec, crf=crf, options=encoder_options, overwrite=overwrite,
                      inputs=[in_path])
        sink.open(width, height, fps, time_base=video.time_base, audio_from=audio_streams,
                  colour=picture.colour)
        summary.width, summary.height = sink.width, sink.height  # odd sizes become even
        abandoned = False
        try:
            _run_stages(source, video, sink, pipeline, summary, batch=batch, stream_id=stream_id,
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


def _open_input(path: Path) -> av.container.InputContainer:
    if not path.exists():
        raise SourceError(f"input file {path} does not exist")
    if path.is_dir():
        raise SourceError(f"input {path} is a folder; give a video file")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"cannot read {path}: not a video file FFmpeg understands ({describe_error(exc)})") from None
    if not container.streams.video:
        kinds = ", ".join(f"{s.type} {s.codec_context.name}" for s in container.streams) or "none"
        container.close()
        raise SourceError(f"{path} has no video stream (it holds: {kinds}); give a video file")
    return container


def _expected_frames(container: av.container.InputContainer, video: av.VideoStream) -> int | None:
    if video.frames:
        return int(video.frames)
    rate = video.average_rate or video.guessed_rate
    if not rate:
        return None
    if video.duration and video.time_base:
        seconds = float(video.duration * video.time_base)
    elif container.duration:
        seconds = container.duration / av.time_base
    else:
        return None
    return max(1, round(seconds * float(rate)))


def _run_stages(source: av.container.InputContainer, video: av.VideoStream, sink: AvSink,
                pipeline: FramePipeline, summary: FileJobSummary, *, batch: int, stream_id: str,
                stop: threading.Event, progress: bool) -> None:
    decoded: queue.Queue[Any] = queue.Queue(QUEUE_ITEMS)
    stylized: queue.Queue[Any] = queue.Queue(QUEUE_ITEMS)
    errors: list[BaseException] = []
    bar = _progress_bar(summary, enabled=progress)

    def guarded(stage: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                stage()
            except BaseException as exc:  # handed to the calling thread, which raises it
                errors.append(exc)
                stop.set()
        return run

    decoder = threading.Thread(
        target=guarded(lambda: _decode(source, video, summary, decoded, stop)), name="file-decode", daemon=True)
    encoder = threading.Thread(
        target=guarded(lambda: _encode(sink, summary, stylized, bar)), name="file-encode", daemon=True)
    decoder.start()
    encoder.start()
    try:
        _stylize(pipeline, summary, decoded, stylized, stop, errors, batch=batch, stream_id=stream_id,
                 encoder_alive=encoder.is_alive)
    except KeyboardInterrupt:
        if stop.is_set():  # a second Ctrl-C while already stopping: abandon
            raise
        summary.interrupted = True
    finally:
        if stop.is_set() and not errors:
            summary.interrupted = True
        stop.set()
        # The encoder drains what was stylized before the end marker, then stops.
        while encoder.is_alive():
            try:
                stylized.put(_END, timeout=POLL_SECONDS)
                break
            except queue.Full:
                continue
        encoder.join()
        decoder.join(timeout=10)
        bar.close()
    if errors:
        raise errors[0]


def _decode(container: av.container.InputContainer, video: av.VideoStream, summary: FileJobSummary,
            out: queue.Queue[Any], stop: threading.Event) -> None:
    """Demux and decode into Frames (rgb24 at the output size) and audio packets, in file order."""
    audio_indexes = {s.index for s in container.streams.audio}
    streams = [video, *container.streams.audio]
    width, height, tb = summary.width, summary.height, video.time_base
    index = 0
    busy = 0.0
    try:
        for packet in _demux_tolerant(container, streams, summary):
            tick = time.perf_counter()
            if packet.stream.index in audio_indexes:
                items: list[Any] = [packet]  # the sink skips the demuxer's empty flush packets
            else:
                items = []
                try:
                    decoded = packet.decode()
                except av.error.FFmpegError:
                    summary.damaged_packets += 1
                    decoded = []
                for frame in decoded:
                    image = video_to_rgb(frame, width, height)  # upright, as a player shows it
                    # A raw stream's frames may have no pts: the sink continues its clock at the file's rate.
                    items.append(Frame(image, pts=frame.pts, time_base=tb, index=index))
                    index += 1
            busy += time.perf_counter() - tick
            for item in items:
                if not _put(out, item, stop):
                    return
        _put(out, _END, stop)
    finally:
        summary.decode_seconds = busy


def _demux_tolerant(container: av.container.InputContainer, streams: list[Any],
                    summary: FileJobSummary) -> Iterator[av.Packet]:
    """Packets of ``streams``; a damaged stretch is counted and skipped instead of ending the file."""
    errors_in_a_row = 0
    while errors_in_a_row < MAX_DEMUX_ERRORS:
        try:
            for packet in container.demux(streams):
                errors_in_a_row = 0
                yield packet
            return
        except (av.error.FFmpegError, OSError):
            summary.damaged_packets += 1
            errors_in_a_row += 1


def _stylize(pipeline: FramePipeline, summary: FileJobSummary, inbox: queue.Queue[Any],
             outbox: queue.Queue[Any], stop: threading.Event, errors: list[BaseException], *,
             batch: int, stream_id: str, encoder_alive: Callable[[], bool]) -> None:
    """Gather ``batch`` frames (and the audio between them), stylize, pass on in the same order.

    A pipeline with ``submit`` (the diffusion pipeline) gets the next batch before this one's result is
    taken, so the GPU never waits for the host between batches. Frames stylized before a stop are still
    handed to the encoder while it runs."""
    pending: list[Any] = []
    frames_pending = 0
    in_flight: tuple[Any, list[Any]] | None = None

    def finish(flight: tuple[Any, list[Any]]) -> bool:
        tick = time.perf_counter()
        done = _collect(*flight)
        summary.model_seconds += time.perf_counter() - tick
        return all(_put(outbox, out_item, stop, encoder_alive) for out_item in done)

    while True:
        item = _get(inbox, stop)
        if item is None:  # stopped: a stage failed or the caller asked
            if in_flight is not None and not errors:
                finish(in_flight)
            return
        if item is not _END:
            pending.append(item)
            frames_pending += isinstance(item, Frame)
            if frames_pending < batch:
                continue
        if frames_pending:
            tick = time.perf_counter()
            try:
                submitted = (_submit(pipeline, pending, stream_id), pending)
            except BaseException:
                if in_flight is not None:  # what was stylized before the failure is kept
                    finish(in_flight)
                raise
            summary.model_seconds += time.perf_counter() - tick
            if in_flight is not None and not finish(in_flight):
                return
            in_flight = submitted
        else:  # only audio since the last batch: it must still follow that batch's frames
            if in_flight is not None and not finish(in_flight):
                return
            in_flight = None
            if not all(_put(outbox, out_item, stop) for out_item in pending):
                return
        pending, frames_pending = [], 0
        if item is _END:
            if in_flight is not None:
                finish(in_flight)
            return


def _submit(pipeline: FramePipeline, items: list[Any], stream_id: str) -> Any:
    images = np.stack([item.image for item in items if isinstance(item, Frame)])
    ids = [stream_id] * len(images)
    return pipeline.submit(images, ids), images.shape


def _collect(submitted: Any, items: list[Any]) -> list[Any]:
    handle, shape = submitted
    result = handle.result()
    if not isinstance(result, np.ndarray) or result.shape != shape or result.dtype != np.uint8:
        found = getattr(result, "shape", type(result).__name__)
        raise ValueError(f"the pipeline returned {found} for frames of shape {shape}; "
                         "it must return uint8 frames of the same shape")
    frames = [item for item in items if isinstance(item, Frame)]
    styled = (frame.with_image(image) for frame, image in zip(frames, result, strict=True))
    return [next(styled) if isinstance(item, Frame) else item for item in items]


def _encode(sink: AvSink, summary: FileJobSummary, inbox: queue.Queue[Any], bar: Any) -> None:
    busy = 0.0
    try:
        while True:
            item = inbox.get()
            if item is _END:
                return
            tick = time.perf_counter()
            if isinstance(item, Frame):
                sink.write(item)
                summary.frames += 1
                bar.update(1)
            else:
                sink.mux_audio(item)
            busy += time.perf_counter() - tick
    finally:
        summary.encode_seconds = busy


def _put(q: queue.Queue[Any], item: Any, stop: threading.Event,
         keep_going: Callable[[], bool] | None = None) -> bool:
    """Block until there is room (no frame is ever dropped) unless the job is stopping (and ``keep_going``,
    if given, says no)."""
    while not stop.is_set() or (keep_going is not None and keep_going()):
        try:
            q.put(item, timeout=POLL_SECONDS)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue[Any], stop: threading.Event) -> Any:
    """The next item, or None as soon as the job is stopping (what still waits is not stylized)."""
    while not stop.is_set():
        try:
            return q.get(timeout=POLL_SECONDS)
        except queue.Empty:
            continue
    return None


def _progress_bar(summary: FileJobSummary, *, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=summary.expected_frames, unit="frame", desc=Path(summary.in_path).name, file=sys.stderr,
                disable=not enabled, dynamic_ncols=True, mininterval=0.5, smoothing=0.1)
