"""`streamer batch`: many files over workers, each file whole through `streamer file`'s job.

A worker (FileWorker) holds one loaded pipeline and takes whole files: it decodes, stylizes and encodes
each one itself with ``stylize_file`` (no frame leaves it), and starts every file with fresh per-stream
state (smoothing, noise), so a file's result is the same as `streamer file` gives it. Workers are threads
here (one per GPU, or one on a CPU) or Ray actors (streamer.scale.ray_pool); ``run_batch`` hands them the
files, retries a file whose worker died (a bounded number of times), draws one progress bar over all
frames and keeps the summary (streamer.scale.plan.Summary) up to date.
"""

from __future__ import annotations

import concurrent.futures
import os
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pipelines.config import PipelineConfig
from pipelines.frames import DEFAULT_STREAM, FramePipeline
from streamer.scale.plan import BatchFile, Summary

POLL_SECONDS = 0.25


@dataclass(frozen=True)
class FileSettings:
    """Everything a file job takes besides IN and OUT: the same for every file of a batch."""

    config: PipelineConfig
    batch: int = 4
    size: tuple[int, int] | None = None
    codec: str | None = None
    crf: int = 23
    encoder_preset: str | None = None


class WorkerDied(Exception):
    """The worker's process ended while it held a file (killed, out of memory, its node lost)."""


class CountingPipeline:
    """Passes frames to ``inner`` and counts them (for the progress bar); everything else is ``inner``'s."""

    def __init__(self, inner: FramePipeline, counter: Callable[[int], None]) -> None:
        self.inner = inner
        self.counter = counter

    def __call__(self, frames: np.ndarray, stream_ids: Sequence[str] | None = None) -> np.ndarray:
        result = self.inner(frames, stream_ids)
        self.counter(len(frames))
        return result

    def submit(self, frames: np.ndarray, stream_ids: Sequence[str] | None = None) -> Any:
        submit = getattr(self.inner, "submit", None)
        handle = submit(frames, stream_ids) if submit is not None else self.inner(frames, stream_ids)
        self.counter(len(frames))
        return handle

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class FileWorker:
    """One loaded pipeline that stylizes whole files, one at a time. Also a Ray actor (ray_pool)."""

    def __init__(self, settings: FileSettings, name: str, device: str | None = None) -> None:
        from pipelines import load_pipeline

        config = settings.config if device is None else settings.config.model_copy(update={"device": device})
        self.settings = settings
        self.name = name
        self.pipeline = load_pipeline(config)
        self.stopping = False
        self.stop_event = threading.Event()  # one per file: the file job sets it when it ends
        self.frames = 0

    def describe(self) -> str:
        return f"{self.name} ({socket.gethostname()} pid {os.getpid()})"

    def pid(self) -> int:
        return os.getpid()

    def progress(self) -> int:
        """Frames stylized so far of the file in hand."""
        return self.frames

    def stop(self) -> None:
        """Stop the file in hand as `streamer file` stops on Ctrl-C (its output is finished, playable)."""
        self.stopping = True
        self.stop_event.set()

    def run(self, item: BatchFile) -> dict[str, Any]:
        """Stylize one file; what became of it as a dict of BatchFile fields (errors are reported, not raised)."""
        from streamer.cli import user_errors
        from streamer.engine.file_job import stylize_file

        def count(frames: int) -> None:
            self.frames += frames

        self.frames = 0
        self.stop_event = threading.Event()
        if self.stopping:
            self.stop_event.set()
        s = self.settings
        started = time.perf_counter()
        result: dict[str, Any] = {"worker": self.describe()}
        try:
            summary = stylize_file(
                item.input, item.output, CountingPipeline(self.pipeline, count), batch=s.batch, size=s.size,
                codec=s.codec, crf=s.crf, stop=self.stop_event, overwrite=item.overwrite,
                encoder_options={"preset": s.encoder_preset} if s.encoder_preset else None,
            )
        except user_errors() as exc:
            result.update(status="failed", error=str(exc), user_error=True)
        except Exception as exc:  # reported in the summary; the batch goes on with the other files
            result.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        else:
            result.update(status="stopped" if summary.interrupted else "done", frames=summary.frames,
                          problem=summary.problem() or "")
        finally:
            self.pipeline.remove_stream(DEFAULT_STREAM)  # the next file starts afresh, as in its own process
        result["seconds"] = round(time.perf_counter() - started, 3)
        return result


class Pool(Protocol):
    """Workers that take one file each at a time: threads here, Ray actors in ray_pool."""

    names: list[str]

    def submit(self, worker: int, item: BatchFile) -> Any: ...
    def wait(self, handles: list[Any], timeout: float) -> list[Any]: ...
    def result(self, handle: Any) -> dict[str, Any]: ...  # raises WorkerDied
    def progress(self, workers: list[int]) -> dict[int, int]: ...
    def ready(self, worker: int) -> bool: ...  # alive and able to take a file now
    def gone(self, worker: int) -> bool: ...  # dead for good
    def died(self, worker: int, item: BatchFile) -> None: ...
    def finished(self, item: BatchFile) -> None: ...  # clean up after dead attempts at ``item``
    def stop(self) -> None: ...
    def close(self) -> None: ...


class LocalPool:
    """Workers as threads of this process: one per device in ``devices``."""

    def __init__(self, settings: FileSettings, devices: list[str | None]) -> None:
        self.workers = [FileWorker(settings, f"worker-{i + 1}", device) for i, device in enumerate(devices)]
        self.names = [worker.describe() for worker in self.workers]
        self.executor = concurrent.futures.ThreadPoolExecutor(len(self.workers), thread_name_prefix="batch")

    def submit(self, worker: int, item: BatchFile) -> Any:
        return self.executor.submit(self.workers[worker].run, item)

    def wait(self, handles: list[Any], timeout: float) -> list[Any]:
        done, _ = concurrent.futures.wait(handles, timeout=timeout, return_when=concurrent.futures.FIRST_COMPLETED)
        return list(done)

    def result(self, handle: Any) -> dict[str, Any]:
        return handle.result()

    def progress(self, workers: list[int]) -> dict[int, int]:
        return {i: self.workers[i].progress() for i in workers}

    def ready(self, worker: int) -> bool:
        return True

    def gone(self, worker: int) -> bool:
        return False

    def died(self, worker: int, item: BatchFile) -> None:
        pass

    def finished(self, item: BatchFile) -> None:
        pass

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()

    def close(self) -> None:
        self.executor.shutdown(wait=True)


def local_devices(config: PipelineConfig, workers: int | None) -> list[str | None]:
    """One worker per CUDA device when the model may use them (device auto or cuda) and there are several;
    else one, or ``workers`` on the configured device."""
    if workers is None and config.family != "passthrough" and config.device in ("auto", "cuda"):
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count > 1:
            return [f"cuda:{i}" for i in range(count)]
    return [None] * (workers or 1)


def run_batch(pool: Pool, files: list[BatchFile], summary: Summary, *, retries: int, progress: bool,
              stopping: threading.Event) -> None:
    """Hand ``files`` (those not skipped) to the pool's workers until every one is done, failed or, once
    ``stopping`` is set, stopped or not started. A file whose worker died goes back in the queue, to the
    first worker free, at most ``retries`` times."""
    from tqdm import tqdm

    todo = deque(f for f in files if f.status == "pending")
    total = sum(f.expected_frames or 0 for f in todo) or None
    bar = tqdm(total=total, unit="frame", desc="batch", file=sys.stderr, disable=not progress,
               dynamic_ncols=True, mininterval=0.5, smoothing=0.1)
    busy: dict[Any, tuple[int, BatchFile]] = {}
    finished_frames = 0
    stop_sent = False

    def say(line: str) -> None:
        tqdm.write(line, file=sys.stderr)

    try:
        while todo or busy:
            if stopping.is_set() and not stop_sent:
                pool.stop()
                stop_sent = True
            if not stopping.is_set():
                idle = [i for i in range(len(pool.names))
                        if all(i != w for w, _ in busy.values()) and pool.ready(i)]
                if not busy and all(pool.gone(i) for i in range(len(pool.names))):
                    for item in todo:
                        item.status, item.error = "failed", "no worker left: every worker died too often"
                    todo.clear()
                    break
                for worker in idle:
                    if not todo:
                        break
                    item = todo.popleft()
                    busy[pool.submit(worker, item)] = (worker, item)
            elif not busy:
                break
            for handle in pool.wait(list(busy), POLL_SECONDS):
                worker, item = busy.pop(handle)
                try:
                    outcome = pool.result(handle)
                except WorkerDied as exc:
                    pool.died(worker, item)
                    if item.retries < retries and not stopping.is_set():
                        item.retries += 1
                        say(f"streamer: warning: {exc}; {item.name} goes to another worker "
                            f"(retry {item.retries} of {retries})")
                        todo.appendleft(item)
                    elif stopping.is_set():  # nothing was written: a later run does it
                        item.status = "not started"
                        pool.finished(item)
                    else:
                        item.status = "failed"
                        item.error = f"{exc}; gave up after {item.retries} retries"
                        say(f"streamer: error: {item.input}: {item.error}")
                        pool.finished(item)
                        if bar.total is not None:
                            bar.total -= item.expected_frames or 0
                    continue
                for key, value in outcome.items():
                    setattr(item, key, value)
                finished_frames += item.frames
                if bar.total is not None:  # the header's count was an estimate: the bar ends at what was read
                    bar.total += item.frames - (item.expected_frames or 0)
                pool.finished(item)
                say(_file_line(item))
                summary.write(files)
            current = sum(pool.progress([w for w, _ in busy.values()]).values())
            bar.n = finished_frames + current
            bar.refresh()
    finally:
        for item in todo:
            item.status = "not started"
        bar.close()


def _file_line(item: BatchFile) -> str:
    retried = f", {item.retries} retr{'y' if item.retries == 1 else 'ies'}" if item.retries else ""
    if item.status == "failed":
        return f"streamer: error: {item.input}: {item.error}"
    status = "stopped early, wrote" if item.status == "stopped" else "wrote"
    line = f"{status} {item.output}: {item.frames} frames in {item.seconds:.1f} s on {item.worker}{retried}"
    return f"{line}\nstreamer: warning: {item.problem}" if item.problem else line


def expected_frames(path: str | Path) -> int | None:
    """The frame count a file's header announces (for the progress bar's total), None when it does not say.
    Raises SourceError for a file that is not a readable video."""
    from streamer.media.av_io import expected_frames as announced
    from streamer.media.av_io import open_file

    container = open_file(path)
    try:
        return announced(container, container.streams.video[0])
    finally:
        container.close()
