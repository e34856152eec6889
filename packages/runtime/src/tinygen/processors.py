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
        # float32 makes a tiny penalty 0 (and -inf x 0 is NaN): keep the smallest normal one.
        self.penalty = max(np.float32(penalty), np.finfo(np.float32).tiny)

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
        self.values = np.asarray([b for _, b in bias], dtype=np.float32)

    def __call__(self, logits, history):
        out = logits.copy()
        out[:, self.ids] += self.values
        return out


class Temperature(LogitsProcessor):
    def __init__(self, temperature: float):
        # float32 turns a temperature under ~1e-45 into 0: keep the smallest normal one.
        self.temperature = max(np.float32(temperature), np.finfo(np.float32).tiny)

    def __call__(self, logits, history):
        if self.temperature >= 1e-30:  # logits stay far below float32's largest: as transformers
            return logits / self.temperature
        # A tinier one would overflow them to +inf (NaN in softmax): shift the best to 0
        # first, so it tends to greedy as it should (softmax ignores the shift).
        with np.errstate(over="ignore", invalid="ignore"):  # -inf where far from the best
            return (logits - logits.max(axis=-1, keepdims=True)) / self.temperature


class TopK(LogitsProcessor):
    def __init__(self, k: int):
        self.k = k

    def __call__(self, logits, history):
        k = min(self.k, logits.shape[-1])
        kth = np.partition(logits, -k, axis=-1)[:, -k:].min(axis=-1, keepdims=True)
        return np.where(logits < kth, NEG_INF, logits)


def _mask_sorted(logits: np.ndarray, order: np.ndarray, remove_sorted: np.ndarray) -> np.ndarray:
    """Scatter a mask given in sorted order back to vocabulary order and apply it."""
    remove = np.zeros_like(remove_sorted)
    np.put_along_axis(remove, order, remove_sorted, axis=-1)
    return np.where(remove, NEG_INF, logits)


class TopP(LogitsProcessor):
    def __init__(self, top_p: float):
        self.top_p = top_p

    def __call__(self, logits, history):
        order = np.argsort(logits, axis=-1, kind="stable")  # ascending
        sorted_logits = np.take_along_axis(logits, order, axis=-1)
        cumulative = np.cumsum(softmax(sorted_logits), axis=-1)
        remove = cumulative <= (1 - self.top_p)
        remove[:, -1] = False  # always keep the most likely token
        return _mask_sorted(logits, order, remove)


class MinP(LogitsProcessor):
    def __init__(self, min_p: float):
        self.min_p = min_p

    def __call__(self, logits, history):
        probs = softmax(logits)
        remove = probs < self.min_p * probs.max(axis=-1, keepdims=True)
        remove[np.arange(len(logits)), logits.argmax(axis=-1)] = False
        return np.where(remove, NEG_INF, logits)


class TypicalP(LogitsProcessor):
    """Locally typical sampling (Meister et al. 2022): keep tokens whose surprise is near the entropy."""

    def __init__(self, mass: float):
        self.mass = mass

    def __call__(self, logits, history):
        logp = log_softmax(logits)
        p = np.exp(logp)
        with np.errstate(invalid="ignore"):  # -inf * 0 for masked tokens: nansum drops it
            entropy = -np.nansum(logp * p, axis=-1, keepdims=True)
        shifted = np.abs(-logp - entropy)
        order = np.argsort(shifted, axis=-1, kind="stable")
        sorted_shifted = np.take_along_axis(shifted, order, axis=-1)
        cumulative = np.cumsum(softmax(np.take_along_axis(logits, order, axis=-1)), axis=-1)
        last = np.minimum((cumulative < self.mass).sum(axis=-1), logits.shape[-1] - 1)
        cutoff = np.take_along_axis(sorted_shifted, last[:, None], axis=-1)
        remove = sorted_shifted > cutoff
        remove[:, 0] = False
        return _mask_sorted(logits, order, remove)


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
