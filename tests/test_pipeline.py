"""The frame step's behaviour as a user of the Python API sees it: sizes, streams, live parameter changes."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines import load_pipeline


def gradient(h: int, w: int, shift: int = 0) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 255 // max(w - 1, 1) + shift) % 256, y * 255 // max(h - 1, 1),
                    ((x + y) * 4) % 256], -1)
    return img.astype(np.uint8)


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline("tiny", device="cpu", smoothing={"enabled": False})


def test_any_input_size_comes_back_at_that_size(pipe):
    for h, w in [(64, 64), (37, 91), (240, 320)]:
        out = pipe(gradient(h, w)[None])
        assert out.shape == (1, h, w, 3) and out.dtype == np.uint8


def test_output_depends_on_input_and_is_stylized(pipe):
    a = pipe(gradient(64, 64)[None])
    b = pipe(gradient(64, 64, shift=128)[None])
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 1  # not a constant picture
    assert np.abs(a.astype(int) - gradient(64, 64)[None]).mean() > 5  # not a pass-through


def test_same_frame_same_output_fixed_noise(pipe):
    frame = gradient(64, 64)[None]
    assert np.array_equal(pipe(frame), pipe(frame))


def test_seed_strength_and_steps_change_live(pipe):
    frame = gradient(64, 64)[None]
    base = pipe(frame, ["s"]).astype(int)
    pipe.update("s", seed=99)
    seeded = pipe(frame, ["s"]).astype(int)
    assert np.abs(seeded - base).mean() > 0.5
    pipe.update("s", seed=pipe.config.seed, strength=0.9)
    stronger = pipe(frame, ["s"]).astype(int)
    assert np.abs(stronger - base).mean() > 0.5
    pipe.update("s", strength=pipe.config.strength, num_inference_steps=2)
    assert np.abs(pipe(frame, ["s"]).astype(int) - base).mean() > 0.5
    pipe.update("s", num_inference_steps=1)
    assert np.array_equal(pipe(frame, ["s"]).astype(int), base)  # back to the same settings, same picture


def test_prompt_change_fades_in_over_frames():
    pipe = load_pipeline("tiny", device="cpu", smoothing={"enabled": False}, prompt_blend_frames=4)
    frame = gradient(64, 64)[None]
    old = pipe(frame, ["p"]).astype(int)
    pipe.update("p", prompt="a completely different prompt about neon lights")
    steps = [pipe(frame, ["p"]).astype(int) for _ in range(5)]
    distances = [np.abs(s - old).mean() for s in steps]
    assert distances[0] > 0  # the change starts at once
    assert distances[0] < distances[3]  # and grows over the blend, not a hard cut
    assert np.array_equal(steps[3], steps[4])  # done after prompt_blend_frames frames


def test_streams_are_independent(pipe):
    frame = np.stack([gradient(64, 64), gradient(64, 64)])
    pipe.update("x", seed=1)
    pipe.update("y", seed=2)
    both = pipe(frame, ["x", "y"])
    alone = pipe(frame[:1], ["x"])
    assert np.abs(both[0].astype(int) - alone[0]).max() <= 1
    assert np.abs(both[0].astype(int) - both[1]).mean() > 0.5
    pipe.remove_stream("x")
    assert "x" not in pipe.streams


def test_bad_live_values_are_refused(pipe):
    with pytest.raises(ValueError, match="strength must be a number above 0 and at most 1, got 0"):
        pipe.update("s", strength=0)
    with pytest.raises(ValueError, match="unknown parameter"):
        pipe.update("s", colour="red")


def test_smoothed_frames_of_one_stream_in_one_batch_equal_one_by_one():
    """A file job sends 4 frames of one stream per call: with smoothing each must see the one before it."""
    frames = np.stack([gradient(64, 64, shift=s) for s in (0, 0, 40, 40, 0)])
    batched = load_pipeline("analytic", device="cpu", width=64, height=64)
    single = load_pipeline("analytic", device="cpu", width=64, height=64)
    out = np.concatenate([batched(frames[:4]), batched(frames[4:])])
    one_by_one = np.concatenate([single(frames[i:i + 1]) for i in range(len(frames))])
    assert np.array_equal(out, one_by_one)
    assert not np.array_equal(out[1], out[2])  # the change at frame 2 shows at frame 2, not before


def test_submitted_batches_come_back_in_order_and_equal_direct_calls(pipe):
    """``submit`` queues work and returns; holding one batch in flight (as the file job does) changes nothing."""
    rng = np.random.default_rng(5)
    batches = [rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8) for _ in range(3)]
    direct = [pipe(b, ["x", "y"]) for b in batches]
    first = pipe.submit(batches[0], ["x", "y"])
    second = pipe.submit(batches[1], ["x", "y"])
    assert np.array_equal(first.result(), direct[0])
    third = pipe.submit(batches[2], ["x", "y"])
    assert np.array_equal(second.result(), direct[1]) and np.array_equal(third.result(), direct[2])
    assert first.done() and third.result().dtype == np.uint8
