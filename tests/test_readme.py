"""The README's code runs as written: every ```python block (offline, on a CPU), and every `streamer ...`
command of its ```bash blocks parses with today's flags. A block that needs a GPU or the network is marked
with an HTML comment `<!-- no-test -->` on the line before it, and only such a block is left out."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
BLOCK = re.compile(r"(?P<before>[^\n]*)\n```(?P<lang>\w*)\n(?P<code>.*?)\n```", re.S)


def code_blocks(text: str, lang: str) -> list[tuple[int, str]]:
    """(line number, code) of each ```lang block not marked <!-- no-test -->."""
    return [(text.count("\n", 0, m.start("code")) + 1, m["code"]) for m in BLOCK.finditer(text)
            if m["lang"] == lang and "<!-- no-test -->" not in m["before"]]


def streamer_commands(code: str) -> list[list[str]]:
    commands = []
    for line in code.splitlines():
        for part in re.split(r"&&|\|\||;", line):
            words = shlex.split(part, comments=True)
            if words[:1] == ["streamer"]:
                commands.append(words[1:])
    return commands


def test_the_block_finder_sees_marked_and_unmarked_blocks() -> None:
    text = "intro\n```python\nx = 1\n```\n<!-- no-test -->\n```python\nimport cuda_only\n```\n"
    assert code_blocks(text, "python") == [(3, "x = 1")]
    assert streamer_commands("pip install . && streamer run --source testsrc  # a comment") == [
        ["run", "--source", "testsrc"]]


PYTHON_BLOCKS = code_blocks(README.read_text(), "python")


@pytest.mark.parametrize(("line", "code"), PYTHON_BLOCKS, ids=[f"README.md:{n}" for n, _ in PYTHON_BLOCKS])
def test_python_block_runs(tmp_path: Path, line: int, code: str) -> None:
    """In a fresh interpreter, in an empty folder, offline: what a reader who pastes it gets."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"README.md:{line}\n{done.stderr}"


def test_the_readme_has_a_python_example() -> None:
    assert PYTHON_BLOCKS, "the README's Python API example is gone or every block is marked no-test"


def test_bash_blocks_use_existing_flags() -> None:
    from streamer.cli import build_parser

    commands = [(n, c) for n, code in code_blocks(README.read_text(), "bash") for c in streamer_commands(code)]
    assert len(commands) >= 5
    for line, words in commands:
        parser = build_parser()
        try:
            args, extras = parser.parse_known_args(words)
        except SystemExit:
            pytest.fail(f"README.md:{line}: `streamer {' '.join(words)}` does not parse")
        assert not extras, f"README.md:{line}: unknown arguments {extras}"
