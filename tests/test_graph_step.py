"""The whole frame step compiled as one function (pipelines/graph_step.py; one CUDA graph per batch size and
step count on CUDA), checked on the CPU with inductor: same frames as the eager step and as the three-seam
compiled step, with smoothing's skip and scene-cut decisions made inside the batch, several streams per
batch, 1 and 2 steps, the CFG family, and nothing compiled after start-up."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from pipelines import load_pipeline
from pipelines.lcm_img2img import StreamPipeline

# Each pipeline compiles at start-up: minutes on a busy 2-core machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]
SIZE = 64


def picture(seed: int, size: int = SIZE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, size, dtype=np.float32)
    img = np.stack([np.add.outer(base, base) / 2, np.add.outer(base, base[::-1]) / 2,
                    np.tile(base, (size, 1))], axis=-1)
    return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)


def close(a: np.ndarray, b: np.ndarray, levels: int = 1) -> bool:
    """uint8 frames equal up to rounding: a float difference of ~1e-6 may round a pixel to the next level."""
    diff = np.abs(a.astype(int) - b.astype(int))
    return a.shape == b.shape and diff.max() <= levels and (diff > 0).mean() < 0.01


def sequence() -> list[tuple[np.ndarray, list[str]]]:
    """Batches of four streams: a stays still (skipped from the third frame), b cuts to another scene, c moves
    a little (blended where still), d has smoothing off; then a batch with two frames of one smoothed stream."""
    still, other = picture(1), 255 - picture(2)
    moved = picture(1).copy()
    moved[:16, :16] = 255 - moved[:16, :16]
    ids = ["a", "b", "c", "d"]
    return [
        (np.stack([still, picture(2), picture(1), picture(3)]), ids),
        (np.stack([still, picture(2), moved, picture(4)]), ids),
        (np.stack([still, other, picture(1), picture(3)]), ids),
        (np.stack([still, other, moved, picture(5)]), ids),
        (np.stack([moved, still, picture(1), moved]), ["c", "c", "b", "a"]),
    ]


def run(pipe: StreamPipeline) -> list[np.ndarray]:
    pipe.update("d", smoothing=False)
    return [pipe(frames, ids) for frames, ids in sequence()]


@pytest.fixture(scope="module")
def whole() -> StreamPipeline:
    return load_pipeline("tiny", device="cpu", compile="on", graph="whole", compile_batch_sizes=[4])


def test_whole_step_equals_eager_and_seams_with_skips_cuts_and_several_streams(whole):
    from torch._dynamo.utils import counters

    assert whole.whole_step.ready and whole.whole_step.sealed  # compiled at start-up
    compiled_before = counters["frames"]["ok"]
    calls_before = whole.whole_step.compiled_calls
    got = run(whole)
    assert whole.whole_step.eager_batches == 0
    # four batches of one call each, the last in two rounds (c's two frames depend on each other)
    assert whole.whole_step.compiled_calls - calls_before == 6
    reference = load_pipeline("tiny", device="cpu", compile="off")
    eager = run(reference)
    for i, (a, b) in enumerate(zip(eager, got, strict=True)):
        assert close(a, b), i
    # the still stream was skipped: its output re-emitted exactly; b's cuts (third and fifth batch) were
    # counted on the device as the eager smoother counts them
    assert np.array_equal(got[2][0], got[1][0]) and np.array_equal(got[3][0], got[1][0])
    assert int(whole.stream("b").smoother.device_state["cuts"]) == reference.stream("b").smoother.scene_cuts == 2
    # padded batches (1 -> 4), frames at another size (resized around the graph): still nothing compiled
    for n in (1, 3):
        frames = np.stack([picture(10 + i) for i in range(n)])
        ids = [f"p{i}" for i in range(n)]
        assert close(eager_pipe(n)(frames, ids), whole(frames, ids))
    # Resized as uint8 around the graph, so not equal to the eager step's float resize: a level of input
    # rounding, which the random tiny model amplifies a little; far from the frames of another picture.
    odd = np.stack([picture(20, 80)[:, :72] for _ in range(2)])
    out = whole(odd, ["q0", "q1"]).astype(int)
    assert out.shape == odd.shape
    near = np.abs(out - eager_pipe(2)(odd, ["q0", "q1"]).astype(int)).mean()
    other = np.abs(out - eager_pipe(2)(255 - odd, ["q0", "q1"]).astype(int)).mean()
    assert near < 4 and near < other / 5, (near, other)
    assert counters["frames"]["ok"] == compiled_before, "compiled again after start-up"
    assert whole.whole_step.eager_batches == 0
    # the three-seam compiled step gives the same frames
    seams = run(load_pipeline("tiny", device="cpu", compile="on", graph="seams", compile_batch_sizes=[4]))
    for i, (a, b) in enumerate(zip(seams, got, strict=True)):
        assert close(a, b), i


def eager_pipe(_: int) -> StreamPipeline:
    return load_pipeline("tiny", device="cpu", compile="off")


def test_a_stream_leaving_the_graph_keeps_its_smoothing_state(whole, caplog):
    """A batch the graph cannot take (above the compiled size) runs eagerly, from the state the graph kept."""
    eager = load_pipeline("tiny", device="cpu", compile="off")
    frames = np.stack([picture(30)] * 5)
    ids = ["x", "y", "z", "w", "v"]
    for pipe in (eager, whole):
        pipe(frames[:4], ids[:4])
    with caplog.at_level(logging.INFO, logger="pipelines.graph_step"):
        a, b = eager(frames, ids), whole(frames, ids)
    assert whole.whole_step.eager_batches == 1 and "above the largest compiled size" in caplog.text
    assert close(a, b)
    # x was still: skipped on both paths, i.e. the eager step saw the graph's previous output and counters
    assert whole.stream("x").smoother._skips_in_row == eager.stream("x").smoother._skips_in_row == 1


def test_two_steps_and_a_live_change_of_steps():
    eager = load_pipeline("tiny", device="cpu", compile="off", num_inference_steps=2, strength=0.6)
    whole = load_pipeline("tiny", device="cpu", compile="on", graph="whole", compile_batch_sizes=[2],
                          num_inference_steps=2, strength=0.6)
    for frames, ids in sequence()[:3]:
        assert close(eager(frames[:2], ids[:2]), whole(frames[:2], ids[:2]))
    assert whole.whole_step.eager_batches == 0
    # 1 step was not compiled at start-up: that stream's frames run eagerly (and correctly), nothing compiles
    for pipe in (eager, whole):
        pipe.update("a", num_inference_steps=1)
    frames = np.stack([picture(7), picture(8)])
    assert close(eager(frames, ["a", "b"]), whole(frames, ["a", "b"]))
    assert close(eager(frames[:1], ["a"]), whole(frames[:1], ["a"]))
    assert whole.whole_step.eager_batches == 2


def test_cfg_family_with_guidance_per_stream(tmp_path):
    """Turbo (Euler, classifier-free guidance): one stream guided, one not, in one batch."""
    from tests.test_pipeline_equivalence import save_model

    model, taesd = save_model(tmp_path, "turbo")
    settings = dict(family="turbo", vae_id=str(taesd), width=SIZE, height=SIZE, device="cpu", strength=0.5,
                    prompt="neon city", negative_prompt="blurry", guidance_scale=3.0)
    eager = StreamPipeline.from_pretrained(str(model), compile="off", **settings)
    whole = StreamPipeline.from_pretrained(str(model), compile="on", graph="whole", compile_batch_sizes=[2],
                                           **settings)
    for pipe in (eager, whole):
        pipe.update("plain", guidance_scale=0.0)
    for frames, ids in sequence()[:3]:
        ids = ["guided", "plain"]
        assert close(eager(frames[:2], ids), whole(frames[:2], ids))
    assert whole.whole_step.eager_batches == 0 and whole.whole_step.compiled_calls >= 3


def test_analytic_preset():
    eager = load_pipeline("analytic", device="cpu", compile="off")
    whole = load_pipeline("analytic", device="cpu", compile="on", graph="whole", compile_batch_sizes=[2])
    for seed in (1, 1, 2):
        frames = np.stack([picture(seed, 128), picture(seed + 5, 128)])
        assert close(eager(frames, ["a", "b"]), whole(frames, ["a", "b"]))
    assert whole.whole_step.eager_batches == 0


def test_a_forced_attention_kernel_the_device_lacks_is_refused_in_one_line(tmp_path):
    import subprocess
    import sys

    from tests.media import make_clip
    from tests.servers import ROOT

    clip = make_clip(tmp_path / "in.mp4", seconds=1, size=(64, 48), audio=False)
    done = subprocess.run([sys.executable, "-m", "streamer", "file", str(clip), str(tmp_path / "out.mp4"),
                           "--preset", "tiny", "--device", "cpu", "--attention", "cudnn"], capture_output=True,
                          text=True, timeout=240, cwd=tmp_path, env={**__import__("os").environ,
                                                                     "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "streamer: error: bad setting: attention 'cudnn' has no kernel for float32 on cpu; choose auto or "
        "another of flash, cudnn, efficient, math"]
    assert not (tmp_path / "out.mp4").exists()


def test_forced_math_attention_and_channels_last_per_module_keep_the_pictures():
    plain = load_pipeline("tiny", device="cpu", compile="off", smoothing={"enabled": False})
    frames = np.stack([picture(1), picture(2)])
    expected = plain(frames, ["a", "b"])
    for settings in ({"attention": "math"}, {"attention": "flash"}, {"channels_last": "unet"},
                     {"channels_last": "vae"}):
        pipe = load_pipeline("tiny", device="cpu", compile="off", smoothing={"enabled": False}, **settings)
        assert close(expected, pipe(frames, ["a", "b"])), settings
    import torch

    unet_only = load_pipeline("tiny", device="cpu", compile="off", channels_last="unet")
    conv = next(m for m in unet_only.unet.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    vae_conv = next(m for m in unet_only.vae.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not vae_conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_a_compiler_failure_of_the_whole_step_runs_eagerly_after_one_warning(caplog):
    from pipelines.compiled import enable_compile

    pipe = load_pipeline("tiny", device="cpu")
    frames = np.stack([picture(1)])
    before = pipe(frames, ["a"])
    pipe.remove_stream("a")
    with caplog.at_level(logging.WARNING, logger="pipelines.compiled"):
        enable_compile(pipe, [1], backend="no-such-backend", graph="whole", progress=lambda _: None)
        after = pipe(frames, ["a"])
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "running eagerly" in warnings[0].getMessage()
    assert pipe.whole_step.failed and pipe.whole_step.compiled_calls == 0
    assert np.array_equal(before, after)
