"""Token choice from processed logits: greedy, or random with one generator per sequence.

Every sequence owns its `numpy.random.Generator`, seeded from its own seed, and
draws exactly one number per step whatever the batch holds; so a text made
with seed s in a batch is the same as the text made alone with seed s.
"""

from __future__ import annotations

import secrets
from typing import Sequence

import numpy as np

from .errors import TinygenError

NOTHING_LEFT = ("no token is left to sample: the exclusions, logit bias and repetition bans "
                "remove every token; allow more tokens")


# What a NaN or +inf logit means: the options make -inf at worst (processors.py keeps them
# finite), so the model computed it.
BROKEN_SCORES = ("the model's next-token scores are not numbers (NaN or infinite logits): its "
                 "weights are damaged or its export is broken; export it again")


def broken_scores(logits: np.ndarray) -> bool:
    """Whether a row of logits holds a NaN or +inf (not the -inf of a removed token)."""
    return bool(np.isnan(logits).any() or np.isposinf(logits).any())


def nothing_left(row=None, logits: np.ndarray | None = None) -> str:
    """NOTHING_LEFT for a sequence (a decoding.SequenceState) whose row of `logits` left no
    token to choose: BROKEN_SCORES where the model, not the options, made it so; when
    min_new_tokens is holding its end tokens back (what left nothing, if the bans spared only
    those), it says so."""
    if logits is not None and broken_scores(logits):
        return BROKEN_SCORES
    if row is None or getattr(row, "may_end", True) or not getattr(row, "eos", None):
        return NOTHING_LEFT
    return (f"no token is left to sample: the exclusions, logit bias and repetition bans remove "
            f"every token, and min_new_tokens ({row.config.min_new_tokens}) holds back the end of "
            f"the text; allow more tokens, or lower min_new_tokens")


def draw_seed() -> int:
    """A fresh seed for a call that gave none; it is reported so the text can be remade.

    52 bits: JavaScript (the playground, any client reading the JSON as numbers) holds
    integers exactly only below 2**53, and seed + i must stay there for n texts too."""
    return secrets.randbits(52)


class Sampler:
    # The sequences behind the rows (objects with `finish_reason`). When the caller sets
    # them, a row still going whose every token was removed (all logits -inf) raises
    # TinygenError instead of silently getting token 0; finished rows, which a static
    # batch keeps with their tokens unused, are not checked. Unset, nothing is checked:
    # the serving engine fails only the request concerned (Engine._fail), not the batch. The check costs O(batch) a step.
    rows = None

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        """logits (batch, vocab) -> chosen token ids (batch,)"""
        raise NotImplementedError

    def _check(self, empty: np.ndarray, logits: np.ndarray) -> None:
        """empty: (batch,) True where no token is left; raise if such a row is still going."""
        rows = self.rows
        for i in np.flatnonzero(empty).tolist():
            if i >= len(rows) or not rows[i].finish_reason:
                raise TinygenError(nothing_left(rows[i] if i < len(rows) else None, logits[i]))


class GreedySampler(Sampler):
    def __call__(self, logits):
        chosen = logits.argmax(axis=-1)
        if self.rows is not None:
            # A row whose best logit is -inf (or NaN) has nothing left: argmax says token 0.
            # Scalar reads, not array ops: numpy's ufuncs are cold after each model run.
            empty = [not logits[i, t] > -np.inf for i, t in enumerate(chosen.tolist())]
            if any(empty):
                self._check(np.array(empty), logits)
        return chosen


class RandomSampler(Sampler):
    def __init__(self, seeds: Sequence[int]):
        self.generators = [np.random.default_rng(seed) for seed in seeds]

    def __call__(self, logits):
        # Inverse-CDF sampling: one uniform draw per row per step, each row on its own, so a
        # row's token never depends on the rest of the batch.
        draws = [g.random() for g in self.generators]
        tokens = [inverse_cdf(row, u) for row, u in zip(logits, draws)]
        # All -inf (or a NaN) leaves nothing to draw; without the check such a row would get token 0.
        empty = np.array([t < 0 for t in tokens])
        if self.rows is not None and empty.any():
            self._check(empty, logits)
        return np.array([max(t, 0) for t in tokens], dtype=np.int64)


# The cumulative mass is summed in blocks of this many tokens, and token by token only in
# the block the draw falls in: a whole-vocabulary float64 cumsum and float64 exp cost
# ~1 ms a token at a vocabulary of 49k, more than the tiny model's own step.
BLOCK = 256


def inverse_cdf(logits: np.ndarray, u: float) -> int:
    """The token a uniform draw u in [0, 1) picks from one row of logits, -1 if there is
    no distribution to draw from. Tokens of probability 0 (-inf) are never picked."""
    top = logits.max()
    if not np.isfinite(top):  # every token -inf, or a NaN or +inf logit: no distribution
        return -1
    weights = logits - top
    np.exp(weights, out=weights)  # float32 exp (vectorised); a token's share needs no more
    weights = weights.astype(np.float64)  # sums in float64, so no small share is rounded away
    blocks = np.cumsum(np.add.reduceat(weights, np.arange(0, weights.size, BLOCK)))
    total = blocks[-1]  # >= 1: the best token weighs exp(0)
    draw = u * total
    # The first block (then token) whose cumulative mass passes the draw; never past the
    # last one with mass, should rounding put the draw at the total.
    b = min(int(np.searchsorted(blocks, draw, "right")), int(np.searchsorted(blocks, total, "left")))
    within = np.cumsum(weights[b * BLOCK:(b + 1) * BLOCK])
    within += blocks[b - 1] if b else 0.0
    i = min(int(np.searchsorted(within, draw, "right")), int(np.searchsorted(within, within[-1], "left")))
    return b * BLOCK + i
