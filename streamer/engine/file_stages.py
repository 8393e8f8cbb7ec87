"""The three stages of a file job, overlapping through bounded queues (no frame is ever dropped, memory
stays flat):

    decode thread (av_io: video as upright rgb24 Frames, audio packets) -> batches through the pipeline
    (calling thread) -> encode thread (the AvSink)

Audio packets travel through the same queues in demux order, so the output interleaves like the input.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
import numpy as np

from pipelines.frames import FramePipeline
from streamer.media.av_io import MediaItem, video_to_rgb
from streamer.media.frames import Frame
from streamer.sinks.av_sink import AvSink

if TYPE_CHECKING:
    from streamer.engine.file_job import FileJobSummary

QUEUE_ITEMS = 48  # per queue: a few batches of frames plus the audio packets between them
POLL_SECONDS = 0.1  # how often a blocked stage looks up to see whether it should stop
_END = object()


def run_stages(items: Iterator[MediaItem], time_base: Fraction, sink: AvSink, pipeline: FramePipeline,
               summary: FileJobSummary, *, batch: int, stream_id: str, stop: threading.Event,
               progress: bool) -> None:
    """Run the three stages until the input ends, ``stop`` is set or a stage fails (its error is raised
    here). Ctrl-C in the calling thread marks the summary ``interrupted``; a second one is raised."""
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
        target=guarded(lambda: _decode(items, time_base, summary, decoded, stop)), name="file-decode", daemon=True)
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


def _decode(items: Iterator[MediaItem], time_base: Fraction, summary: FileJobSummary, out: queue.Queue[Any],
            stop: threading.Event) -> None:
    """Decoded video as Frames (rgb24, upright, at the output size) and audio packets, in file order."""
    width, height = summary.width, summary.height
    index = 0
    busy = 0.0
    try:
        tick = time.perf_counter()
        for item in items:
            if isinstance(item, av.VideoFrame):
                image = video_to_rgb(item, width, height)  # upright, as a player shows it
                # A raw stream's frames may have no pts: the sink continues its clock at the file's rate.
                item = Frame(image, pts=item.pts, time_base=time_base, index=index)
                index += 1
            busy += time.perf_counter() - tick
            if not _put(out, item, stop):  # the sink skips the demuxer's empty flush packets
                return
            tick = time.perf_counter()
        _put(out, _END, stop)
    finally:
        summary.decode_seconds = busy


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
