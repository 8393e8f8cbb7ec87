"""Loading through the project's own code, and the one-line errors a user gets when it cannot."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import LatentConsistencyModelImg2ImgPipeline

from pipelines import load_pipeline
from pipelines.errors import PipelineError
from pipelines.lcm_img2img import StreamPipeline
from pipelines.presets import build_config, preset_names
from pipelines.tiny import tiny_components


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty Hugging Face cache and the hub client told it is offline: nothing leaves the machine."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_every_preset_is_a_valid_config():
    names = preset_names()
    assert {"lcm-dreamshaper", "sd15-lcm-lora", "sdxl-lcm-lora", "sd-turbo", "sdxl-turbo", "tiny",
            "passthrough", "analytic"} <= set(names)
    for name in names:
        build_config(name)


def test_default_preset_is_a_real_lcm_model_with_taesd():
    config = build_config(None)
    assert config.family == "lcm" and config.model_id and "taesd" in (config.vae_id or "")


def test_unknown_preset_lists_the_presets():
    with pytest.raises(PipelineError, match="unknown preset 'nope'; choose one of: .*tiny"):
        load_pipeline("nope")


def test_bad_setting_is_one_line():
    with pytest.raises(PipelineError, match="bad setting: width must be a multiple of 8"):
        build_config("tiny", {"width": 30})


def test_offline_default_preset_names_the_model_and_how_to_get_it(offline):
    with pytest.raises(PipelineError) as err:
        load_pipeline(None)
    message = str(err.value)
    assert "SimianLuo/LCM_Dreamshaper_v7" in message and "hf download" in message and "offline" in message
    assert "\n" not in message
    # Every model the preset needs, in one command: one trip to a machine with network, not two.
    assert "`hf download SimianLuo/LCM_Dreamshaper_v7 && hf download madebyollin/taesd`" in message
    assert "model_id and vae_id" in message and "model setting" not in message


def test_offline_lora_preset_names_the_base_model_the_lora_and_the_autoencoder(offline):
    with pytest.raises(PipelineError) as err:
        load_pipeline("sd15-lcm-lora")
    assert ("`hf download stable-diffusion-v1-5/stable-diffusion-v1-5 && hf download "
            "latent-consistency/lcm-lora-sdv1-5 && hf download madebyollin/taesd`") in str(err.value)
    assert "model_id, lora_id and vae_id" in str(err.value)


def test_offline_a_local_model_folder_is_not_asked_for(offline, tmp_path):
    """model_id a folder (not a hub id), only the autoencoder missing: only it is named."""
    (tmp_path / "model").mkdir()
    with pytest.raises(PipelineError) as err:
        load_pipeline(None, model_id=str(tmp_path / "model"))
    assert "`hf download madebyollin/taesd`" in str(err.value) and "set vae_id to a local folder" in str(err.value)


def test_offline_streamer_file_default_preset_is_one_line(tmp_path):
    """`streamer file` with the default preset, offline and nothing cached: one line, exit 2, in seconds."""
    from media import make_clip

    clip = make_clip(tmp_path / "in.mp4", seconds=0.5, size=(64, 48))
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "streamer", "file", str(clip), str(tmp_path / "out.mp4")],
                          capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("streamer: error:") and "SimianLuo/LCM_Dreamshaper_v7" in lines[0]
    assert "hf download" in lines[0]


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(PipelineError, match="is not a diffusers model: missing model_index.json"):
        StreamPipeline.from_pretrained(str(tmp_path), device="cpu")


def test_missing_folder(tmp_path):
    with pytest.raises(PipelineError, match="does not exist"):
        StreamPipeline.from_pretrained(str(tmp_path / "nothing"), device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_asked_for_but_absent():
    with pytest.raises(PipelineError, match="CUDA was asked for .* --device cpu"):
        load_pipeline("tiny", device="cuda")


def test_float16_on_cpu_is_refused():
    with pytest.raises(PipelineError, match="float16 is not supported on CPU"):
        load_pipeline("tiny", device="cpu", dtype="float16")


def test_local_folder_loads_and_runs(tmp_path):
    LatentConsistencyModelImg2ImgPipeline(**tiny_components("lcm")).save_pretrained(tmp_path / "m")
    pipe = StreamPipeline.from_pretrained(str(tmp_path / "m"), width=64, height=64, device="cpu")
    out = pipe(np.full((1, 48, 80, 3), 128, np.uint8))
    assert out.shape == (1, 48, 80, 3) and out.dtype == np.uint8


@pytest.mark.parametrize("bad,match", [
    (np.zeros((1, 8, 8, 3), np.float32), "uint8"),
    (np.zeros((8, 8, 3), np.uint8), r"shape \(N, H, W, 3\)"),
    (np.zeros((1, 8, 8, 4), np.uint8), r"shape \(N, H, W, 3\)"),
    ([[1, 2, 3]], "numpy array"),
])
def test_bad_frames_raise_value_error(bad, match):
    pipe = load_pipeline("tiny", device="cpu")
    with pytest.raises(ValueError, match=match):
        pipe(bad)


def test_one_stream_id_per_frame():
    pipe = load_pipeline("tiny", device="cpu")
    with pytest.raises(ValueError, match="2 frames but 1 stream ids"):
        pipe(np.zeros((2, 64, 64, 3), np.uint8), ["a"])
