"""The compiled frame step (torch.compile; CUDA graphs on CUDA), checked on the CPU: same pictures as the
eager step, batches padded to the compiled sizes, and a compiler failure falls back to eager with one warning."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from pipelines import load_pipeline
from pipelines.compiled import enable_compile, should_compile


def frames(n: int) -> np.ndarray:
    rng = np.random.default_rng(n)
    return rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)


def test_compile_is_automatic_on_cuda_only():
    import torch

    assert should_compile("auto", torch.device("cuda")) and not should_compile("auto", torch.device("cpu"))
    assert should_compile("on", torch.device("cpu")) and not should_compile("off", torch.device("cuda"))


@pytest.mark.slow
def test_compiled_step_matches_eager_and_pads_to_compiled_sizes():
    eager = load_pipeline("tiny", device="cpu", smoothing={"enabled": False})
    compiled = load_pipeline("tiny", device="cpu", smoothing={"enabled": False}, compile="on",
                             compile_batch_sizes=[2])
    assert compiled.unet_forward.compiled_calls > 0  # warmed up at load: batch 2 compiled
    from torch._dynamo.utils import counters

    compiled_before = counters["frames"]["ok"]
    for n in (1, 2, 3):  # 1 is padded to 2; 3 is above the largest compiled size and runs eagerly
        ids = [f"s{i}" for i in range(n)]
        a = eager(frames(n), ids, output_type="float")
        b = compiled(frames(n), ids, output_type="float")
        assert np.abs(a - b).max() < 1e-4, n
    # A frame that is not at the working size is resized first, which changes its tensors' memory layout:
    # it must still run the code compiled at start-up, not compile again.
    resized = np.random.default_rng(0).integers(0, 256, (2, 80, 96, 3), dtype=np.uint8)
    assert np.abs(eager(resized, ["a", "b"], output_type="float")
                  - compiled(resized, ["a", "b"], output_type="float")).max() < 1e-4
    assert counters["frames"]["ok"] == compiled_before, "recompiled after start-up"
    assert not compiled.unet_forward.failed and not compiled.vae_decode.failed


def test_a_compiler_failure_runs_eagerly_after_one_warning(caplog):
    pipe = load_pipeline("tiny", device="cpu", smoothing={"enabled": False})
    before = pipe(frames(1), output_type="float")
    messages: list[str] = []
    with caplog.at_level(logging.WARNING, logger="pipelines.compiled"):
        enable_compile(pipe, [1], backend="no-such-backend", progress=messages.append)
        after = pipe(frames(1), output_type="float")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "running eagerly" in warnings[0].getMessage()
    assert pipe.unet_forward.failed and pipe.unet_forward.compiled_calls == 0
    assert np.array_equal(before, after)
    assert any("batch 1 ready" in m for m in messages)


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_step_matches_eager_on_cuda():
    """On CUDA, compile=auto means inductor + CUDA graphs over the whole step; the pictures match the eager
    step (fp16)."""
    eager = load_pipeline("tiny", device="cuda", compile="off", smoothing={"enabled": False})
    graphed = load_pipeline("tiny", device="cuda", compile="auto", compile_batch_sizes=[1, 4],
                            smoothing={"enabled": False})
    for n in (1, 3, 4):
        ids = [f"s{i}" for i in range(n)]
        for _ in range(3):  # replays, not only the first call
            b = graphed(frames(n), ids, output_type="float")
        a = eager(frames(n), ids, output_type="float")
        assert np.abs(a - b).max() < 2e-2, n
    assert graphed.whole_step.compiled_calls > 0 and not graphed.whole_step.failed


def test_fused_qkv_and_channels_last_keep_the_pictures():
    """The layout changes made on CUDA by default, forced on here on the CPU: same pictures."""
    plain = load_pipeline("tiny", device="cpu", smoothing={"enabled": False}, fuse_qkv="off", channels_last="off")
    fast = load_pipeline("tiny", device="cpu", smoothing={"enabled": False}, fuse_qkv="on", channels_last="on")
    from diffusers.models.attention_processor import FusedAttnProcessor2_0

    assert any(isinstance(p, FusedAttnProcessor2_0) for p in fast.unet.attn_processors.values())
    assert not any(isinstance(p, FusedAttnProcessor2_0) for p in plain.unet.attn_processors.values())
    ids = ["a", "b", "c"]
    a = plain(frames(3), ids, output_type="float")
    b = fast(frames(3), ids, output_type="float")
    assert np.abs(a - b).max() < 1e-4
