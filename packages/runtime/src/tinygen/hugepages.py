"""Huge pages for the memory a model session allocates (Linux; elsewhere nothing happens).

A batch-1 decode step reads every weight once, so a step of SmolLM2-135M at fp32
walks ~130,000 pages of 4 KiB. onnxruntime takes its weight buffers from malloc,
which on a kernel whose transparent huge pages are "madvise" (the usual default)
stays in 4 KiB pages, and where those pages lie in physical memory then moves a
step's time: the same worker ran 5-10% slower when it was the first of several
processes started (docs/benchmarks.md). So once a session is loaded, the
anonymous memory that appeared during the load is advised MADV_HUGEPAGE and
collapsed into 2 MiB pages at once (MADV_COLLAPSE, Linux 6.1+; older kernels leave
it to khugepaged). Only whole 2 MiB spans inside the new memory are touched, and
both calls keep the contents. TINYGEN_HUGEPAGES=0 turns it off.
"""

from __future__ import annotations

import ctypes
import os
import sys

MADV_HUGEPAGE, MADV_COLLAPSE = 14, 25
HUGE_PAGE = 2 << 20

Regions = dict  # start address -> end address of each private anonymous read-write mapping


def enabled() -> bool:
    return sys.platform.startswith("linux") and os.environ.get("TINYGEN_HUGEPAGES", "1") != "0"


def anonymous_regions() -> Regions:
    """This process's anonymous read-write mappings (the heap included), from /proc/self/maps."""
    regions = {}
    try:
        # Bytes: a mapped file's path may be any (a model under /home/José), no ASCII or UTF-8.
        with open("/proc/self/maps", "rb") as maps:
            for line in maps:
                fields = line.split()
                if fields[1].startswith(b"rw") and (len(fields) == 5 or fields[5] == b"[heap]"):
                    start, end = (int(x, 16) for x in fields[0].split(b"-"))
                    regions[start] = end
    except OSError:
        return {}
    return regions


def advise_new_memory(before: Regions, collapse: bool = True) -> int:
    """Advise huge pages over the memory mapped (or grown) since `before`; returns the bytes
    advised. Failures (no THP, an old kernel, a busy page) only leave pages as they were."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    advised = 0
    for start, end in anonymous_regions().items():
        start = max(start, before.get(start, start))  # a region that grew: only its new part
        lo, hi = -(-start // HUGE_PAGE) * HUGE_PAGE, end // HUGE_PAGE * HUGE_PAGE
        if hi - lo < HUGE_PAGE:
            continue
        if madvise(lo, hi - lo, MADV_HUGEPAGE) == 0:
            advised += hi - lo
            if collapse:
                madvise(lo, hi - lo, MADV_COLLAPSE)
    return advised
