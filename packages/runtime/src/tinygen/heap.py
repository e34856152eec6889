"""Give back to the system the heap memory a session load freed (Linux with glibc).

onnxruntime reads a model's weights, repacks each MatMul weight into the layout its
kernels read, and frees the original: for SmolLM2-135M at fp32 a few hundred MB,
freed in the middle of the heap. glibc keeps such pages (it returns only the top of
the heap by itself), so the process held 100-200 MB more for its whole life than
the model needs, and how much depended on the order allocations happened to take
(docs/benchmarks.md, "Memory a load leaves behind"). malloc_trim(0) returns every
whole free page; it takes a few milliseconds, once per load.
"""

from __future__ import annotations

import ctypes
import sys


def release_free_heap() -> bool:
    """malloc_trim(0): True where the C library has it and gave memory back."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        trim = ctypes.CDLL(None).malloc_trim  # glibc; absent in musl
    except (OSError, AttributeError):
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim(0) == 1
