"""Held-out text: documents kept out of training, and the fixed rows a run evaluates on.

hold_out() takes a share of a corpus's documents away from it (--eval-fraction).
The unit is the document because a window of a held-out text must never be
trained on: a document is a text file (whole), a CSV row, a JSONL record, or a
line with --line-by-line. Which documents is a seeded draw fixed by the corpus's
place among the run's corpora and its number of documents, not by --seed, so
runs that differ only in seed are scored on the same text.

EvalRows cuts a held-out TokenDataset into rows the way training does, but
fixed rather than drawn: consecutive windows of block_size tokens (each token
predicted once; the last window ends at the stream's end and predicts only what
the one before did not), or, line by line, one padded row per document (its first
block_size tokens, as training takes them; a warning says how many are longer).
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np

from tinygen.errors import TinygenError

from ..notices import warn
from .blend import derive_seed
from .dataset import IGNORE_INDEX, Rows, TokenDataset, longer_records, record_spans

HOLDOUT_SEED = 0x686F6C64  # "hold": the draw of held-out documents, whatever the run's --seed


def hold_out(dataset: TokenDataset, fraction: float,
             index: int) -> tuple[TokenDataset, TokenDataset]:
    """(the documents left to train on, the held-out ones): round(fraction x documents), at
    least one, drawn with a seed of the corpus's `index` among the run's corpora."""
    n = dataset.num_documents
    held = max(1, round(fraction * n))
    if held >= n:
        one = " (a text file is one document: split it into files, or use --line-by-line " \
              "for one document per line)" if n == 1 else ""
        raise TinygenError(
            f"{dataset.name}: --eval-fraction {fraction} of its {n} document{'s' * (n != 1)} "
            f"holds out {held}, leaving none to train on{one}; lower it, or give held-out "
            f"text with --eval-data")
    rng = np.random.default_rng(derive_seed(HOLDOUT_SEED, index))
    chosen = np.zeros(n, dtype=bool)
    chosen[rng.choice(n, size=held, replace=False)] = True
    return (_documents(dataset, ~chosen, f"{dataset.name} (less {held} held-out documents)"),
            _documents(dataset, chosen, f"{dataset.name}'s held-out documents"))


def join(parts: list[TokenDataset], name: str) -> TokenDataset:
    """Several corpora's held-out documents as one stream."""
    if len(parts) == 1:
        return TokenDataset(parts[0].tokens, parts[0].doc_ends, parts[0].eos_id, name)
    offsets = np.cumsum([0] + [p.num_tokens for p in parts[:-1]])
    return TokenDataset(np.concatenate([p.tokens for p in parts]),
                        np.concatenate([p.doc_ends + o for p, o in zip(parts, offsets)]),
                        parts[0].eos_id, name)


def _documents(dataset: TokenDataset, keep: np.ndarray, name: str) -> TokenDataset:
    """The documents where `keep` (D,) is True, in corpus order."""
    lengths = np.diff(dataset.doc_ends, prepend=0)
    tokens = dataset.tokens[np.repeat(keep, lengths)]
    return TokenDataset(tokens, np.cumsum(lengths[keep]), dataset.eos_id, name)


class EvalRows:
    """The rows of a held-out dataset, cut once and the same every evaluation (see above)."""

    def __init__(self, dataset: TokenDataset, block_size: int, line_by_line: bool, pad_id: int):
        self.dataset = dataset
        self.block_size = block_size
        self.line_by_line = line_by_line
        self.pad_id = pad_id
        tokens = dataset.num_tokens
        if line_by_line:
            self._starts, self._lengths, cut = record_spans(dataset, block_size)  # as training's
            self.count = dataset.num_documents
            if cut:
                warn(f"{longer_records(dataset, cut, block_size)}; the held-out loss scores "
                     f"their first {block_size} tokens only")
        else:
            if tokens < block_size:
                raise TinygenError(
                    f"{dataset.name}: {tokens} tokens, fewer than one row of block_size "
                    f"{block_size}; hold out more text or use a smaller --block-size")
            self.count = -(-tokens // block_size)  # the last row ends at the stream's end

    def __len__(self) -> int:
        return self.count

    def rows(self, index: np.ndarray) -> Rows:
        """Rows `index` (n,), each (block_size,) wide."""
        size = self.block_size
        if self.line_by_line:
            ids = np.full((len(index), size), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(index), size), dtype=bool)
            for row, doc in enumerate(index):
                start, length = int(self._starts[doc]), int(self._lengths[doc])
                ids[row, :length] = self.dataset.tokens[start:start + length]
                mask[row, :length] = True
            labels = np.where(mask, ids, IGNORE_INDEX)
        else:
            # Row i is tokens [i*T, (i+1)*T); the last, shorter remainder's row starts T before
            # the end and leaves out the targets the row before it already predicted.
            offsets = np.minimum(index * size, self.dataset.num_tokens - size)
            positions = offsets[:, None] + np.arange(size)[None, :]
            ids = self.dataset.tokens[positions].astype(np.int64)
            mask = np.ones(ids.shape, dtype=bool)
            labels = np.where(positions < (index * size)[:, None], IGNORE_INDEX, ids)
        return Rows(ids, labels, mask, mask.astype(np.float32))

    def targets(self, index: np.ndarray) -> int:
        """How many tokens rows `index` predict (causal_lm_loss's count)."""
        if self.line_by_line:
            return int(np.sum(self._lengths[index] - 1))
        tokens, size = self.dataset.num_tokens, self.block_size
        return int(np.sum(np.minimum(tokens - index * size, size) - 1
                          + (index * size > tokens - size)))

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 of the held-out tokens and their document ends: a resume checks it."""
        digest = hashlib.sha256(np.ascontiguousarray(self.dataset.tokens).tobytes())
        digest.update(np.ascontiguousarray(self.dataset.doc_ends, dtype="<i8").tobytes())
        return digest.hexdigest()
