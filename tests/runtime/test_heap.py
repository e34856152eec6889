"""The heap memory a session load freed goes back to the system (tinygen/heap.py)."""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import pytest

from tinygen import TextGenerator, heap


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None)
    return libc if hasattr(libc, "malloc_trim") else None


needs_glibc = pytest.mark.skipif(_glibc() is None, reason="no glibc malloc_trim here")


def _anonymous_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no RssAnon in /proc/self/status")


@needs_glibc
def test_freed_blocks_inside_the_heap_are_given_back():
    libc = _glibc()
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    block = 64 << 10  # below glibc's mmap threshold: these come from the heap, as weights do
    blocks = [libc.malloc(block) for _ in range(1600)]  # 100 MiB
    for address in blocks:
        ctypes.memset(address, 1, block)  # resident
    # One block in 160 stays: the freed spans lie between live blocks, as the original
    # weights lie between the repacked ones, so free() cannot return them as the heap's top.
    kept = blocks[159::160]
    for address in blocks:
        if address not in kept:
            libc.free(address)
    held = _anonymous_mb()
    try:
        assert heap.release_free_heap()
        assert _anonymous_mb() < held - 80
    finally:
        for address in kept:
            libc.free(address)


def test_loading_a_model_gives_back_what_the_load_freed(exported_llama_dir, monkeypatch):
    calls = []
    monkeypatch.setattr(heap, "release_free_heap", lambda: calls.append(1))
    gen = TextGenerator(exported_llama_dir, device="cpu")
    assert calls == [1]
    assert gen.generate([5, 6], do_sample=False, max_new_tokens=3)[0].token_ids
