"""Token choice from processed logits: greedy, or random with one generator per sequence.

Every sequence owns its `numpy.random.Generator`, seeded from its own seed, and
draws exactly one number per step whatever the batch holds; so a text made
with seed s in a batch is the same as the text made alone with seed s.
"""

from __future__ import annotations

import secrets
from typing import Sequence

import numpy as np

from .processors import softmax


def draw_seed() -> int:
    """A fresh seed for a call that gave none; it is reported so the text can be remade."""
    return secrets.randbits(63)


class Sampler:
    def __call__(self, logits: np.ndarray) -> np.ndarray:
        """logits (batch, vocab) -> chosen token ids (batch,)"""
        raise NotImplementedError


class GreedySampler(Sampler):
    def __call__(self, logits):
        return logits.argmax(axis=-1)


class RandomSampler(Sampler):
    def __init__(self, seeds: Sequence[int]):
        self.generators = [np.random.default_rng(seed) for seed in seeds]

    def __call__(self, logits):
        # Inverse-CDF sampling in float64: one uniform draw per row per step.
        probs = softmax(logits.astype(np.float64))
        cumulative = np.cumsum(probs, axis=-1)
        draws = np.array([g.random() for g in self.generators]) * cumulative[:, -1]
        # The first index whose cumulative mass exceeds the draw; zero-probability
        # tokens never qualify, since their cumulative equals their predecessor's.
        return (cumulative <= draws[:, None]).sum(axis=-1)
