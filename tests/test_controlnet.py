"""ControlNet on the live frame step: control images (canny, depth, previous, input), live changes per
stream, refusals, loading (family check, offline), the compiled seam, and the CLI. The pictures against
diffusers' own pipelines: tests/test_controlnet_equivalence.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines import load_pipeline
from pipelines.conditioning.control_images import canny
from pipelines.conditioning.tiny import tiny_controlnet, tiny_depth_estimator
from pipelines.errors import PipelineError
from pipelines.lcm_img2img import StreamPipeline
from pipelines.tiny import tiny_components
from tests.test_loading import offline  # noqa: F401 - the fixture

SIZE = 64


def square(value: float, size: int = SIZE, at: tuple[int, int] = (20, 44)) -> torch.Tensor:
    """A (1, 3, size, size) frame in [-1, 1]: a grey ``value`` (0-255) square on black."""
    img = torch.zeros(1, 3, size, size)
    img[:, :, at[0]:at[1], at[0]:at[1]] = value
    return img / 127.5 - 1.0


@pytest.fixture(scope="module")
def net_folder(tmp_path_factory) -> Path:
    """A random ControlNet for the tiny preset's UNet, saved with save_pretrained."""
    folder = tmp_path_factory.mktemp("controlnet") / "net"
    tiny_controlnet(tiny_components("lcm")["unet"], seed=1).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def depth_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("depth") / "estimator"
    model, processor = tiny_depth_estimator()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def tiny(net_folder: Path, kind: str = "canny", **settings) -> StreamPipeline:
    settings.setdefault("smoothing", {"enabled": False})
    settings.setdefault("device", "cpu")
    return load_pipeline("tiny", controlnets=[{"model_id": str(net_folder), "type": kind}],
                         prompt_blend_frames=1, **settings)


def frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


# --- control images ------------------------------------------------------------------------------------

def test_canny_draws_the_thin_closed_outline_of_a_square():
    edges = canny(square(255), 100, 200)
    assert edges.shape == (1, 3, SIZE, SIZE) and torch.equal(edges[:, 0], edges[:, 2])
    e = edges[0, 0].bool()
    ys, xs = torch.nonzero(e, as_tuple=True)
    # Every edge pixel is on the square's boundary (the step between 19|20 and 43|44), within a pixel.
    near = ((ys >= 18) & (ys <= 45) & (xs >= 18) & (xs <= 45)) & ~((ys >= 21) & (ys <= 42) & (xs >= 21) & (xs <= 42))
    assert bool(near.all())
    # Each side is one pixel thin and unbroken: every row/column between the corners crosses it twice.
    for k in range(22, 42):
        assert int(e[k].sum()) == 2 and int(e[:, k].sum()) == 2, k
    assert not e[:15].any() and not e[50:].any()


def test_canny_thresholds_and_hysteresis():
    """A faint square (30 of 255): the L1 Sobel gradient is 4 * 30 = 120 across a side, 180 at a corner."""
    faint = square(30)
    assert not canny(faint, 100, 200).any(), "no strong edge: nothing"
    assert not canny(faint, 190, 200).any(), "below the low threshold: nothing"
    corners = canny(faint, 170, 170)[0, 0]
    assert 0 < int(corners.sum()) <= 16, "only the corners are above 170"
    # Hysteresis: the sides (weak, 120 > 100) are joined to the strong corners: the whole outline.
    outline = canny(faint, 100, 170)[0, 0]
    assert int(outline.sum()) > 80 and outline[30, 17:22].any() and outline[17:22, 30].any()
    assert torch.equal(outline, canny(faint, 100, 150)[0, 0])
    # Per-frame thresholds: two frames, two pairs.
    both = canny(torch.cat([faint, faint]), torch.tensor([100.0, 100.0]), torch.tensor([170.0, 200.0]))
    assert both[0].any() and not both[1].any()


def test_depth_control_image_from_a_tiny_estimator_matches_transformers(net_folder, depth_folder):
    """Loaded through the project's loading (depth_model_id a folder saved with save_pretrained): the control
    image is the estimator's depth scaled to [0, 1] per frame, as transformers' processor and post-processing
    give it."""
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    pipe = load_pipeline("tiny", device="cpu", width=56, height=56, depth_model_id=str(depth_folder),
                         depth_resolution=56, controlnets=[{"model_id": str(net_folder), "type": "depth"}],
                         smoothing={"enabled": False})
    image = np.random.default_rng(3).integers(0, 256, (2, 56, 56, 3), dtype=np.uint8)
    control = pipe.prepare_control(torch.from_numpy(image).permute(0, 3, 1, 2).float() / 127.5 - 1.0,
                                   [pipe.stream("a"), pipe.stream("b")])
    got = control.images[:, 0]
    assert got.shape == (2, 3, 56, 56)
    processor = AutoImageProcessor.from_pretrained(depth_folder)
    model = AutoModelForDepthEstimation.from_pretrained(depth_folder)
    inputs = processor(images=list(image), return_tensors="pt", do_resize=False)
    with torch.no_grad():
        outputs = model(**inputs)
    for k in range(2):
        depth = processor.post_process_depth_estimation(outputs, target_sizes=[(56, 56)] * 2)[k]["predicted_depth"]
        expected = (depth - depth.min()) / (depth.max() - depth.min())
        assert torch.allclose(got[k, 0], expected, atol=1e-4), k
        assert got[k].min() == 0 and got[k].max() == 1
    assert pipe(image, ["a", "b"]).shape == image.shape


def test_previous_is_exactly_the_last_output(net_folder):
    pipe = tiny(net_folder, "previous")
    first, second = frames(1, 1), frames(1, 2)
    as_tensor = [torch.from_numpy(f).permute(0, 3, 1, 2).float() / 127.5 - 1.0 for f in (first, second)]
    state = pipe.stream("s")
    # Before any output, the frame itself.
    before = pipe.prepare_control(as_tensor[0], [state]).images[0, 0]
    assert torch.equal(before, (as_tensor[0][0] / 2 + 0.5).clamp(0, 1))
    out1 = pipe(first, ["s"], output_type="float")
    made = pipe.prepare_control(as_tensor[1], [state]).images[0, 0]
    assert torch.equal(made, torch.from_numpy(out1[0]).permute(2, 0, 1))
    out2 = pipe(second, ["s"], output_type="float")
    assert torch.equal(pipe.prepare_control(as_tensor[1], [state]).images[0, 0],
                       torch.from_numpy(out2[0]).permute(2, 0, 1))


def test_previous_with_smoothing_follows_the_frames_of_one_batch(net_folder):
    """Smoothed, two frames of one stream in one call run one after the other; the second one's control
    image is the first one's output."""
    pipe = tiny(net_folder, "previous", smoothing={"enabled": True, "skip_similarity": 1.0})
    seen: list[torch.Tensor] = []
    forward = pipe.controlnet_forward

    def recording(*args):
        seen.append(args[3].clone())
        return forward(*args)

    pipe.controlnet_forward = recording
    out = pipe(frames(2, 4), ["s", "s"], output_type="float")
    assert len(seen) == 2
    assert torch.equal(seen[1][0, 0], torch.from_numpy(out[0]).permute(2, 0, 1))


# --- live changes --------------------------------------------------------------------------------------

def test_live_changes_take_effect_on_the_next_frame(net_folder):
    pipe = tiny(net_folder, "canny")
    image = frames(1, 5)
    on = pipe(image, ["s"], output_type="float")
    pipe.update("s", controlnet={"scale": 0.0})
    zero = pipe(image, ["s"], output_type="float")
    pipe.update("s", controlnet=False)
    off = pipe(image, ["s"], output_type="float")
    plain = load_pipeline("tiny", device="cpu", smoothing={"enabled": False})(image, ["s"], output_type="float")
    assert np.abs(off - plain).max() < 1e-6, "off: the UNet alone"
    assert np.abs(zero - plain).max() < 1e-6, "scale 0: zero residuals"
    assert np.abs(on - plain).max() > 1e-2, "on: the net changes the picture"
    pipe.update("s", controlnet={"enabled": True, "scale": 1.0, "type": "input"})
    typed = pipe(image, ["s"], output_type="float")
    assert np.abs(typed - on).max() > 1e-3, "another control image"
    pipe.update("s", controlnet={"type": "canny", "canny_low": 10, "canny_high": 20})
    low = pipe(image, ["s"], output_type="float")
    assert np.abs(low - on).max() > 1e-3, "other thresholds, other edges"
    assert pipe.stream("other").control.scale == [1.0], "another stream keeps the config's settings"


@pytest.mark.parametrize("change,match", [
    ({"controlnet": {"scale": [0.5, 0.5]}}, "2 value.*1 ControlNet"),
    ({"controlnet": {"type": "depth"}}, "needs the depth estimator"),
    ({"controlnet": {"canny_low": 300}}, "canny_low .300. must not be above canny_high .200."),
    ({"controlnet": {"scale": 2.5}}, "controlnet.scale must be a number from 0 to 2"),
    ({"controlnet": {"type": "edges"}}, "controlnet.type must be one of canny, depth, previous, input"),
    ({"controlnet": {"sacle": 1}}, "did you mean scale"),
    ({"controlnet": "maybe"}, "controlnet must be on/off"),
])
def test_a_refused_change_leaves_the_stream_as_it_was(net_folder, change, match):
    pipe = tiny(net_folder)
    pipe(frames(1), ["s"])
    before = pipe.stream("s").control
    prompt = pipe.stream("s").prompt
    with pytest.raises(ValueError, match=match) as err:
        pipe.update("s", prompt="something else", **change)
    assert "\n" not in str(err.value)
    assert pipe.stream("s").control == before and pipe.stream("s").prompt == prompt


@pytest.mark.parametrize("preset,settings,match", [
    ("tiny", {"controlnets": [{"model_id": "x", "type": "edges"}]}, "controlnets.0.type: Input should be 'canny'"),
    ("tiny", {"controlnets": [{"model_id": "x", "scale": 3}]}, "controlnets.0.scale: .*less than or equal to 2"),
    ("tiny", {"canny_low": 300}, "canny_low .300. must not be above canny_high .200."),
    ("tiny", {"depth_resolution": 500}, "depth_resolution must be a multiple of 14"),
    ("analytic", {"controlnets": [{"model_id": "x"}]}, "family 'analytic' takes no ControlNet"),
])
def test_bad_controlnet_settings_in_a_config_are_one_line(preset, settings, match):
    from pipelines.presets import build_config

    with pytest.raises(PipelineError, match=match) as err:
        build_config(preset, settings)
    assert "\n" not in str(err.value)


def test_terminal_lines_change_the_controlnet():
    from streamer.control.params import parse_command

    assert parse_command('controlnet {"scale": 0.5, "type": "depth"}') == (
        "set", {"controlnet": {"scale": 0.5, "type": "depth"}})
    assert parse_command("controlnet off") == ("set", {"controlnet": {"enabled": False}})
    with pytest.raises(ValueError, match="controlnet settings are not valid JSON"):
        parse_command("controlnet {bad")


def test_a_pipeline_without_controlnet_refuses_a_controlnet_change():
    pipe = load_pipeline("tiny", device="cpu")
    with pytest.raises(ValueError, match="has no ControlNet"):
        pipe.update("s", controlnet={"scale": 0.5})


# --- loading -------------------------------------------------------------------------------------------

def test_a_controlnet_of_another_family_is_refused_in_one_line(tmp_path):
    from pipelines.tiny import tiny_sdxl_components

    sdxl_net = tmp_path / "sdxl-net"
    tiny_controlnet(tiny_sdxl_components()["unet"]).save_pretrained(sdxl_net)
    with pytest.raises(PipelineError) as err:
        load_pipeline("tiny", device="cpu", controlnets=[{"model_id": str(sdxl_net)}])
    message = str(err.value)
    assert "\n" not in message and "is for SDXL models" in message and "base model" in message


def test_offline_a_controlnet_preset_names_every_model(offline):  # noqa: F811 - the fixture
    with pytest.raises(PipelineError) as err:
        load_pipeline("sd15-lcm-depth")
    message = str(err.value)
    assert ("`hf download SimianLuo/LCM_Dreamshaper_v7 && hf download madebyollin/taesd && hf download "
            "lllyasviel/control_v11f1p_sd15_depth && hf download depth-anything/Depth-Anything-V2-Small-hf`"
            ) in message
    assert "controlnets[0].model_id" in message and "depth_model_id" in message


@pytest.mark.slow
def test_compiled_controlnet_step_matches_eager_and_never_recompiles(net_folder):
    from torch._dynamo.utils import counters

    eager = tiny(net_folder, "canny")
    # graph="whole" (the default on CUDA) reads no live ControlNet settings: a ControlNet pipeline compiles
    # its model calls instead, ControlNet included.
    compiled = tiny(net_folder, "canny", compile="on", compile_batch_sizes=[2], graph="whole")
    assert compiled.whole_step is None
    assert compiled.controlnet_forward.compiled_calls > 0 and compiled.unet_forward.compiled_calls > 0
    before = counters["frames"]["ok"]
    for pipe in (eager, compiled):  # one stream with its nets off, one with another type: still one graph
        pipe.update("b", controlnet={"enabled": False})
        pipe.update("c", controlnet={"type": "input", "scale": 0.4})
    for ids in (["a"], ["a", "b"], ["b", "c"], ["b"]):
        a = eager(frames(len(ids), 7), ids, output_type="float")
        b = compiled(frames(len(ids), 7), ids, output_type="float")
        assert np.abs(a - b).max() < 1e-4, ids
    assert counters["frames"]["ok"] == before, "recompiled after start-up"
    assert not compiled.controlnet_forward.failed and not compiled.unet_forward.failed


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_controlnet_step_matches_eager_on_cuda(net_folder):
    eager = tiny(net_folder, "canny", device="cuda", compile="off")
    graphed = tiny(net_folder, "canny", device="cuda", compile="auto", compile_batch_sizes=[1, 4])
    for n in (1, 3, 4):
        ids = [f"s{i}" for i in range(n)]
        for _ in range(3):  # replays, not only the first call
            b = graphed(frames(n), ids, output_type="float")
        a = eager(frames(n), ids, output_type="float")
        assert np.abs(a - b).max() < 2e-2, n
    assert graphed.controlnet_forward.compiled_calls > 0 and not graphed.controlnet_forward.failed
