"""The trainer's warnings on stderr, said by one process of a run.

Data-parallel processes (torchrun, the hosts of a TPU pod) build the same rows from the
same data, so a warning about the data would print once per process; inside
`said_by(backend.is_writer)` only the process that writes the run's files says it.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

_quiet = False


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
