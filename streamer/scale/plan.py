"""What a batch does: which input files, the output each one gets, which are already done, and the record.

Inputs are files, folders (searched recursively for video files; the output keeps the file's place under
the folder), glob patterns, or list files (``.txt``: one of those per line, ``#`` comments, paths relative
to the list's folder). Every output is ``OUT/NAME.EXT`` with the extension given (it picks the container).

A file is done when its output exists: an output only ever gets its name once complete (streamer.engine.outputs).
The one exception, a file stopped by a signal (its output is playable but ends early), is recorded as
``stopped`` in the summary ``OUT/streamer-batch.json``, and a later run does it again. ``--overwrite``
does every file again.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from streamer.engine.outputs import check_output, local_path, write_text

log = logging.getLogger(__name__)

SUMMARY_NAME = "streamer-batch.json"
LIST_SUFFIXES = (".txt", ".list")
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mts", ".m2ts", ".mpg", ".mpeg",
                  ".flv", ".wmv", ".ogv", ".3gp", ".mxf", ".y4m", ".gif")
OUTPUT_EXTENSIONS = ("mp4", "mkv", "mov", "webm", "ts")
_GLOB_CHARS = set("*?[")


@dataclass
class BatchFile:
    """One input and its output; after the job, what became of it (the summary's per-file record)."""

    input: str  # absolute paths
    output: str
    name: str  # the output's path under OUT: the summary's key
    overwrite: bool = False  # replace an existing output (--overwrite, or a stopped one done again)
    expected_frames: int | None = None
    status: str = "pending"  # done, stopped, failed, skipped, not started
    frames: int = 0
    seconds: float = 0.0
    worker: str = ""
    retries: int = 0
    error: str = ""
    user_error: bool = False  # the input's fault (unreadable, no video): exit status 2
    problem: str = ""  # damaged input, read as far as possible

    def record(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("overwrite", "user_error", "name"):
            data.pop(key)
        return {key: value for key, value in data.items() if value not in ("", None)}


def expand_inputs(specs: list[str], out_dir: Path) -> list[tuple[Path, PurePosixPath]]:
    """Every input file named by ``specs``, with its output's relative name (extension not yet changed).

    ValueError (one line) for a name that exists nowhere, a pattern or folder with no video, or nothing at
    all. The same file named twice is taken once; files under ``out_dir`` (the batch's own outputs, when OUT
    is inside an input folder) are left out."""
    found: list[tuple[Path, PurePosixPath]] = []
    for spec in specs:
        found.extend(_expand_one(spec, out_dir, base=None, from_list=False))
    unique: list[tuple[Path, PurePosixPath]] = []
    seen: set[tuple[int, int]] = set()
    for path, name in found:
        info = path.stat()
        if (info.st_dev, info.st_ino) not in seen:
            seen.add((info.st_dev, info.st_ino))
            unique.append((path, name))
    if not unique:
        raise ValueError("no input files: give video files, folders, glob patterns or a list file (.txt)")
    return unique


def _expand_one(spec: str, out_dir: Path, *, base: Path | None, from_list: bool
                ) -> list[tuple[Path, PurePosixPath]]:
    path = local_path(spec, what="input")
    if base is not None and not path.is_absolute():
        path = base / path
    if path.is_dir():
        return _folder_videos(path, out_dir)
    if path.is_file():
        if path.suffix.lower() in LIST_SUFFIXES:
            if from_list:
                raise ValueError(f"list file {base} names another list file {spec}; put the files in one list")
            return _list_file(path, out_dir)
        return [(path.resolve(), PurePosixPath(path.name))]
    if _GLOB_CHARS & set(str(path)):
        matches = [Path(m) for m in sorted(glob.glob(str(path), recursive=True))]
        files = [(m.resolve(), PurePosixPath(m.name)) for m in matches if m.is_file() and not _inside(m, out_dir)]
        if not files:
            raise ValueError(f"input pattern {spec!r} matches no file")
        return files
    if os.path.lexists(path):
        raise ValueError(f"input {spec} is not a file or a folder (a device, a pipe or a broken link)")
    where = f" (in list file {base})" if from_list else ""
    raise ValueError(f"input {spec} does not exist{where}")


def _folder_videos(folder: Path, out_dir: Path) -> list[tuple[Path, PurePosixPath]]:
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):  # hidden, and unfinished outputs
            continue
        if path.suffix.lower() in VIDEO_SUFFIXES and path.is_file() and not _inside(path, out_dir):
            files.append((path.resolve(), PurePosixPath(relative.as_posix())))
    if not files:
        raise ValueError(f"folder {folder} holds no video files (looked for {', '.join(VIDEO_SUFFIXES[:6])}, ...)")
    return files


def _list_file(path: Path, out_dir: Path) -> list[tuple[Path, PurePosixPath]]:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read list file {path}: {exc}") from None
    files = []
    for line in lines:
        entry = line.strip()
        if entry and not entry.startswith("#"):
            files.extend(_expand_one(entry, out_dir, base=path.parent, from_list=True))
    if not files:
        raise ValueError(f"list file {path} names no file")
    return files


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def plan(specs: list[str], out_dir: str | Path, *, ext: str, overwrite: bool) -> tuple[list[BatchFile], list[Path]]:
    """The batch's files, each checked like `streamer file`'s OUT (those already done are ``skipped``), and
    the folders created for them (for ``remove_folders`` if the batch is refused later).

    Refused in one line (ValueError), with nothing created: OUT a file, two inputs that would get the same
    output, an output that is one of the inputs, an output that cannot be written."""
    out = local_path(out_dir, what="--out")
    if os.path.lexists(out) and not out.is_dir():
        raise ValueError(f"--out {out_dir} is a file; give a folder (it is created if missing)")
    if not out.is_dir() and not out.parent.is_dir():
        raise ValueError(f"cannot create --out {out_dir}: its parent folder {out.parent} does not exist")
    found = expand_inputs(specs, out)
    by_output: dict[PurePosixPath, Path] = {}
    for path, name in found:
        target = name.with_suffix(f".{ext}")
        if target in by_output:
            raise ValueError(f"inputs {by_output[target]} and {path} would both be written to {out / target}; "
                             "rename one or run them in separate batches")
        by_output[target] = path
    previous = read_summary(out / SUMMARY_NAME)
    inputs = [path for path, _ in found]
    files = [BatchFile(str(path), str((out / name).absolute()), str(name)) for name, path in by_output.items()]
    created = [folder for folder in (out, *{Path(f.output).parent for f in files}) if not folder.exists()]
    try:
        for folder in sorted(created, key=lambda p: len(p.parts)):
            folder.mkdir(exist_ok=True)
        for item in files:
            # A file stopped by a signal, or whose job failed, was published short (what was stylized is
            # kept): it is done again, not skipped.
            unfinished = previous.get(item.name, {}).get("status") in ("stopped", "failed")
            item.overwrite = overwrite or unfinished
            if os.path.lexists(item.output) and not item.overwrite:
                if Path(item.output).is_file() and not any(os.path.samefile(item.output, p) for p in inputs):
                    _mark_skipped(item, previous.get(item.name, {}))
                    continue
            check_output(item.output, inputs=inputs, overwrite=item.overwrite)
    except BaseException:
        remove_folders(created)
        raise
    return files, created


def remove_folders(created: list[Path]) -> None:
    """Remove the folders ``plan`` created (those still empty), deepest first."""
    for folder in sorted(created, key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:
            pass


def _mark_skipped(item: BatchFile, before: dict[str, Any]) -> None:
    item.status = "skipped"
    item.frames = int(before.get("frames", 0)) if before.get("status") == "done" else 0


def read_summary(path: Path) -> dict[str, dict[str, Any]]:
    """The per-file records of an earlier run into the same OUT (empty when there is none or it is unreadable)."""
    try:
        data = json.loads(path.read_text())
        files = data["files"]
        return {str(k): v for k, v in files.items() if isinstance(v, dict)} if isinstance(files, dict) else {}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring the unreadable earlier summary %s (%s)", path, exc)
        return {}


@dataclass
class Summary:
    """The JSON record of a batch, rewritten (atomically) after every file so that it is never behind."""

    path: Path
    settings: dict[str, Any]
    workers: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    clock: float = field(default_factory=time.perf_counter)

    def write(self, files: list[BatchFile], *, finished: bool = False) -> dict[str, Any]:
        earlier = read_summary(self.path)
        counts = {status: sum(f.status == status for f in files)
                  for status in ("done", "skipped", "stopped", "failed", "not started")}
        frames = sum(f.frames for f in files if f.status in ("done", "stopped"))
        seconds = time.perf_counter() - self.clock
        data = {
            "finished": finished,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "seconds": round(seconds, 3),
            "files_total": len(files),
            **{status.replace(" ", "_"): count for status, count in counts.items()},
            "frames": frames,
            "frames_per_second": round(frames / seconds, 3) if seconds > 0 else 0.0,
            "files_per_second": round(counts["done"] / seconds, 4) if seconds > 0 else 0.0,
            "workers": self.workers,
            "settings": self.settings,
            # Files of earlier runs into the same OUT that this run did not name are kept.
            "files": {**earlier, **{f.name: f.record() for f in files if f.status != "skipped"}},
        }
        write_text(self.path, json.dumps(data, indent=2) + "\n")
        return data
