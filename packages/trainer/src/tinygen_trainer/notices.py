"""The trainer's warnings on stderr, said by one process of a run.

Data-parallel processes (torchrun, the hosts of a TPU pod) build the same rows from the
same data, so a warning about the data would print once per process; inside
`said_by(backend.is_writer)` only the process that writes the run's files says it. A setup
error every process has alike is said by one process a machine (said_by_another).
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator

_quiet = False
_joined = False  # whether this torchrun process has begun to work with the others
_alike = False  # whether every process failed its setup with this one's error (Backend.agree)


def warn(text: str) -> None:
    if not _quiet:
        print(f"tinygen-train: warning: {text}", file=sys.stderr)


@contextmanager
def said_by(this_process: bool) -> Iterator[None]:
    """Warnings inside print only if `this_process` (nested: only if every level allows)."""
    global _quiet
    before = _quiet
    _quiet = before or not this_process
    try:
        yield
    finally:
        _quiet = before


def joining_the_others() -> None:
    """A torchrun process begins to work with the others (its place among them, their
    meeting): from here its errors may be its own (a GPU it lacks, another's failure)."""
    global _joined
    _joined = True


def failed_alike() -> None:
    """Every process failed its setup with this process's error (they compared them)."""
    global _alike
    _alike = True


def said_by_another() -> bool:
    """Whether this process's error is said by another: under torchrun, before joining the
    others, every process on a machine has checked the same arguments and files alike (and
    after, the processes may find they all failed alike), so the one with LOCAL_RANK 0 says
    it, once a machine rather than once a process."""
    try:
        if (_joined and not _alike) or int(os.environ.get("WORLD_SIZE") or 1) <= 1:
            return False
        return int(os.environ.get("LOCAL_RANK") or os.environ.get("RANK") or 0) != 0
    except ValueError:  # train's own check names a bad variable
        return False
