"""Writing OUT atomically: build beside it, then rename into place.

A failed or interrupted export leaves OUT as it was. The staging directory sits
in OUT's parent so the final move is a rename on one filesystem, not a copy.
"""

from __future__ import annotations

import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tinygen.errors import TinygenError
from tinygen.manifest import MANIFEST_NAME


def check_output_dir(out: Path, src: Path) -> None:
    """OUT may be new, empty, or an earlier tinygen model (which is replaced); nothing else."""
    if out.exists() and not out.is_dir():
        raise TinygenError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
        raise TinygenError(f"{out} is not empty and has no {MANIFEST_NAME}, so it is not a tinygen "
                           f"model to replace; choose a new output directory")
    resolved = out.resolve()
    if src.resolve() == resolved or resolved in src.resolve().parents:
        raise TinygenError(f"{out}: the output directory must not contain the source model")


@contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """Yield an empty directory; on normal exit it replaces `out`, on error it is removed."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = _sibling(out, "tmp")
        stage.mkdir()  # mkdir, not mkdtemp: OUT gets the user's umask, not 0700
    except OSError as exc:
        raise TinygenError(f"cannot create {out}: {exc.strerror or exc}") from exc
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    _replace(stage, out)


def _replace(stage: Path, out: Path) -> None:
    if not out.exists():
        os.rename(stage, out)
        return
    old = _sibling(out, "old")
    os.rename(out, old)
    try:
        os.rename(stage, out)
    except BaseException:
        os.rename(old, out)
        shutil.rmtree(stage, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _sibling(out: Path, kind: str) -> Path:
    return out.parent / f".{out.name}.{kind}-{secrets.token_hex(4)}"
