"""Writing OUT atomically: build beside it, then rename into place.

A failed or interrupted export leaves OUT as it was. The staging directory sits
in OUT's parent so the final move is a rename on one filesystem, not a copy.

An export that is killed leaves its staging directory (`.OUT.tmp-xxxxxxxx`, as big
as the model) behind; the next export to OUT deletes it. Each export holds a flock
on its own staging directory until it is renamed into place, and only directories
nobody holds are deleted, so a second export to OUT running at the same time keeps
its folder. Where a directory cannot be flocked (Windows; NFS may refuse it) nothing
is swept: a folder that may be in use is never deleted.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tinygen.errors import TinygenError
from tinygen.manifest import MANIFEST_NAME


# Files an export may write besides those its tinygen.json names (optimum's and transformers'
# side files), so an earlier export holding only these is replaced whole.
EXPORT_SIDE_FILES = {"config.json", "generation_config.json", "special_tokens_map.json",
                     "tokenizer_config.json", "vocab.json", "merges.txt", "added_tokens.json",
                     "MODEL_CARD.md", "README.md"}


def check_output_dir(out: Path, src: Path) -> None:
    """OUT may be new, empty, or an earlier tinygen model (which is replaced); nothing else,
    and no earlier model with files of the user's beside it (the replacement would lose them)."""
    if out.exists() and not out.is_dir():
        raise TinygenError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
        raise TinygenError(f"{out} is not empty and has no {MANIFEST_NAME}, so it is not a tinygen "
                           f"model to replace; choose a new output directory")
    resolved = out.resolve()
    if src.resolve() == resolved or resolved in src.resolve().parents:
        raise TinygenError(f"{out}: the output directory must not contain the source model")
    here = Path.cwd().resolve()
    if resolved == here or resolved in here.parents:  # found out only after the whole export
        raise TinygenError(f"{out} is the current folder or holds it, and an export replaces its "
                           f"output folder whole; give a folder inside it, e.g. {out / 'model'}")
    if out.is_dir() and (out / MANIFEST_NAME).is_file():
        others = sorted(p.name for p in out.iterdir()
                        if p.name not in _export_files(out) and not p.name.startswith("."))
        if others:
            raise TinygenError(f"{out} holds {others[0]}{' and more' if len(others) > 1 else ''} beside "
                               f"the model it would replace, and no export writes that; move it "
                               f"away or choose another output directory")


@contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """Yield an empty directory; on normal exit it replaces `out` (a failed rename is a
    TinygenError), on error it is removed. Sweeps `out`'s stale staging directories first.

    A symlinked `out` is followed: the model replaces the directory it points to, and the
    link stays (renaming the link itself would leave it behind as `.OUT.old-*`)."""
    if out.is_symlink():
        out = out.resolve()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _sweep(out)
        stage = _sibling(out, "tmp")
        stage.mkdir()  # mkdir, not mkdtemp: OUT gets the user's umask, not 0700
    except OSError as exc:
        raise TinygenError(f"cannot create {out}: {exc.strerror or exc}") from exc
    lock = _lock(stage)
    try:
        yield stage
        _readable_as_the_folder(stage)
        _replace(stage, out)
    except BaseException as exc:
        shutil.rmtree(stage, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise TinygenError(f"cannot write {out}: {exc.strerror}; free some space and export "
                               f"again") from None
        raise
    finally:
        if lock is not None:
            os.close(lock)


def _readable_as_the_folder(stage: Path) -> None:
    """Give every file the read and write bits the umask gave the folder: some writers create
    files for their owner only (onnx's external data is 0600 whatever the umask), and a model
    folder served or packaged for other users must be readable as a whole."""
    allowed = stage.stat().st_mode & 0o666
    for path in stage.rglob("*"):
        if path.is_file() and not path.is_symlink():
            mode = path.stat().st_mode & 0o777
            if mode | allowed != mode:
                path.chmod(mode | allowed)


def _replace(stage: Path, out: Path) -> None:
    try:
        if not out.exists():
            os.rename(stage, out)
            return
        old = _sibling(out, "old")
        os.rename(out, old)
    except OSError as exc:
        raise TinygenError(f"cannot move the finished export into {out}: "
                           f"{exc.strerror or exc}") from exc
    try:
        os.rename(stage, out)
    except OSError as exc:
        try:
            os.rename(old, out)
        except OSError:  # say where the earlier export is, or it looks lost
            raise TinygenError(f"cannot move the finished export into {out} "
                               f"({exc.strerror or exc}), nor put the earlier export back: "
                               f"it is in {old}") from exc
        raise TinygenError(f"cannot move the finished export into {out}: "
                           f"{exc.strerror or exc}") from exc
    shutil.rmtree(old, ignore_errors=True)


def _sibling(out: Path, kind: str) -> Path:
    return out.parent / f".{out.name}.{kind}-{secrets.token_hex(4)}"


def _sweep(out: Path) -> None:
    """Delete the staging directories of earlier exports to `out` that no process holds.

    Only `_sibling(out, "tmp")` names: never another output's, never `.OUT.old-*` (a kill
    between _replace's two renames leaves the earlier export there and nowhere else)."""
    pattern = re.compile(re.escape(f".{out.name}.tmp-") + "[0-9a-f]{8}")
    try:
        siblings = list(out.parent.iterdir())
    except OSError:  # best effort: an unlistable parent must not stop the export
        return
    for path in siblings:
        if not pattern.fullmatch(path.name) or path.is_symlink() or not path.is_dir():
            continue
        lock = _lock(path)
        if lock is None:  # a running export's, or no locks here: keep it
            continue
        try:
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(lock)


def _lock(directory: Path) -> int | None:
    """An fd holding an exclusive flock on `directory` (released when it is closed or the
    process dies), or None: held by another process, or no flock on this platform/filesystem."""
    try:
        import fcntl
    except ImportError:  # Windows
        return None
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _export_files(out: Path) -> set[str]:
    """What replacing the model in `out` may remove: its manifest's files and the side files."""
    try:
        manifest = json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = {}
    named = {manifest.get(key) for key in ("model_file", "tokenizer_file", "replacements_file",
                                           "fields_file")} if isinstance(manifest, dict) else set()
    model = manifest.get("model_file") if isinstance(manifest, dict) else None
    if isinstance(model, str):
        named |= {model + ".data", model + "_data"}  # external weights
    return {name for name in named if isinstance(name, str)} | EXPORT_SIDE_FILES | {MANIFEST_NAME}
