"""`pipelines/` is usable alone: it never imports `streamer`, prints nothing, chooses no folder of its own,
and its modules import each other in one direction only."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Runs in a fresh interpreter where `import streamer` fails: what a user of the pipelines package alone gets.
ALONE = r"""
import importlib.abc, json, sys

class NoStreamer(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "streamer" or name.startswith("streamer."):
            raise ImportError(f"{name} is blocked: pipelines must not import streamer")
        return None

sys.meta_path.insert(0, NoStreamer())
import numpy as np
from pipelines import load_pipeline

cache = sys.argv[1]
heard = []
pipe = load_pipeline("tiny", device="cpu", smoothing={"enabled": False}, compile="on", compile_batch_sizes=[1],
                     compile_cache_dir=cache, on_progress=heard.append)
frames = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
pipe.update("a", prompt="a watercolor", strength=0.6, seed=3)
out = pipe.submit(frames, ["a"]).result()
pipe.prepare_thread()
plain = load_pipeline("passthrough")
assert (plain(frames) == frames).all()
with open(sys.argv[2], "w") as f:
    json.dump({"heard": heard, "shape": list(out.shape), "dtype": str(out.dtype),
               "streamer": sorted(m for m in sys.modules if m == "streamer" or m.startswith("streamer."))}, f)
"""


def test_pipelines_run_without_streamer_print_nothing_and_cache_where_told(tmp_path: Path) -> None:
    cache, home = tmp_path / "my-cache", tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env.update(PYTHONPATH=str(REPO), HOME=str(home), HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", ALONE, str(cache), str(tmp_path / "report.json")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == "", "pipelines printed something"
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["streamer"] == []
    assert report["shape"] == [1, 64, 64, 3] and report["dtype"] == "uint8"
    # Progress went to the caller's callback, naming the folder it was given, and compiled code is there.
    assert any("batch 1" in m for m in report["heard"]), report["heard"]
    assert any(str(cache) in m for m in report["heard"]), report["heard"]
    assert cache.is_dir() and any(cache.rglob("*")), "nothing was cached in the folder passed"
    assert not (home / ".cache" / "streamer").exists(), "pipelines chose a cache folder of their own"


def test_the_cli_passes_its_cache_folder_and_the_file_or_flag_can_change_it(tmp_path: Path) -> None:
    from streamer.cli import build_parser
    from streamer.config import COMPILE_CACHE_DIR, pipeline_config_from_args

    parser = build_parser()
    args = parser.parse_args(["file", "in.mp4", "out.mp4", "--preset", "tiny"])
    assert pipeline_config_from_args(args).compile_cache_dir == str(COMPILE_CACHE_DIR)
    setup = tmp_path / "setup.yaml"
    setup.write_text(f"pipeline:\n  compile_cache_dir: {tmp_path / 'elsewhere'}\n")
    args = parser.parse_args(["file", "in.mp4", "out.mp4", "--preset", "tiny", "--config", str(setup)])
    assert pipeline_config_from_args(args).compile_cache_dir == str(tmp_path / "elsewhere")


def _imports(path: Path) -> set[str]:
    """Every pipelines module a file imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("pipelines.")}


def test_pipelines_modules_form_no_import_circle_and_never_import_streamer() -> None:
    graph = {f"pipelines.{p.stem}": _imports(p) for p in (REPO / "pipelines").glob("*.py") if p.stem != "__init__"}
    for path in (REPO / "pipelines").glob("*.py"):
        text = path.read_text()
        assert "import streamer" not in text and "from streamer" not in text, path.name
        assert "print(" not in text and "sys.stderr" not in text and "sys.stdout" not in text, path.name
        assert not re.search(r"[\"']\.cache[\"']|~/\.cache/streamer", text), f"{path.name} picks a cache folder"

    def visit(module: str, trail: tuple[str, ...]) -> None:
        assert module not in trail, f"import circle: {' -> '.join((*trail, module))}"
        for target in sorted(graph.get(module, ())):
            visit(target, (*trail, module))

    for module in graph:
        visit(module, ())


def test_every_pipeline_implements_the_frame_pipeline_protocol() -> None:
    """Callers (the GPU worker, the file job) call submit/result and prepare_thread without probing."""
    import numpy as np

    from pipelines import load_pipeline
    from pipelines.frames import FramePipeline

    frames = np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    for preset, overrides in (("passthrough", {}), ("tiny", {"device": "cpu"}),
                              ("analytic", {"device": "cpu", "width": 64, "height": 64})):
        pipe = load_pipeline(preset, **overrides)
        assert isinstance(pipe, FramePipeline), preset
        pipe.prepare_thread()
        pending = pipe.submit(frames, ["a", "b"])
        out = pending.result()
        assert pending.done() and out.dtype == np.uint8 and out.shape == frames.shape, preset
        assert np.array_equal(out, pipe(frames, ["a", "b"])), preset
        pipe.update("a", seed=5)
        pipe.remove_stream("a")
