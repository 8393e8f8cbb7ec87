"""A plain `pip install .` (a wheel, not an editable install) carries everything a user runs: the presets,
the server's pages, the `streamer` command and its version."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_wheel_runs_a_preset_outside_the_repository(tmp_path: Path) -> None:
    source = tmp_path / "src"  # a clean copy: no build/ left over from another build in the repository
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for package in ("streamer", "pipelines"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    # No build isolation and no index: the build uses this environment's setuptools, nothing is downloaded.
    built = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", str(source), "-w",
                            str(tmp_path / "dist")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    wheel = next((tmp_path / "dist").glob("streamer-*.whl"))
    target = tmp_path / "site"
    installed = subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
                               capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=300)

    where = run(sys.executable, "-c", "import streamer, pipelines.presets as p; print(streamer.__file__); "
                "print(' '.join(p.preset_names()))")
    assert where.returncode == 0, where.stderr
    location, names = where.stdout.splitlines()
    assert location.startswith(str(target))  # the installed copy, not the repository
    assert {"tiny", "lcm-dreamshaper", "passthrough"} <= set(names.split())
    version = run(str(target / "bin" / "streamer"), "--version")
    assert version.returncode == 0 and version.stdout.startswith("streamer "), version.stderr
    done = run(str(target / "bin" / "streamer"), "run", "--source", "testsrc:64x48@15", "--sink", "out.mkv",
               "--preset", "tiny", "--device", "cpu", "--duration", "1")
    assert done.returncode == 0, done.stderr
    assert (work / "out.mkv").stat().st_size > 0
