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
from .processors import softmax

NOTHING_LEFT = ("no token is left to sample: the exclusions, logit bias and repetition bans "
                "remove every token; allow more tokens")


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

    def _check(self, empty: np.ndarray) -> None:
        """empty: (batch,) True where no token is left; raise if such a row is still going."""
        rows = self.rows
        for i in np.flatnonzero(empty).tolist():
            if i >= len(rows) or not rows[i].finish_reason:
                raise TinygenError(NOTHING_LEFT)


class GreedySampler(Sampler):
    def __call__(self, logits):
        chosen = logits.argmax(axis=-1)
        if self.rows is not None:
            # A row whose best logit is -inf (or NaN) has nothing left: argmax says token 0.
            # Scalar reads, not array ops: numpy's ufuncs are cold after each model run.
            empty = [not logits[i, t] > -np.inf for i, t in enumerate(chosen.tolist())]
            if any(empty):
                self._check(np.array(empty))
        return chosen


class RandomSampler(Sampler):
    def __init__(self, seeds: Sequence[int]):
        self.generators = [np.random.default_rng(seed) for seed in seeds]

    def __call__(self, logits):
        # Inverse-CDF sampling in float64: one uniform draw per row per step.
        probs = softmax(logits.astype(np.float64))
        cumulative = np.cumsum(probs, axis=-1)
        # All -inf makes the row NaN; without the check such a row would get token 0.
        if self.rows is not None and not (cumulative[:, -1] > 0).all():
            self._check(~(cumulative[:, -1] > 0))
        draws = np.array([g.random() for g in self.generators]) * cumulative[:, -1]
        # The first index whose cumulative mass exceeds the draw; zero-probability
        # tokens never qualify, since their cumulative equals their predecessor's.
        return (cumulative <= draws[:, None]).sum(axis=-1)
