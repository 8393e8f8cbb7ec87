"""ControlNet through the commands: --controlnet/--canny flags of file/run/serve/eval, the control port, and
`streamer bench --controlnet-rows`. Real `python -m streamer` subprocesses."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.conditioning.tiny import tiny_controlnet
from tests.http_helpers import when_it_answers
from tests.test_controlnet import net_folder  # noqa: F401 - the fixture

# --- the CLI -------------------------------------------------------------------------------------------

def streamer(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamer", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("command", ["file", "run", "serve"])
@pytest.mark.parametrize("flag,match", [
    ("x:edges", "control type must be one of canny, depth, previous, input, got 'edges'"),
    ("x:canny:3", "scale must be a number from 0 to 2, got '3'"),
    ("x:canny:big", "scale must be a number from 0 to 2, got 'big'"),
    ("a:b:c:d", "expected ID\\[:TYPE\\[:SCALE\\]\\]"),
])
def test_bad_controlnet_flags_are_one_line(tmp_path, command, flag, match):
    args = {"file": ["in.mp4", "out.mp4"], "run": ["--source", "testsrc"], "serve": []}[command]
    done = streamer(command, *args, "--controlnet", flag, cwd=tmp_path)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("streamer: error: argument --controlnet:") and re.search(match, lines[0])


def test_a_mismatched_controlnet_flag_is_one_line(tmp_path):
    from pipelines.tiny import tiny_sdxl_components

    tiny_controlnet(tiny_sdxl_components()["unet"]).save_pretrained(tmp_path / "sdxl-net")
    done = streamer("file", "in.mp4", "out.mp4", "--preset", "tiny", "--controlnet", f"{tmp_path / 'sdxl-net'}:canny",
                    cwd=tmp_path)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("streamer: error: ControlNet") and "is for SDXL models" in lines[0]


@pytest.mark.slow
def test_eval_runs_a_conditioned_preset(tmp_path, net_folder):  # noqa: F811
    """`streamer eval` with the tiny preset and a ControlNet on the previous output (TemporalNet-style)."""
    done = streamer("eval", "--preset", "tiny", "--controlnet", f"{net_folder}:previous:0.8", "--canny", "50:120",
                    "--clips", "still", "--frames", "5", "--clip-size", "64x48", "--json", "r.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert set(report["clips"]["still"]["variants"]) == {"fresh", "off", "on"}


@pytest.mark.slow
def test_control_port_changes_the_controlnet_live(tmp_path, net_folder):  # noqa: F811
    """`streamer run` with a ControlNet: GET /params reports its settings, a change that does not fit the
    nets is refused whole (400, one line), a good one is applied and reported, frames keep coming."""
    import signal
    import time

    from conftest import free_port
    from test_params import _error_line, _send
    from test_run_cli import start, stop

    port = free_port()
    process = start("--source", "testsrc:128x96@15", "--sink", "out.mkv", "--preset", "tiny", "--controlnet",
                    f"{net_folder}:canny:0.8", "--control-port", str(port), "--duration", "180", cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        status, initial = when_it_answers(process, lambda: _send("GET", f"{url}/params"), 120, "control port")
        assert status == 200 and initial["controlnet"] == {"enabled": True, "scale": [0.8], "type": ["canny"],
                                                           "canny_low": 100.0, "canny_high": 200.0}
        status, body = _send("POST", f"{url}/params", json.dumps({"seed": 5, "controlnet": {"scale": [1, 1]}}))
        assert status == 400 and "1 ControlNet" in _error_line(body)
        assert _send("GET", f"{url}/params") == (200, initial)
        status, body = _send("POST", f"{url}/params", json.dumps({"controlnet": {"scale": 0.3, "type": "previous"}}))
        assert status == 200, body
        after = {**initial, "controlnet": {**initial["controlnet"], "scale": [0.3], "type": ["previous"]}}
        assert _send("GET", f"{url}/params") == (200, after)
        first = _send("GET", f"{url}/stats")[1]["frames_out"]
        deadline = time.monotonic() + 60
        while _send("GET", f"{url}/stats")[1]["frames_out"] <= first:
            assert time.monotonic() < deadline, "no frame came out after the change"
            time.sleep(0.3)
    finally:
        code, err = stop(process, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM and "Traceback" not in err, err


@pytest.mark.slow
@pytest.mark.parametrize("arch,reference", [("tiny", "diffusers SDControlNetImg2Img"),
                                            ("tiny-sdxl", "diffusers SDXLControlNetImg2Img")])
def test_bench_times_one_and_two_controlnets_against_diffusers(tmp_path, arch, reference):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "streamer", "bench", "--device", "cpu", "--quick", "--arch", arch,
                           "--controlnet-rows", "1,2", "--batch", "2", "--steps", "1", "--vae", "taesd",
                           "--iterations", "1", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    for count in (1, 2):
        ours, theirs = rows[f"streamer frame step + {count} ControlNet (eager)"], rows[f"{reference} x{count}"]
        assert ours["batch"] == 2 and theirs["batch"] == 1
        assert abs(ours["ratio_vs_diffusers"] - theirs["ms_per_frame"] / ours["ms_per_frame"]) < \
            0.01 * ours["ratio_vs_diffusers"] + 0.01
    costs = [r for name, r in rows.items() if name.startswith("control image:")]
    assert [r["name"].split()[2] for r in costs] == ["canny", "depth"]
    assert all(r["ms_per_frame"] > 0 and r["ratio_vs_diffusers"] is None for r in costs)
    assert "ControlNet" in done.stdout


def test_bench_refuses_a_bad_controlnet_count(tmp_path):
    done = streamer("bench", "--quick", "--controlnet-rows", "5", cwd=tmp_path)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and "at most 4 ControlNets" in lines[0], done.stderr


@pytest.mark.slow
def test_file_stylizes_with_a_controlnet_flag(tmp_path, net_folder):  # noqa: F811
    from media import make_clip

    clip = make_clip(tmp_path / "in.mp4", seconds=0.4, size=(64, 48))
    done = streamer("file", str(clip), "out.mp4", "--preset", "tiny", "--controlnet", f"{net_folder}:input:0.5",
                    "--controlnet", f"{net_folder}:canny", "--canny", "60:120", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out.mp4").stat().st_size > 0
