"""The CUDA-only code paths, checked in under a minute on a GPU machine with the tiny preset: the whole
step compiled in one CUDA graph matches the eager one (smoothing off, and on with skips and cuts), the GPU
worker thread records and replays its own CUDA graphs (also submitting ahead), pinned asynchronous transfers
keep batches in order, and `streamer file` runs compiled end to end.

    python benchmarks/gpu_smoke.py [--device cpu]   (cpu: checks this script itself, slowly)

Prints one line per check and exits non-zero if any failed (the others still run).
"""

from __future__ import annotations

import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from pipelines import load_pipeline  # noqa: E402

FAILED: list[str] = []


def check(name: str, fn: Callable[[], str]) -> None:
    started = time.perf_counter()
    try:
        detail = fn()
        print(f"ok    {name} ({time.perf_counter() - started:.1f} s): {detail}", flush=True)
    except Exception as exc:  # noqa: BLE001 - report every check
        FAILED.append(name)
        print(f"FAIL  {name} ({time.perf_counter() - started:.1f} s): {type(exc).__name__}: {exc}", flush=True)
        traceback.print_exc()


def frames(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def main() -> int:
    device = sys.argv[2] if sys.argv[1:2] == ["--device"] else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check (--device cpu checks the script)")
        return 1
    print(f"{torch.cuda.get_device_name() if device == 'cuda' else 'CPU'} torch {torch.__version__}", flush=True)
    eager = load_pipeline("tiny", device=device, compile="off", smoothing={"enabled": False})
    graphed = load_pipeline("tiny", device=device, compile="on", graph="whole", compile_batch_sizes=[4],
                            smoothing={"enabled": False})

    def compiled_matches_eager() -> str:
        worst = 0.0
        for n in (1, 3, 4, 6):  # 1 and 3 pad to 4; 6 is above the largest size and runs eagerly
            ids = [f"s{i}" for i in range(n)]
            for _ in range(3):  # uint8 out: the output type the graph is compiled for
                b = graphed(frames(n, seed=n), ids)
            a = eager(frames(n, seed=n), ids)
            worst = max(worst, float(np.abs(a.astype(int) - b.astype(int)).max()) / 255)
        assert worst < 2e-2, f"max difference {worst}"
        calls = graphed.whole_step
        assert calls.compiled_calls > 0 and not calls.failed, f"compiled calls {calls.compiled_calls}"
        return f"max abs difference {worst:.4f}, {calls.compiled_calls} whole-step graph calls"

    def smoothing_in_the_graph() -> str:
        """Smoothing on (the default): a still stream is skipped, another cuts, one moves; same frames."""
        smooth_eager = load_pipeline("tiny", device=device, compile="off")
        ids = ["still", "cut", "moving", "plain"]
        still = frames(1, seed=1)[0]
        worst = 0
        left = graphed.whole_step.eager_batches  # the batch of 6 above ran eagerly
        for pipe in (smooth_eager, graphed):
            pipe.update("plain", smoothing=False)
            for sid in ids[:3]:
                pipe.update(sid, smoothing=True)
        for k in range(5):
            moving = still.copy()
            moving[: 8 + 4 * k, :16] = 255
            batch = np.stack([still, frames(1, seed=10 + (k >= 2))[0], moving, frames(1, seed=20 + k)[0]])
            a, b = smooth_eager(batch, ids), graphed(batch, ids)
            worst = max(worst, int(np.abs(a.astype(int) - b.astype(int)).max()))
        assert worst <= 5, f"differs by {worst}/255"
        assert graphed.whole_step.eager_batches == left, "a batch left the graph"
        return f"5 batches of 4 streams within {worst}/255 of eager"

    def worker_thread_replays_graphs() -> str:
        from streamer.engine.worker import GpuWorker
        from streamer.media.frames import Frame

        before = graphed.whole_step.compiled_calls
        image = frames(1, seed=7)[0]
        expected = graphed(image[None], ["w"])[0]
        with GpuWorker(graphed, max_batch=4) as worker:
            results = [worker.submit(Frame(image, pts=i, stream_id="w")).result(60) for i in range(5)]
            started = time.perf_counter()
            for i in range(20):
                worker.submit(Frame(image, pts=i, stream_id="w")).result(60)
            per_frame = (time.perf_counter() - started) / 20
        with GpuWorker(graphed, max_batch=4, submit_ahead=True) as worker:
            ahead = [worker.submit(Frame(image, pts=i, stream_id=f"x{i % 3}")) for i in range(30)]
            back = [f.result(60) for f in ahead]
        assert [f.pts for f in back] == list(range(30)), "submit-ahead lost or reordered frames"
        assert not graphed.whole_step.failed, "the whole-step graph fell back to eager on the worker thread"
        assert graphed.whole_step.compiled_calls > before + 20
        diff = max(int(np.abs(r.image.astype(int) - expected.astype(int)).max()) for r in results)
        assert diff <= 2, f"worker output differs by {diff}"
        return f"{per_frame * 1000:.2f} ms per frame on the worker thread, output within {diff}/255"

    def transfers_keep_order() -> str:
        batches = [frames(4, seed=s) for s in range(6)]
        ids = ["a", "b", "c", "d"]
        direct = [graphed(b, ids) for b in batches]
        pending = [graphed.submit(b, ids) for b in batches]
        got = [p.result() for p in pending]
        diffs = [int(np.abs(g.astype(int) - d.astype(int)).max()) for g, d in zip(got, direct, strict=True)]
        assert max(diffs) <= 1, diffs
        return f"6 batches in flight, results in order (max diff {max(diffs)})"

    def file_job_compiled() -> str:
        from media import make_clip

        from streamer.engine.file_job import stylize_file

        with tempfile.TemporaryDirectory() as folder:
            clip = make_clip(Path(folder) / "in.mp4", seconds=3, size=(160, 120), audio=True)
            summary = stylize_file(clip, Path(folder) / "out.mp4", graphed, batch=4)
            assert summary.frames == 90, summary.frames
            return summary.report()

    check("whole-step graph matches eager (batch 1 and 3 padded, 4, 6 eager)", compiled_matches_eager)
    check("smoothing's skips and cuts inside the graph match eager", smoothing_in_the_graph)
    check("GPU worker thread records and replays its own CUDA graphs", worker_thread_replays_graphs)
    check("pinned asynchronous transfers keep batch order", transfers_keep_order)
    check("file job with the compiled step", file_job_compiled)
    print(f"{'all checks passed' if not FAILED else 'failed: ' + ', '.join(FAILED)}")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
