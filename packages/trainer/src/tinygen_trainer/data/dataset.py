"""TokenDataset (a corpus as one token stream) and the samplers that cut training rows from it.

Two ways to draw rows of `block_size` tokens:

- WindowSampler: windows at random offsets anywhere in the stream, so documents
  longer than a block are seen from every starting point over the epochs, not
  just at multiples of block_size. An epoch is len(stream) // block_size windows.
- RecordSampler (line-by-line): each document is one row, shuffled per epoch,
  truncated to block_size and padded; padding gets label -100 and no attention.
  A few long records are cut with a warning; when most are, the corpus is not
  short records (a cache encoded without --line-by-line holds whole files), so
  it is an error rather than training on first blocks only.

Both are deterministic functions of (seed, epoch, index), and their whole state
is two integers in a JSON-able dict, so a resumed run draws exactly the rows
the interrupted one would have drawn.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from tinygen.errors import TinygenError

from ..notices import warn
from .encoder import Encoder
from .sources import corpus_files, read_documents
from tinygen.token_cache import (changed_sources, is_token_cache, load_token_cache,
                                 save_token_cache, source_path)

IGNORE_INDEX = -100  # labels the loss skips (torch's cross_entropy default)


@dataclass(frozen=True)
class TokenDataset:
    """tokens: (N,) uint16/uint32, each document followed by EOS.
    doc_ends: (D,) int64, the exclusive end of each document (its EOS included)."""

    tokens: np.ndarray
    doc_ends: np.ndarray
    eos_id: int
    name: str  # where it came from, for messages
    cached: bool = False  # loaded from a token cache, whose documents encode decided

    @classmethod
    def from_documents(cls, documents: Sequence[str], encoder: Encoder, name: str = "corpus",
                       progress: bool = True) -> "TokenDataset":
        if not documents:
            raise TinygenError(f"{name}: corpus is empty (no non-blank text)")
        tokens, doc_ends = encoder.encode(documents, progress=progress,
                                          desc=f"encoding {Path(name).name}")
        return cls(tokens, doc_ends, encoder.eos_id, name)

    @classmethod
    def from_path(cls, path: str | Path, encoder: Encoder, field: str | None = None,
                  errors: str = "strict", line_by_line: bool = False,
                  progress: bool = True) -> "TokenDataset":
        """A token cache (checked against `encoder`), or any corpus `read_documents` reads."""
        if is_token_cache(path):
            return cls.load(path, encoder)
        documents = read_documents(path, field=field, errors=errors, line_by_line=line_by_line)
        return cls.from_documents(documents, encoder, name=str(path), progress=progress)

    @classmethod
    def load(cls, path: str | Path, encoder: Encoder) -> "TokenDataset":
        """A token cache, checked against `encoder`, warning when its text has changed since.

        A warning, not an error: the cache is still sound (the text as it was), a resumed run
        must go on drawing the rows it drew, and training on a snapshot while editing the text
        is fair; what must not happen is training on the old text unawares."""
        cache = load_token_cache(path, expect=encoder.describe(),
                                 token_name=encoder.tokenizer.id_to_token)
        if cache.tokens.size == 0:
            raise TinygenError(f"{path}: corpus is empty")
        changed, added = changed_sources(path, cache.header), added_sources(path, cache.header)
        if changed or added:
            first = (f"{_here(changed[0])} before it changed" if changed else
                     f"{_here(added[0][0])} before {_here(added[0][1])} was added to it")
            others = len(changed) + len(added) - 1
            more = f" (and {others} more of its files)" if others else ""
            warn(f"{path} was encoded from {first}{more}; this run uses the old text (for the "
                 f"new, encode again: {encode_again(path, cache.header)})")
        return cls(cache.tokens, cache.doc_ends, encoder.eos_id, str(path), cached=True)

    def save(self, path: str | Path, encoder: Encoder, compress: bool = True,
             sources: Sequence[dict[str, Any]] = (),
             encode: dict[str, Any] | None = None) -> Path:
        """`sources` and `encode` as save_token_cache takes them: what it was encoded from."""
        return save_token_cache(path, self.tokens, self.doc_ends, encoder.describe(),
                                compress=compress, sources=sources, encode=encode)

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.size)

    @property
    def num_documents(self) -> int:
        return int(self.doc_ends.size)

    def document(self, i: int) -> np.ndarray:
        start = int(self.doc_ends[i - 1]) if i else 0
        return self.tokens[start:int(self.doc_ends[i])]


def added_sources(path: str | Path, header: dict[str, Any]) -> list[tuple[Path, Path]]:
    """(folder, file) for each file now in a corpus folder the cache at `path` was encoded
    from that it did not read: new text, which its sources (the files read) cannot show."""
    read = {source_path(path, s["path"]).resolve() for s in header.get("sources") or ()}
    added = []
    for recorded in (header.get("encode") or {}).get("corpus", ()):
        folder = source_path(path, recorded)
        if folder.is_dir():
            try:
                added += [(folder, f) for f in corpus_files(folder) if f.resolve() not in read]
            except (TinygenError, OSError):  # emptied or unreadable now: nothing to compare
                continue
    return added


def encode_again(path: str | Path, header: dict[str, Any]) -> str:
    """The `tinygen-train encode` command that makes the cache at `path` again, from what its
    header recorded (paths as seen from here)."""
    def shown(recorded: str) -> str:
        return _here(source_path(path, recorded))

    encode = header.get("encode")
    if encode is None:  # saved by a library call: its files, its tokenizer unknown
        args = [*(shown(s["path"]) for s in header.get("sources", ())), "--tokenizer", "TOKENIZER"]
    else:
        args = [*map(shown, encode["corpus"]), "--tokenizer", shown(encode["tokenizer"])]
        if encode.get("replacements"):
            args += ["--replacements", shown(encode["replacements"])]
        args += encode.get("options", [])
    return shlex.join(["tinygen-train", "encode", *args, "-o", str(path)])


def _here(file: Path) -> str:
    """`file` relative to the working folder when inside it, for a shorter message."""
    try:
        return str(file.relative_to(Path.cwd()))
    except ValueError:
        return str(file)


@dataclass(frozen=True)
class Rows:
    """n training rows: ids/labels (n, T) int64, mask (n, T) bool, weights (n, T) float32."""

    input_ids: np.ndarray
    labels: np.ndarray
    attention_mask: np.ndarray
    loss_weights: np.ndarray

    @classmethod
    def concat(cls, parts: Sequence["Rows"]) -> "Rows":
        return cls(*(np.concatenate([getattr(p, f) for p in parts])
                     for f in ("input_ids", "labels", "attention_mask", "loss_weights")))

    def take(self, order: np.ndarray) -> "Rows":
        return Rows(self.input_ids[order], self.labels[order], self.attention_mask[order],
                    self.loss_weights[order])


class Sampler(Protocol):
    block_size: int

    def next_rows(self, n: int) -> Rows: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class _EpochSampler:
    """Shared bookkeeping: an epoch is a fixed-length random plan, consumed in order."""

    def __init__(self, seed: int, epoch_size: int):
        self.seed = seed
        self.epoch_size = epoch_size
        self.epoch = 0
        self.index = 0
        self._plan_epoch = -1
        self._plan = np.zeros(0, dtype=np.int64)

    def _make_plan(self, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def _draw(self, n: int) -> np.ndarray:
        """The next n plan entries, crossing epochs as needed."""
        out = []
        while n:
            if self._plan_epoch != self.epoch:
                self._plan = self._make_plan(np.random.default_rng([self.seed, self.epoch]))
                self._plan_epoch = self.epoch
            take = min(n, self.epoch_size - self.index)
            out.append(self._plan[self.index:self.index + take])
            self.index += take
            n -= take
            if self.index == self.epoch_size:
                self.epoch, self.index = self.epoch + 1, 0
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


class WindowSampler(_EpochSampler):
    """Random windows of block_size tokens over the whole stream.

    recency > 1 weights each token's loss by its position in the corpus: the last
    token counts `recency` times the first, rising linearly, normalised so the
    corpus-wide mean weight stays `loss_weight`.
    """

    def __init__(self, dataset: TokenDataset, block_size: int, seed: int,
                 loss_weight: float = 1.0, recency: float = 1.0):
        if dataset.num_tokens < block_size:
            raise TinygenError(
                f"{dataset.name}: {dataset.num_tokens} tokens, fewer than block_size {block_size}; "
                f"use a smaller --block-size, more text, or --line-by-line"
            )
        super().__init__(seed, max(1, dataset.num_tokens // block_size))
        self.dataset = dataset
        self.block_size = block_size
        self.loss_weight = loss_weight
        self.recency = recency

    def _make_plan(self, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, self.dataset.num_tokens - self.block_size + 1, size=self.epoch_size)

    def next_rows(self, n: int) -> Rows:
        offsets = self._draw(n)
        positions = offsets[:, None] + np.arange(self.block_size)[None, :]  # (n, T)
        ids = self.dataset.tokens[positions].astype(np.int64)
        return Rows(ids, ids.copy(), np.ones(ids.shape, dtype=bool), self._weights(positions))

    def _weights(self, positions: np.ndarray) -> np.ndarray:
        weights = np.full(positions.shape, self.loss_weight, dtype=np.float32)
        if self.recency != 1.0:
            last = max(self.dataset.num_tokens - 1, 1)
            # positions / last first: (recency - 1) * position overflowed past about 1e300.
            ramp = 1.0 + (self.recency - 1.0) * (positions / last)
            weights *= (ramp / ((1.0 + self.recency) / 2.0)).astype(np.float32)
        return weights


def record_spans(dataset: TokenDataset, block_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Line by line, each document's row: where it starts in the token stream, how many of its
    tokens a row of block_size holds (its first ones), and how many documents are cut so."""
    starts = np.concatenate([[0], dataset.doc_ends[:-1]])
    whole = dataset.doc_ends - starts
    return starts, np.minimum(whole, block_size), int(np.sum(whole > block_size))


def longer_records(dataset: TokenDataset, cut: int, block_size: int) -> str:
    return (f"{dataset.name}: {cut:,} of {dataset.num_documents:,} records are longer than "
            f"block_size {block_size}")


class RecordSampler(_EpochSampler):
    """Line-by-line: one document per row, shuffled each epoch, padded to block_size."""

    def __init__(self, dataset: TokenDataset, block_size: int, seed: int, pad_id: int,
                 loss_weight: float = 1.0):
        super().__init__(seed, dataset.num_documents)
        if dataset.num_documents == 0:
            raise TinygenError(f"{dataset.name}: corpus is empty")
        self.dataset = dataset
        self.block_size = block_size
        self.pad_id = pad_id
        self.loss_weight = loss_weight
        self._starts, self._lengths, self.truncated = record_spans(dataset, block_size)
        self._check_truncation()

    def _check_truncation(self) -> None:
        n, cut, size = self.dataset.num_documents, self.truncated, self.block_size
        if not cut:
            return
        what = longer_records(self.dataset, cut, size)
        if 2 * cut > n:
            longest = int(np.max(self.dataset.doc_ends - self._starts))
            # A cache's documents are what encode made of the text: a file whole, unless
            # encoded --line-by-line. Text read here was already split by --line-by-line.
            encode = (", or encode with 'tinygen-train encode --line-by-line' if each line of "
                      "a text file is a record") if self.dataset.cached else ""
            raise TinygenError(
                f"{what} (the longest {longest:,} tokens), so --line-by-line would train on "
                f"their first {size} tokens only; raise --block-size if the model's window "
                f"allows{',' if encode else ' or'} drop --line-by-line{encode}"
            )
        warn(f"{what}; --line-by-line trains on their first {size} tokens only")

    def _make_plan(self, rng: np.random.Generator) -> np.ndarray:
        return rng.permutation(self.epoch_size)

    def next_rows(self, n: int) -> Rows:
        docs = self._draw(n)
        ids = np.full((n, self.block_size), self.pad_id, dtype=np.int64)
        mask = np.zeros((n, self.block_size), dtype=bool)
        for row, doc in enumerate(docs):
            length = int(self._lengths[doc])
            start = int(self._starts[doc])
            ids[row, :length] = self.dataset.tokens[start:start + length]
            mask[row, :length] = True
        labels = np.where(mask, ids, IGNORE_INDEX)
        return Rows(ids, labels, mask, np.where(mask, self.loss_weight, 0.0).astype(np.float32))
