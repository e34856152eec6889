"""Logits processors: small numpy classes with one method each.

Each takes `logits` of shape (batch, vocab), float32, and `history`, one list of
token ids per row (prompt + generated so far, no padding), and returns new
logits. They reproduce transformers' processors of the same name on the same
logits (tests/runtime/test_processors.py checks this against transformers).
`build_processors` applies them in this order: logit bias, then token suppression
(bans and exclusions), then the penalties (repetition, no-repeat n-gram), then the
warpers in transformers' order: temperature, top-k, top-p, min-p, typical-p.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .config import GenerationConfig

_LARGEST = np.finfo(np.float32).max

History = Sequence[Sequence[int]]
NEG_INF = np.float32(-np.inf)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


class LogitsProcessor:
    # Whether __call__ reads `history`; the loop builds it only when some processor does.
    needs_history = False

    def __call__(self, logits: np.ndarray, history: History) -> np.ndarray:
        raise NotImplementedError


class RepetitionPenalty(LogitsProcessor):
    """Divide positive (multiply negative) logits of tokens already seen by `penalty`."""

    needs_history = True

    def __init__(self, penalty: float):
        # float32 makes a tiny penalty 0 (and -inf x 0 is NaN): keep the smallest normal one;
        # and a huge one inf (-inf / inf is NaN, with a warning on the user's screen): the largest.
        self.penalty = np.float32(min(max(float(penalty), float(np.finfo(np.float32).tiny)),
                                      float(_LARGEST)))

    def __call__(self, logits, history):
        out = logits.copy()
        for row, seen in enumerate(history):
            ids = np.unique(np.asarray(seen, dtype=np.int64))
            score = out[row, ids]
            # Capped at float32's largest: two +inf logits would make softmax NaN.
            with np.errstate(over="ignore"):
                out[row, ids] = np.where(score < 0, score * self.penalty,
                                         np.minimum(score / self.penalty, _LARGEST))
        return out


class NoRepeatNGram(LogitsProcessor):
    """Ban any token that would complete an n-gram already present in the row."""

    needs_history = True

    def __init__(self, size: int):
        self.size = size

    def banned(self, seq: Sequence[int]) -> list[int]:
        n = self.size
        if len(seq) + 1 < n:
            return []
        prefix = tuple(seq[len(seq) - n + 1:]) if n > 1 else ()
        return [seq[i + n - 1] for i in range(len(seq) - n + 1) if tuple(seq[i:i + n - 1]) == prefix]

    def __call__(self, logits, history):
        out = logits.copy()
        for row, seq in enumerate(history):
            banned = self.banned(list(seq))
            if banned:
                out[row, banned] = NEG_INF
        return out


class SuppressTokens(LogitsProcessor):
    """Tokens that must never be generated (bans from replacements.json, exclusions)."""

    def __init__(self, token_ids: Sequence[int]):
        self.ids = np.asarray(sorted(set(token_ids)), dtype=np.int64)

    def __call__(self, logits, history):
        out = logits.copy()
        out[:, self.ids] = NEG_INF
        return out


class LogitBias(LogitsProcessor):
    def __init__(self, bias: Sequence[tuple[int, float]]):
        self.ids = np.asarray([i for i, _ in bias], dtype=np.int64)
        # Within float32: 1e300 became inf there, and a token biased to inf was never drawn (NaN).
        self.values = np.clip(np.asarray([b for _, b in bias], dtype=np.float64),
                              -float(_LARGEST), float(_LARGEST)).astype(np.float32)

    def __call__(self, logits, history):
        out = logits.copy()
        out[:, self.ids] += self.values
        return out


class Temperature(LogitsProcessor):
    def __init__(self, temperature: float):
        # float32 turns a temperature under ~1e-45 into 0: keep the smallest normal one; and one
        # over ~3.4e38 into inf, whose quotient with a banned token's -inf is NaN: the largest.
        self.temperature = np.float32(min(max(float(temperature), float(np.finfo(np.float32).tiny)),
                                          float(_LARGEST)))

    def __call__(self, logits, history):
        if self.temperature >= 1 or logits.max() <= _LARGEST * self.temperature:
            return logits / self.temperature  # nothing overflows: as transformers
        top = logits.max(axis=-1, keepdims=True)
        # A tiny temperature, or a logit a bias or penalty put at float32's largest, would
        # overflow to +inf (NaN in softmax): shift the best to 0 first, so it tends to greedy
        # as it should (softmax ignores the shift).
        with np.errstate(over="ignore", invalid="ignore"):  # -inf where far from the best
            return (logits - top) / self.temperature


class TopK(LogitsProcessor):
    def __init__(self, k: int):
        self.k = k

    def __call__(self, logits, history):
        k = min(self.k, logits.shape[-1])
        kth = np.partition(logits, -k, axis=-1)[:, -k:].min(axis=-1, keepdims=True)
        return np.where(logits < kth, NEG_INF, logits)


# Top-p and typical-p keep a few of the vocabulary's tokens: they sort this many candidates
# first (whole groups of equal values), and more only while the kept set could reach past
# them. A full stable argsort of a 49k vocabulary costs several ms, more than a small model's step.
CANDIDATES = 256


def _keep_only(row: np.ndarray, keep: np.ndarray) -> np.ndarray:
    out = np.full_like(row, NEG_INF)
    out[keep] = row[keep]
    return out


class _RowFilter(LogitsProcessor):
    """A filter that ranks each row's tokens on their own. Tokens already at -inf (p = 0)
    stay there and are left out of the work: `_keep` sees the ids of the others."""

    def __call__(self, logits, history):
        return np.stack([self._row(row) for row in logits])

    def _row(self, row: np.ndarray) -> np.ndarray:
        ids = np.flatnonzero(row != NEG_INF)
        return row.copy() if ids.size == 0 else self._keep(row, ids)

    def _keep(self, row: np.ndarray, ids: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class TopP(_RowFilter):
    def __init__(self, top_p: float):
        self.top_p = top_p

    def _keep(self, row: np.ndarray, ids: np.ndarray) -> np.ndarray:
        # transformers' rule: in ascending order (ties: lower id first), remove the tokens
        # whose cumulative probability is <= 1 - top_p, never the most likely one.
        values = row[ids]
        probs, n, m = softmax(values), ids.size, min(CANDIDATES, ids.size)
        while True:  # the m most likely tokens, until everything below them is removed
            kth = np.partition(values, n - m)[n - m]
            below = values < kth
            tail = probs.sum(where=below)
            if tail <= 1 - self.top_p or m == n:
                break
            m = min(4 * m, n)
        candidates = np.flatnonzero(~below)
        order = candidates[np.argsort(values[candidates], kind="stable")]
        remove = tail + np.cumsum(probs[order]) <= 1 - self.top_p
        remove[-1] = False
        return _keep_only(row, ids[order[~remove]])


class MinP(LogitsProcessor):
    def __init__(self, min_p: float):
        self.min_p = min_p

    def __call__(self, logits, history):
        probs = softmax(logits)
        remove = probs < self.min_p * probs.max(axis=-1, keepdims=True)
        remove[np.arange(len(logits)), logits.argmax(axis=-1)] = False
        return np.where(remove, NEG_INF, logits)


class TypicalP(_RowFilter):
    """Locally typical sampling (Meister et al. 2022): keep tokens whose surprise is near the entropy."""

    def __init__(self, mass: float):
        self.mass = mass

    def _keep(self, row: np.ndarray, ids: np.ndarray) -> np.ndarray:
        # transformers' rule: in ascending |surprise - entropy| (ties: lower id first), keep
        # the tokens up to the first whose cumulative probability reaches `mass`, ties with it
        # included, and always the first.
        logp = log_softmax(row[ids])
        probs = np.exp(logp)
        entropy = -(logp * probs).sum()
        shifted = np.abs(-logp - entropy)
        n, m = ids.size, min(CANDIDATES, ids.size)
        while True:  # the m most typical tokens, until they hold the mass
            kth = np.partition(shifted, m - 1)[m - 1]
            candidates = np.flatnonzero(shifted <= kth)
            if candidates.size == 0:  # a NaN logit makes every one NaN: nothing to rank
                return row.copy()
            order = candidates[np.argsort(shifted[candidates], kind="stable")]
            cumulative = np.cumsum(probs[order])
            if cumulative[-1] >= self.mass or m == n:
                break
            m = min(4 * m, n)
        last = min(int((cumulative < self.mass).sum()), order.size - 1)
        keep = order[shifted[order] <= shifted[order[last]]]
        return _keep_only(row, ids[np.union1d(keep, order[:1])])


def build_processors(config: GenerationConfig, suppress: Sequence[int] = ()) -> list[LogitsProcessor]:
    """The ordered processor list for one config; greedy decoding skips the warpers."""
    chain: list[LogitsProcessor] = []
    if config.logit_bias:
        chain.append(LogitBias(config.logit_bias))
    if suppress:
        chain.append(SuppressTokens(suppress))
    if config.repetition_penalty != 1.0:
        chain.append(RepetitionPenalty(config.repetition_penalty))
    if config.no_repeat_ngram_size > 0:
        chain.append(NoRepeatNGram(config.no_repeat_ngram_size))
    if config.greedy:
        return chain
    if config.temperature != 1.0:
        chain.append(Temperature(config.temperature))
    if config.top_k > 0:
        chain.append(TopK(config.top_k))
    if config.top_p < 1.0:
        chain.append(TopP(config.top_p))
    if config.min_p > 0:
        chain.append(MinP(config.min_p))
    if config.typical_p < 1.0:
        chain.append(TypicalP(config.typical_p))
    return chain
