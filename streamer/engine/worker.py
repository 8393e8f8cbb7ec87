"""The one long-lived thread that runs the model. Everything else hands it frames and waits on futures.

Frames that wait together are batched into one pipeline call (frames of several streams included), up
to ``max_batch``. Each submission is one frame; nothing here queues without bound: the runtime and the
server only submit the newest frame of each stream once its previous one is done.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.config import LiveParams
from pipelines.frames import FramePipeline
from streamer.media.frames import Frame

log = logging.getLogger(__name__)


@dataclass
class _Job:
    frame: Frame
    future: Future


class GpuWorker:
    """Runs ``pipeline`` on one thread; ``submit(frame)`` returns a Future of the stylized frame."""

    def __init__(self, pipeline: FramePipeline, max_batch: int = 8, max_pending: int = 64,
                 on_batch=None, submit_ahead: bool = False) -> None:
        self.pipeline = pipeline
        self.max_batch = max_batch
        self.max_pending = max_pending
        # Submit the next batch before taking the previous one's result (at most one batch in flight), so its
        # upload and host work overlap the GPU's work on the previous one; frames come back in order.
        self.submit_ahead = submit_ahead
        self.on_batch = on_batch  # callback(batch_size, seconds) for metrics
        self._jobs: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._controls: deque = deque()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="gpu-worker", daemon=True)
        self._thread.start()

    def submit(self, frame: Frame) -> Future:
        fut: Future = Future()
        with self._cond:
            if self._stop:
                fut.set_exception(RuntimeError("the GPU worker has stopped"))
                return fut
            if len(self._jobs) >= self.max_pending:
                fut.set_exception(RuntimeError(f"more than {self.max_pending} frames waiting for the GPU"))
                return fut
            self._jobs.append(_Job(frame, fut))
            self._cond.notify()
        return fut

    def call(self, fn, *args, **kwargs) -> Future:
        """Run ``fn`` on the worker thread between batches (parameter changes that touch GPU state)."""
        fut: Future = Future()
        with self._cond:
            if self._stop:
                fut.set_exception(RuntimeError("the GPU worker has stopped"))
                return fut
            self._controls.append((fn, args, kwargs, fut))
            self._cond.notify()
        return fut

    def update(self, stream_id: str, **params) -> Future:
        """Change a stream's live parameters. The change is checked whole here first (a refused one fails
        its future with ValueError at once, without waiting for the model); the pipeline then applies all
        of it or, if steps and strength together make no schedule, none (ValueError again)."""
        try:
            change = LiveParams.parse(params).changes()
        except ValueError as exc:
            fut: Future = Future()
            fut.set_exception(exc)
            return fut
        return self.call(self.pipeline.update, stream_id, **change)

    def remove_stream(self, stream_id: str) -> Future:
        """Forget a stream: its frames still waiting are cancelled (they would bring its state back)."""
        with self._cond:
            waiting = [job for job in self._jobs if job.frame.stream_id == stream_id]
            self._jobs = deque(job for job in self._jobs if job.frame.stream_id != stream_id)
        for job in waiting:
            job.future.cancel()
        return self.call(self.pipeline.remove_stream, stream_id)

    def close(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout)

    def __enter__(self) -> GpuWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _take(self, block: bool = True) -> tuple[list, list[_Job]] | None:
        with self._cond:
            while not self._jobs and not self._controls and not self._stop:
                if not block:  # a batch is in flight: take its result rather than wait here
                    return [], []
                self._cond.wait()
            if self._stop and not self._jobs and not self._controls:
                return None
            controls = list(self._controls)
            self._controls.clear()
            # One batch holds frames of one size; the rest wait for the next round.
            batch: list[_Job] = []
            rest: deque[_Job] = deque()
            while self._jobs:
                job = self._jobs.popleft()
                if len(batch) < self.max_batch and (
                    not batch or job.frame.image.shape == batch[0].frame.image.shape
                ):
                    batch.append(job)
                else:
                    rest.append(job)
            self._jobs = rest
            return controls, batch

    def _run(self) -> None:
        try:
            try:  # e.g. record this thread's CUDA graphs before the first frame
                self.pipeline.prepare_thread()
            except Exception as exc:  # noqa: BLE001 - frames still run, only the first ones slower
                log.warning("preparing the GPU worker thread failed (%s); going on", exc)
            in_flight = None
            try:
                while (taken := self._take(block=in_flight is None)) is not None:
                    controls, batch = taken
                    if in_flight is not None and (controls or not batch):  # changes apply between batches
                        self._finish(in_flight)
                        in_flight = None
                    for fn, args, kwargs, fut in controls:
                        try:
                            fut.set_result(fn(*args, **kwargs))
                        except Exception as exc:  # noqa: BLE001 - reported to the caller through its future
                            fut.set_exception(exc)
                    started = self._start([job for job in batch if job.future.set_running_or_notify_cancel()])
                    if in_flight is not None:
                        self._finish(in_flight)
                        in_flight = None
                    if started is not None and self.submit_ahead:
                        in_flight = started
                    elif started is not None:
                        self._finish(started)
            finally:
                if in_flight is not None:
                    self._finish(in_flight)
        finally:
            # However the thread ends, nobody is left waiting on a future that will never resolve.
            with self._cond:
                self._stop = True
                left = [job.future for job in self._jobs] + [control[3] for control in self._controls]
                self._jobs.clear()
                self._controls.clear()
            for fut in left:
                if not fut.done():
                    fut.set_exception(RuntimeError("the GPU worker has stopped"))

    def _start(self, batch: list[_Job]) -> tuple[list[_Job], Any, float] | None:
        """Queue a batch on the pipeline; None if there is nothing to wait for (empty, or it failed)."""
        if not batch:
            return None
        start = time.perf_counter()
        try:
            images = np.stack([job.frame.image for job in batch])
            ids = [job.frame.stream_id for job in batch]
            pending = self.pipeline.submit(images, ids) if self.submit_ahead else _Called(self.pipeline, images, ids)
        except Exception as exc:  # noqa: BLE001 - every waiter learns why
            self._fail(batch, exc)
            return None
        return batch, pending, start

    def _fail(self, batch: list[_Job], exc: Exception) -> None:
        log.error("pipeline failed on a batch of %d: %s", len(batch), exc)
        log.debug("pipeline failure", exc_info=True)
        for job in batch:
            job.future.set_exception(exc)

    def _finish(self, started: tuple[list[_Job], Any, float]) -> None:
        batch, pending, start = started
        try:
            out = pending.result()
            if len(out) != len(batch):
                raise RuntimeError(f"the pipeline returned {len(out)} frames for {len(batch)}")
        except Exception as exc:  # noqa: BLE001 - every waiter learns why
            self._fail(batch, exc)
            return
        elapsed = time.perf_counter() - start
        for job, image in zip(batch, out, strict=True):
            job.future.set_result(job.frame.with_image(image))
        if self.on_batch is not None:
            try:
                self.on_batch(len(batch), elapsed)
            except Exception:  # noqa: BLE001 - metrics must never stop the model
                log.debug("on_batch callback failed", exc_info=True)


class _Called:
    """A batch run by calling the pipeline, when ``result()`` is taken (without submit-ahead: one at a time)."""

    def __init__(self, pipeline: FramePipeline, images: np.ndarray, ids: list[str]) -> None:
        self.pipeline, self.images, self.ids = pipeline, images, ids

    def result(self) -> np.ndarray:
        return self.pipeline(self.images, self.ids)
