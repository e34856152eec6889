"""Files replaced whole or not at all: a kill mid-write leaves the old file, never half a new one."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from .errors import TinygenError


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write through a temp file in the same folder, fsync, then rename over `path`.

    The file system's refusals (a parent that is a file, no permission, a full disk) become
    one TinygenError naming the path."""
    if path.is_dir():
        raise TinygenError(f"{path} is a folder; give the path of the file to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    try:
        # mkstemp makes the file 0600; a model folder must stay readable by whoever serves it.
        os.chmod(tmp, _mode_of(path))
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _cannot_write(path, exc) from None
        raise


def file_in_the_way(path: Path) -> Path | None:
    """The file that stands where `path` needs a folder (`corpus.txt` in `corpus.txt/run`)."""
    return next((p for p in Path(path).parents if p.exists() and not p.is_dir()), None)


def check_parents(path: Path) -> None:
    """Refuse, before the work that makes a file (or fills a folder), a path whose folders a
    file stands in the way of (`-o corpus.txt/train.tokens`), or where nothing can be written
    (a read-only file system, a folder not the user's), as the write would refuse it after.
    Folders not there yet are made on writing, so the nearest one that is must take them."""
    path = Path(path)
    blocking = file_in_the_way(path)
    if blocking is not None:
        raise TinygenError(f"cannot write {path}: {blocking} is a file, not a folder")
    folder = path if path.is_dir() else path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise TinygenError(f"cannot write {path}: {folder} is not writable (a read-only file "
                           f"system, or no permission); write it elsewhere")


def _cannot_write(path: Path, exc: OSError) -> TinygenError:
    if isinstance(exc, (FileExistsError, NotADirectoryError)):  # mkdir's words for "a file is in the way"
        blocking = file_in_the_way(path)
        if blocking is not None:
            return TinygenError(f"cannot write {path}: {blocking} is a file, not a folder")
    return TinygenError(f"cannot write {path}: {exc.strerror or exc}")


def atomic_write_text(path: Path, text: str) -> None:
    """atomic_write for a UTF-8 text file (the JSON configs: tinygen.json, replacements.json...)."""
    atomic_write(Path(path), lambda f: f.write(text.encode("utf-8")))


def _mode_of(path: Path) -> int:
    """The replaced file's permissions, or a new file's under the umask (0644 under 022)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return new_file_mode()


def new_file_mode() -> int:
    """The permissions open() gives a new file: 0666 under the umask (0644 under 022)."""
    return 0o666 & ~_umask()


def _umask() -> int:
    try:  # Linux says it without changing it (os.umask would, for a moment, in every thread)
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
