"""Files streamer writes: the one check of an output path, and writing through a temporary file.

Every output file (``streamer file``'s OUT, ``run``'s file sinks, ``--stats``, ``eval --json/--plot``,
``bench --json``) goes through
``check_output`` before any work starts, and is written as ``.NAME.partial-PID.EXT`` in OUT's own folder
(same filesystem) that is renamed over OUT only once it is complete. So a crash, ``kill -9`` or a full
disk leaves OUT as it was (the old file, or no file), never a broken one; only a finished file gets
OUT's name.
"""

from __future__ import annotations

import argparse
import atexit
import errno
import os
import re
import stat
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

# FFmpeg reads "name:" at the start of a path as a protocol (file:, pipe:, ...). Two letters or more, so a
# Windows drive letter (C:) is not one.
_URL_PREFIX = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]+):")
_FILE_URL = re.compile(r"file:(//)?", re.IGNORECASE)
OVERWRITE_HINT = "add --overwrite (-y) to replace it, or choose another name"


def add_overwrite_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The one ``--overwrite``/``-y`` flag of the commands that write files."""
    parser.add_argument("-y", "--overwrite", action="store_true",
                        help="replace output files that already exist (otherwise streamer refuses them); "
                             "the old file stays until the new one is complete")


def local_path(text: str | os.PathLike[str], *, what: str = "output") -> Path:
    """The file a path argument names. ``file:NAME`` and ``file:///abs/NAME`` (FFmpeg's spelling) are the
    file NAME; another URL-style prefix (``pipe:``, ``http:``) is refused with one line (ValueError),
    unless a file of exactly that name exists."""
    raw = os.fspath(text)
    if _FILE_URL.match(raw) and not os.path.lexists(raw):
        raw = _FILE_URL.sub("", raw, count=1)
        if not raw:
            raise ValueError(f"{what} {os.fspath(text)!r} names no file")
        return Path(raw).expanduser()
    prefix = _URL_PREFIX.match(raw)
    if prefix and not os.path.lexists(raw):
        raise ValueError(f"{what} {raw!r} looks like a {prefix.group('scheme')}: URL, not a file; give a plain "
                         f"file path (./{raw} for a file of that name)")
    return Path(raw).expanduser()


def same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _input_stats(inputs: Iterable[str | os.PathLike[str] | None]) -> list[tuple[str, os.stat_result]]:
    """The inputs that are local files (URLs, devices given by name and test patterns are skipped)."""
    found = []
    for spec in inputs:
        if spec is None:
            continue
        try:
            path = local_path(spec, what="input")
            found.append((os.fspath(spec), path.stat()))
        except (ValueError, OSError):
            continue
    return found


def check_output(target: str | os.PathLike[str], *, inputs: Iterable[str | os.PathLike[str] | None] = (),
                 overwrite: bool = False, what: str = "output") -> Path:
    """Refuse, in one line (ValueError), an output path that cannot or must not be written; return the
    path to write (a symlink is followed, so the file it points to is replaced and the link kept).

    Refused: the same file (device and inode) as any of ``inputs`` (also a hard link, a symlink or
    ``file:IN``), whatever ``overwrite`` says; a folder; a device or pipe; an existing file unless
    ``overwrite``; a path whose folder does not exist, is a file, or cannot be written into.
    """
    shown = os.fspath(target)
    path = local_path(target, what=what)
    if path.is_symlink():
        path = path.resolve()
    try:
        existing: os.stat_result | None = path.stat()
    except OSError:
        existing = None
    if existing is not None:
        for name, info in _input_stats(inputs):
            if same_file(existing, info):
                also = "" if Path(name) == Path(shown) else " (the same file by another name or a hard link)"
                raise ValueError(f"{what} {shown} is the input file {name}{also}; choose another output path")
        if stat.S_ISDIR(existing.st_mode):
            raise ValueError(f"{what} {shown} is a folder; give a file name such as {Path(shown) / 'out.mp4'}")
        if not stat.S_ISREG(existing.st_mode):
            raise ValueError(f"{what} {shown} is not a regular file (a device or a pipe); give a file path")
        if not overwrite:
            raise ValueError(f"{what} {shown} already exists; {OVERWRITE_HINT}")
    folder = path.parent
    if not folder.is_dir():
        blocking = next((p for p in (folder, *folder.parents) if os.path.lexists(p)), None)
        if blocking is not None and not blocking.is_dir():
            raise ValueError(f"cannot write {what} {shown}: {blocking} is a file, not a folder")
        raise ValueError(f"cannot write {what} {shown}: the output folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {what} {shown}: no permission to write into {folder}")
    return Path(os.path.abspath(path))


class PartialFile:
    """A file written as ``.NAME.partial-PID.EXT`` next to ``final`` and renamed over it by ``publish``.

    The temporary name keeps the extension, so a muxer picks the same container. ``discard`` removes it;
    one left unpublished when the process exits normally is removed then too (after ``kill -9`` it stays,
    and ``final`` is untouched).
    """

    def __init__(self, final: str | os.PathLike[str], *, overwrite: bool) -> None:
        self.final = Path(os.path.abspath(final))
        self.overwrite = overwrite
        stem, suffix = self.final.stem, self.final.suffix
        for n in range(1000):
            name = f".{stem}.partial-{os.getpid()}{f'-{n}' if n else ''}{suffix}"
            candidate = self.final.with_name(name)
            try:
                os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            except FileExistsError:
                continue
            break
        else:
            raise FileExistsError(f"too many partial files next to {self.final}")
        self.path = candidate
        self.done = False  # published, or kept because ``final`` appeared meanwhile
        try:  # a replaced file keeps its permissions
            os.chmod(self.path, stat.S_IMODE(self.final.stat().st_mode))
        except OSError:
            pass
        with _lock:
            _unpublished.add(self.path)

    def publish(self) -> None:
        """Rename the finished file over ``final`` (atomically). Without ``overwrite``, a ``final`` that
        appeared meanwhile is not replaced: FileExistsError, and the finished file stays where it is."""
        if self.overwrite:
            os.replace(self.path, self.final)
        else:
            try:
                os.link(self.path, self.final)  # fails if final exists: no window in which it is replaced
            except FileExistsError:
                self._forget()
                raise FileExistsError(errno.EEXIST, f"{self.final} appeared while it was being written; the "
                                      f"result is kept as {self.path}") from None
            except OSError:  # no hard links here (some network or FAT filesystems)
                if os.path.lexists(self.final):
                    self._forget()
                    raise FileExistsError(errno.EEXIST, f"{self.final} appeared while it was being written; "
                                          f"the result is kept as {self.path}") from None
                os.replace(self.path, self.final)
            else:
                os.unlink(self.path)
        self._forget()

    def discard(self) -> None:
        """Remove the unfinished file; ``final`` stays as it was. Does nothing once published."""
        if self.done:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self._forget()

    def _forget(self) -> None:
        self.done = True
        with _lock:
            _unpublished.discard(self.path)


def write_file(path: str | os.PathLike[str], write: Callable[[Path], object], *, overwrite: bool = True) -> None:
    """Write a file whole or not at all: ``write`` fills a PartialFile's temporary path (same extension, so
    a writer that goes by it picks the same format), which then gets ``path``'s name."""
    partial = PartialFile(path, overwrite=overwrite)
    try:
        write(partial.path)
        partial.publish()
    finally:
        partial.discard()


def write_text(path: str | os.PathLike[str], text: str, *, overwrite: bool = True) -> None:
    """Write a small text file whole or not at all (through a PartialFile)."""
    write_file(path, lambda temporary: temporary.write_text(text), overwrite=overwrite)


_lock = threading.Lock()
_unpublished: set[Path] = set()


@atexit.register
def _remove_unpublished() -> None:
    """A job abandoned mid-way (a second Ctrl-C) leaves no partial file behind."""
    with _lock:
        leftovers = list(_unpublished)
        _unpublished.clear()
    for path in leftovers:
        try:
            os.unlink(path)
        except OSError:
            pass
