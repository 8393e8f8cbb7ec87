"""The GPU worker: batching across streams, and that nobody is left waiting when things go wrong."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from pipelines.passthrough import PassthroughPipeline
from streamer.engine.worker import GpuWorker
from streamer.media.frames import Frame


class GatedPipeline(PassthroughPipeline):
    """Holds each call until released, so a test can make frames wait; records batch sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.batches: list[list[str]] = []

    def __call__(self, frames, stream_ids=None):
        self.gate.wait(10)
        self.batches.append(list(stream_ids))
        return super().__call__(frames, stream_ids)


def frame(stream: str) -> Frame:
    return Frame(np.zeros((8, 8, 3), np.uint8), pts=0, stream_id=stream)


def test_frames_that_wait_together_share_one_call():
    pipeline = GatedPipeline()
    with GpuWorker(pipeline, max_batch=8) as worker:
        first = worker.submit(frame("a"))
        time.sleep(0.2)  # the first call is running and held at the gate
        waiting = [worker.submit(frame(s)) for s in "bcd"]
        pipeline.gate.set()
        for fut in [first, *waiting]:
            assert fut.result(10).image.shape == (8, 8, 3)
    assert pipeline.batches == [["a"], ["b", "c", "d"]]


def test_removing_a_stream_cancels_its_waiting_frames():
    pipeline = GatedPipeline()
    with GpuWorker(pipeline) as worker:
        worker.submit(frame("a"))
        time.sleep(0.2)
        stale = worker.submit(frame("gone"))
        kept = worker.submit(frame("b"))
        removed = worker.remove_stream("gone")
        pipeline.gate.set()
        removed.result(10)
        assert stale.cancelled()
        assert kept.result(10).stream_id == "b"
    assert all("gone" not in batch for batch in pipeline.batches)


def test_a_failing_pipeline_reaches_every_waiter_and_the_worker_goes_on():
    class Failing(PassthroughPipeline):
        calls = 0

        def __call__(self, frames, stream_ids=None):
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("out of memory")
            return super().__call__(frames, stream_ids)

    with GpuWorker(Failing()) as worker:
        with pytest.raises(RuntimeError, match="out of memory"):
            worker.submit(frame("a")).result(10)
        assert worker.submit(frame("a")).result(10).stream_id == "a"


def test_after_close_submissions_and_calls_fail_at_once():
    worker = GpuWorker(PassthroughPipeline())
    worker.close()
    with pytest.raises(RuntimeError, match="stopped"):
        worker.submit(frame("a")).result(1)
    with pytest.raises(RuntimeError, match="stopped"):
        worker.update("a", prompt="x").result(1)


def test_the_worker_prepares_its_own_thread_before_the_first_frame():
    """A compiled pipeline gets ready on the thread that runs frames, before the first (pipelines/compiled.py)."""
    seen: list[str] = []

    class Prepared(PassthroughPipeline):
        def prepare_thread(self) -> None:
            seen.append(threading.current_thread().name)

        def __call__(self, frames, stream_ids=None):
            seen.append("frame")
            return super().__call__(frames, stream_ids)

    with GpuWorker(Prepared()) as worker:
        worker.submit(frame("a")).result(5)
    assert seen == ["gpu-worker", "frame"]


def test_cuda_graph_thread_state_is_made_for_any_thread():
    """torch before 2.13 had the graph trees' thread state only on the importing thread (pytorch#123177)."""
    import torch

    from pipelines.compiled import ensure_cuda_graph_tls

    found: list[bool] = []

    def run() -> None:
        ensure_cuda_graph_tls()
        ensure_cuda_graph_tls()  # a second call changes nothing
        found.append(torch._C._is_key_in_tls("tree_manager_containers"))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert found == [True]


class SlowDevice(PassthroughPipeline):
    """A pipeline that computes like a GPU: ``submit`` queues a batch on its own thread and returns at once;
    ``result()`` waits for it. Records when batches are queued and collected, and how many were in flight."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.events: list[tuple[str, int]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.lock = threading.Lock()

    def __call__(self, frames, stream_ids=None):
        return self.submit(frames, stream_ids).result()

    def submit(self, frames, stream_ids=None):
        from concurrent.futures import ThreadPoolExecutor

        with self.lock:
            number = len(self.events)
            self.events.append(("submit", number))
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        done = ThreadPoolExecutor(1)
        future = done.submit(lambda: (time.sleep(self.seconds), frames + 1)[1])
        done.shutdown(wait=False)
        owner = self

        class Pending:
            def done(self) -> bool:
                return future.done()

            def result(self):
                out = future.result()
                with owner.lock:
                    owner.events.append(("result", number))
                    owner.in_flight -= 1
                return out

        return Pending()


def numbered(stream: str, i: int) -> Frame:
    return Frame(np.full((4, 4, 3), i, np.uint8), pts=i, stream_id=stream)


@pytest.mark.parametrize("ahead", [True, False])
def test_submit_ahead_overlaps_one_batch_and_keeps_every_frame_in_order(ahead):
    """With submit-ahead the next batch is queued before the previous one's result is taken (at most one
    in flight); every frame comes back, to its own future, in order, from several streams."""
    pipeline = SlowDevice(0.05)
    results: dict[str, list] = {s: [] for s in "abc"}
    with GpuWorker(pipeline, max_batch=2, max_pending=200, submit_ahead=ahead) as worker:
        futures = []
        for i in range(30):
            for s in "abc":
                futures.append((s, i, worker.submit(numbered(s, i))))
            time.sleep(0.01)
        for s, i, fut in futures:
            out = fut.result(20)
            assert out.stream_id == s and out.pts == i and int(out.image[0, 0, 0]) == i + 1
            results[s].append(out.pts)
    assert all(results[s] == list(range(30)) for s in "abc")
    kinds = [kind for kind, _ in pipeline.events]
    overlapped = any(a == "submit" and b == "submit" for a, b in zip(kinds, kinds[1:], strict=False))
    assert pipeline.most_in_flight == (2 if ahead else 1)  # the one in flight and the one just queued
    assert overlapped == ahead
