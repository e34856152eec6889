"""Fingerprints of files: a cheap one for files that may be gigabytes (its size and the bytes
at its two ends), and the whole file's sha256 where every byte must count.

Reading a corpus or a model whole to notice it changed would take seconds to minutes; a
retrained model or an edited corpus differs in its size or at an end (its last weights,
its appended or cut lines). Small files (up to head + tail) are read whole.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

MIB = 1 << 20


def ends_digest(path: Path, head: int = 4 * MIB, tail: int = MIB) -> str:
    """sha256 (hex, 16 digits) of the size, the first `head` bytes and the last `tail` bytes."""
    size = path.stat().st_size
    digest = hashlib.sha256(f"{size}\0".encode())
    with open(path, "rb") as f:
        if size <= head + tail:
            digest.update(f.read())
        else:
            digest.update(f.read(head))
            f.seek(size - tail)
            digest.update(f.read())
    return digest.hexdigest()[:16]


def file_sha256(path: Path) -> str:
    """sha256 (hex) of the whole file, read a MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()
