"""Dedupe: texts that repeat each other or the training data are dropped and reported."""

import numpy as np
import pytest

from tinygen import TextGenerator, TinygenError
from tinygen.dedupe import NgramIndex, find_duplicates, ngram_hashes


def test_ngram_hashes_are_positional_and_distinct():
    a = ngram_hashes([1, 2, 3, 4], 2)
    assert len(a) == 3 and len(set(a.tolist())) == 3
    assert ngram_hashes([2, 1], 2)[0] != ngram_hashes([1, 2], 2)[0]
    assert len(ngram_hashes([1, 2], 3)) == 0


def test_find_duplicates_between_texts_and_against_a_corpus():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 500, 40).tolist()
    near = base[:30] + rng.integers(0, 500, 10).tolist()  # 3/4 shared
    other = rng.integers(0, 500, 40).tolist()
    corpus_copy = rng.integers(0, 500, 40).tolist()
    index = NgramIndex.from_documents([rng.integers(0, 500, 200).tolist() + corpus_copy], 4)
    found = find_duplicates([base, near, other, corpus_copy, [7, 8]], 0.5, 4, index)
    assert [(d.index, d.of) for d in found] == [(1, 0), (3, None)]
    assert found[0].overlap == pytest.approx(27 / 37, abs=0.05) and "text 1 repeats text 0" in found[0].reason
    assert find_duplicates([[7, 8], [7, 8]], 0.5, 4)[0].of == 0  # short but equal
    with pytest.raises(TinygenError, match="threshold must be in"):
        find_duplicates([base], 1.5)


def test_generate_drops_and_reports_duplicates(optimum_gpt2_dir):
    gen = TextGenerator(optimum_gpt2_dir)
    plain = gen.generate("Once", n=6, do_sample=False, max_new_tokens=20)
    assert len(plain) == 6 and plain.dropped == []
    kept = gen.generate("Once", n=6, do_sample=False, max_new_tokens=20, dedupe=0.5)
    # Greedy texts are identical: one is kept, five are reported as repeats of it.
    assert len(kept) == 1 and [d.of for _, d in kept.dropped] == [0] * 5
    sampled = gen.generate("Once", n=6, seed=0, max_new_tokens=20, dedupe=0.9)
    assert len(sampled) + len(sampled.dropped) == 6


def test_dedupe_against_the_training_token_cache(optimum_gpt2_dir, tmp_path):
    from tinygen.token_cache import save_token_cache

    gen = TextGenerator(optimum_gpt2_dir)
    [copied] = gen.generate("Once", do_sample=False, max_new_tokens=24)
    tokens = np.array([5, 6, 7, *copied.token_ids, 9, 9], dtype=np.uint16)
    cache = save_token_cache(tmp_path / "train.tokens", tokens, np.array([len(tokens)]),
                             {"tokenizer_sha256": "x", "replacements_sha256": "y",
                              "vocab_size": gen.manifest.vocab_size, "eos_id": 0})
    texts = gen.generate("Once", n=3, seed=1, max_new_tokens=24, dedupe=0.5, dedupe_against=cache)
    assert texts.dropped == []  # sampled texts do not copy it
    greedy = gen.generate("Once", do_sample=False, max_new_tokens=24, dedupe=0.5, dedupe_against=cache)
    assert len(greedy) == 0 and greedy.dropped[0][1].of is None
    assert "repeats the training data" in greedy.dropped[0][1].reason
    # the cache encoded again (without the text) on the same path: the generator reads it anew
    save_token_cache(tmp_path / "train.tokens", np.array([5, 6, 7, 9, 9, 8], dtype=np.uint16),
                     np.array([6]), {"tokenizer_sha256": "x", "replacements_sha256": "y",
                                     "vocab_size": gen.manifest.vocab_size, "eos_id": 0})
    again = gen.generate("Once", do_sample=False, max_new_tokens=24, dedupe=0.5, dedupe_against=cache)
    assert len(again) == 1 and again.dropped == []


def test_a_cache_rewritten_to_the_same_size_and_time_is_read_anew(optimum_gpt2_dir, tmp_path):
    """Size and modification time alone would keep the old corpus's index (a copy that kept
    its times, `cp -p`, `rsync -t`)."""
    import os

    from tinygen.token_cache import save_token_cache

    gen = TextGenerator(optimum_gpt2_dir)
    [copied] = gen.generate("Once", do_sample=False, max_new_tokens=24)
    info = {"tokenizer_sha256": "x", "replacements_sha256": "y", "vocab_size": gen.manifest.vocab_size,
            "eos_id": 0}
    tokens = np.array([5, 6, 7, *copied.token_ids, 9, 9], dtype=np.uint16)
    cache = save_token_cache(tmp_path / "train.tokens", tokens, np.array([len(tokens)]), info,
                             compress=False)
    before = os.stat(cache)
    greedy = gen.generate("Once", do_sample=False, max_new_tokens=24, dedupe=0.5, dedupe_against=cache)
    assert len(greedy) == 0
    save_token_cache(cache, np.full_like(tokens, 9), np.array([len(tokens)]), info, compress=False)
    os.utime(cache, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(cache).st_size == before.st_size
    again = gen.generate("Once", do_sample=False, max_new_tokens=24, dedupe=0.5, dedupe_against=cache)
    assert len(again) == 1 and again.dropped == []


def test_a_cache_from_another_tokenizer_is_refused(optimum_gpt2_dir, tmp_path):
    """Its ids are another tokenizer's: no n-gram would match, and nothing would say why."""
    from tinygen.token_cache import save_token_cache

    gen = TextGenerator(optimum_gpt2_dir)
    other = gen.tokenizer.vocab_size + 80
    cache = save_token_cache(tmp_path / "train.tokens", np.arange(40, dtype=np.uint16), np.array([40]),
                             {"tokenizer_sha256": "x", "replacements_sha256": "y",
                              "vocab_size": other, "eos_id": 0})
    with pytest.raises(TinygenError, match=f"encoded with another tokenizer \\({other} tokens; this "
                                           f"model's has {gen.tokenizer.vocab_size}\\)"):
        gen.generate("Once", max_new_tokens=4, dedupe=0.5, dedupe_against=cache)


def test_a_folder_as_the_training_cache_is_named_a_folder(optimum_gpt2_dir, tmp_path):
    gen = TextGenerator(optimum_gpt2_dir)
    with pytest.raises(TinygenError, match=f"^{tmp_path} is a folder; give a token cache file"):
        gen.generate("Once", max_new_tokens=4, dedupe=0.5, dedupe_against=tmp_path)
