"""Dedupe: find generated texts that repeat each other or copy the training data.

Overlap is measured on token n-grams: the share of a text's n-grams found in an
earlier kept text, or in the training corpus (a token cache from
`tinygen-train encode`). A text at or above the threshold is a duplicate.
N-grams are hashed to uint64 (polynomial rolling hash, wrapping), so a corpus
index is one sorted array: 8 bytes per training token, looked up by binary search.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import TinygenError

_BASE = np.uint64(1_000_003)


def ngram_hashes(ids: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    """Hashes of every n-gram of `ids`, shape (len(ids) - n + 1,), uint64."""
    ids = np.asarray(ids, dtype=np.uint64)
    if len(ids) < n:
        return np.empty(0, dtype=np.uint64)
    windows = np.lib.stride_tricks.sliding_window_view(ids + np.uint64(1), n)
    powers = _BASE ** np.arange(n - 1, -1, -1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return (windows * powers).sum(axis=1, dtype=np.uint64)


class NgramIndex:
    """The set of n-gram hashes of a corpus."""

    def __init__(self, hashes: np.ndarray, n: int):
        self.hashes, self.n = np.unique(hashes), n

    @classmethod
    def from_documents(cls, documents: Sequence[Sequence[int]], n: int) -> "NgramIndex":
        parts = [ngram_hashes(d, n) for d in documents]
        return cls(np.concatenate(parts) if parts else np.empty(0, np.uint64), n)

    @classmethod
    def from_token_cache(cls, path: str | os.PathLike, n: int, vocab_size: int | None = None
                         ) -> "NgramIndex":
        """`vocab_size`: the model tokenizer's (added tokens included); a cache encoded with a
        tokenizer of another size holds other ids, whose n-grams would match nothing."""
        try:
            from .token_cache import load_token_cache
        except ImportError:
            raise TinygenError("reading a token cache needs msgpack: pip install 'tinygen[dedupe]'") from None

        cache = load_token_cache(path)
        theirs = cache.header.get("vocab_size")
        if vocab_size is not None and isinstance(theirs, int) and theirs != vocab_size:
            raise TinygenError(f"{path} was encoded with another tokenizer ({theirs} tokens; this "
                               f"model's has {vocab_size}); encode the training data with the "
                               f"model's tokenizer.json")
        starts = np.concatenate([[0], cache.doc_ends[:-1]]).astype(np.int64)
        return cls.from_documents([cache.tokens[s:e] for s, e in zip(starts, cache.doc_ends)], n)

    def overlap(self, hashes: np.ndarray) -> float:
        """Share of the given n-gram hashes present in the index."""
        if len(hashes) == 0 or len(self.hashes) == 0:
            return 0.0
        where = np.minimum(np.searchsorted(self.hashes, hashes), len(self.hashes) - 1)
        return float((self.hashes[where] == hashes).mean())


@dataclass(frozen=True)
class Duplicate:
    index: int  # position of the dropped text in the generated list
    of: int | None  # the earlier text it repeats, or None when it copies the training data
    overlap: float  # share of its n-grams found there

    @property
    def reason(self) -> str:
        where = "the training data" if self.of is None else f"text {self.of}"
        return f"text {self.index} repeats {where} ({self.overlap:.0%} of its n-grams)"


def find_duplicates(token_ids: Sequence[Sequence[int]], threshold: float = 0.5, n: int = 8,
                    reference: NgramIndex | None = None) -> list[Duplicate]:
    """Which texts to drop: each compared with the kept texts before it, then the reference."""
    if not 0 < threshold <= 1:
        raise TinygenError(f"dedupe threshold must be in (0, 1], got {threshold!r}")
    if not isinstance(n, int) or n < 1:
        raise TinygenError(f"dedupe n-gram size must be an integer >= 1, got {n!r}")
    if reference is not None and reference.n != n:
        raise TinygenError(f"the reference index uses {reference.n}-grams, not {n}-grams")
    kept: list[tuple[int, np.ndarray, tuple[int, ...]]] = []
    duplicates = []
    for i, ids in enumerate(token_ids):
        ids = tuple(ids)
        hashes = np.unique(ngram_hashes(ids, n))
        found = None
        for j, other, other_ids in kept:
            # Texts too short for an n-gram are duplicates only when equal.
            share = 1.0 if ids == other_ids else (
                float(np.isin(hashes, other, assume_unique=True).mean()) if len(hashes) else 0.0)
            if share >= threshold:
                found = Duplicate(i, j, share)
                break
        if found is None and reference is not None:
            share = reference.overlap(hashes)
            if share >= threshold:
                found = Duplicate(i, None, share)
        if found:
            duplicates.append(found)
        else:
            kept.append((i, hashes, ids))
    return duplicates
