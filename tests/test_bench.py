"""`streamer bench --quick` runs both pipelines on the same components and reports honest rows."""

from __future__ import annotations

import json
import subprocess
import sys


def test_quick_bench_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "streamer", "bench", "--device", "cpu", "--quick",
                           "--batch", "1,2", "--steps", "1", "--vae", "taesd", "--iterations", "2",
                           "--json", str(out)], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [(r["name"].split()[0], r["vae"]) for r in rows] == [
        ("diffusers", "full"), ("diffusers", "taesd"), ("streamer", "taesd"), ("streamer", "taesd")]
    assert [r["batch"] for r in rows[2:]] == [1, 2]
    for row in rows:
        assert set(row) >= {"name", "batch", "steps", "ms_per_frame", "fps", "ratio_vs_diffusers", "unet_tflops"}
        assert row["ms_per_frame"] > 0 and row["unet_tflops"] > 0
        # fps and ms/frame describe the same measurement (allowing for the JSON's rounding)
        assert abs(row["fps"] * row["ms_per_frame"] - 1000) < 1000 * 0.01
    base = rows[1]["ms_per_frame"]  # each frame-step row is compared with diffusers on the same VAE
    for row in rows[2:]:
        assert abs(row["ratio_vs_diffusers"] - base / row["ms_per_frame"]) < 0.01 * row["ratio_vs_diffusers"] + 0.01
    assert result["unet_gflop_per_frame"] > 0 and result["machine"]["diffusers"]
    assert "diffusers" in proc.stdout and "ms/frame" in proc.stdout
    # The libraries' import chatter (torchvision hints) is silenced as in the other commands.
    assert "[transformers]" not in proc.stderr and "torchvision" not in proc.stderr
    # Two calls per row: each row says how far its calls varied, and the run says the ratios are shaky.
    assert all(row["spread"] is not None and row["spread"] >= 0 for row in rows)
    assert "streamer: warning: " in proc.stderr and "--iterations" in proc.stderr


def test_spread_warning_reads_the_rows():
    from pipelines.bench import WIDE_SPREAD, spread_warning

    steady = {"iterations": 20, "rows": [{"spread": 0.05}, {"spread": WIDE_SPREAD / 2}]}
    assert spread_warning(steady) is None
    busy = {"iterations": 20, "rows": [{"spread": 0.05}, {"spread": 1.8}]}
    assert "varied by up to 180% of their median" in spread_warning(busy)
    assert "too few" in spread_warning({"iterations": 1, "rows": [{"spread": None}]})


def test_bench_bad_output_folder(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "streamer", "bench", "--quick", "--json",
                           str(tmp_path / "missing" / "b.json")], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_quick_bench_sdxl_path(tmp_path):
    """SDXL sizes: two text encoders, pooled embeddings, size conditioning, against diffusers' SDXL img2img."""
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "streamer", "bench", "--device", "cpu", "--quick",
                           "--arch", "tiny-sdxl", "--batch", "2", "--steps", "1", "--vae", "taesd",
                           "--iterations", "1", "--json", str(out)], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["resolution"] == 64 and result["unet_gflop_per_frame"] > 0
    names = [(r["name"], r["vae"], r["batch"]) for r in result["rows"]]
    assert names == [("diffusers StableDiffusionXLImg2ImgPipeline", "full", 1),
                     ("diffusers StableDiffusionXLImg2ImgPipeline", "taesd", 1),
                     ("streamer frame step (eager)", "taesd", 2)]


def test_random_architectures_match_the_real_models():
    """Built without weights (meta device): the parameter counts of SD 1.5's and SDXL base's UNets."""
    from pipelines.random_models import random_components

    sd15 = random_components("sd15", init_device="meta")
    sdxl = random_components("sdxl", init_device="meta")
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(sd15["unet"]) == 859_602_884  # SD 1.5's 859.5 M plus LCM's guidance embedding
    assert count(sdxl["unet"]) == 2_567_463_684
    assert sdxl["text_encoder_2"].config.hidden_size == 1280 and sdxl["text_encoder_2"].config.num_hidden_layers == 32


def test_bench_json_goes_through_the_one_output_check(tmp_path):
    """An existing --json is refused before anything loads and kept as it was; -y replaces it, whole."""
    out = tmp_path / "bench.json"
    out.write_text("old")
    args = [sys.executable, "-m", "streamer", "bench", "--device", "cpu", "--quick", "--batch", "1", "--steps", "1",
            "--vae", "taesd", "--iterations", "1", "--json", str(out)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"streamer: error: --json {out} already exists; add --overwrite (-y) to replace it, or choose another name"]
    assert out.read_text() == "old"
    proc = subprocess.run([*args, "-y"], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert [r["batch"] for r in json.loads(out.read_text())["rows"]][-1] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]  # no partial file left
