"""Huge pages over the memory a session load allocates (tinygen/hugepages.py)."""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
from pathlib import Path

import pytest

from tinygen import TextGenerator, hugepages

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
needs_thp = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not THP.exists() or "[never]" in THP.read_text(),
    reason="transparent huge pages are off here")


def _vm_flags(address: int) -> set[str]:
    """The VmFlags of the mapping that holds `address` (/proc/self/smaps)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            start, end = (int(x, 16) for x in head.split("-"))
            inside = start <= address < end
        elif inside and head == "VmFlags:":
            return set(line.split()[1:])
    raise AssertionError(f"no mapping holds {address:#x}")


@needs_thp
def test_memory_mapped_after_the_snapshot_is_advised_and_keeps_its_contents():
    before = hugepages.anonymous_regions()
    memory = mmap.mmap(-1, 8 * hugepages.HUGE_PAGE, flags=mmap.MAP_PRIVATE)
    memory.write(b"weights" * 1000)
    address = ctypes.addressof(ctypes.c_char.from_buffer(memory))
    assert "hg" not in _vm_flags(address + 4 * hugepages.HUGE_PAGE)
    advised = hugepages.advise_new_memory(before)
    # at least the whole 2 MiB spans of the new 16 MiB mapping
    assert advised >= 6 * hugepages.HUGE_PAGE
    assert "hg" in _vm_flags(address + 4 * hugepages.HUGE_PAGE)
    memory.seek(0)
    assert memory.read(7000) == b"weights" * 1000


@needs_thp
def test_memory_that_was_there_before_is_left_alone():
    memory = mmap.mmap(-1, 8 * hugepages.HUGE_PAGE, flags=mmap.MAP_PRIVATE)
    memory.write(b"x")
    address = ctypes.addressof(ctypes.c_char.from_buffer(memory))
    hugepages.advise_new_memory(hugepages.anonymous_regions())
    assert "hg" not in _vm_flags(address + 4 * hugepages.HUGE_PAGE)


def test_loading_a_model_on_the_cpu_advises_the_new_memory(exported_llama_dir, monkeypatch):
    calls = []
    monkeypatch.setattr(hugepages, "advise_new_memory", lambda before: calls.append(before))
    gen = TextGenerator(exported_llama_dir, device="cpu")
    if sys.platform.startswith("linux"):
        assert len(calls) == 1 and isinstance(calls[0], dict) and calls[0]
    assert gen.generate([5, 6], do_sample=False, max_new_tokens=3)[0].token_ids


def test_tinygen_hugepages_0_turns_it_off(exported_llama_dir, monkeypatch):
    calls = []
    monkeypatch.setattr(hugepages, "advise_new_memory", lambda before: calls.append(before))
    monkeypatch.setenv("TINYGEN_HUGEPAGES", "0")
    assert not hugepages.enabled()
    TextGenerator(exported_llama_dir, device="cpu")
    assert calls == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/maps is Linux's")
def test_a_file_mapped_from_a_path_of_any_characters_is_read_past(tmp_path):
    """onnxruntime maps model.onnx.data: under /home/José (or a non-UTF-8 name) reading
    /proc/self/maps as ASCII failed, and with it every export's load on the CPU."""
    folder = tmp_path / "José"
    folder.mkdir()
    odd = folder / os.fsdecode(b"weights-\xff.data")  # not UTF-8 either
    odd.write_bytes(b"\0" * mmap.PAGESIZE)
    with open(odd, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ):
        assert hugepages.anonymous_regions()  # the heap, at least: the file's line was read past


def test_a_model_under_a_non_ascii_path_loads(exported_llama_dir, tmp_path):
    import shutil

    model = tmp_path / "José" / "modèle"
    shutil.copytree(exported_llama_dir, model)
    assert len(TextGenerator(model).generate("Hi", seed=1, max_new_tokens=3)[0].token_ids) == 3
