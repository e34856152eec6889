"""One sequence in the serving engine's batch: its tokens, its own seed, and its streamed text.

It keeps everything that makes a text what it is with the sequence rather than with
the batch (BatchDecoding keeps some of it per batch: the config, the EOS set, the
samplers), because here sequences of different requests, with different settings,
come and go while the batch runs. `advance` is SequenceState.advance at the
sequence's own next position, so a sequence ends, cuts stop strings and holds back
text exactly as `generate` and `stream` do: the rules are decoding.SequenceState's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config import GenerationConfig
from ..decoding import Piece, SequenceState
from ..tokenizer import StreamDecoder


class Sequence(SequenceState):
    def __init__(self, owner: Any, index: int, prompt_ids: list[int], seed: int | None,
                 config: GenerationConfig, suppress: tuple[int, ...], eos: frozenset[int],
                 window: int, decoder: StreamDecoder):
        """owner: the request it belongs to; index: its place among that request's sequences."""
        super().__init__(prompt_ids, seed, decoder, config, eos, window)
        self.owner, self.index = owner, index
        # Sequences with equal keys share one processor chain and one sampling call.
        self.group = (config, suppress)
        # One generator per sequence, one draw per step (sampling.RandomSampler's rule).
        self.rng = None if config.greedy else np.random.default_rng(seed)
        self.next_position = 0  # where the next token goes; set at prefill

    def advance(self, token: int) -> Piece:
        """Take the sampled token (at `next_position`); returns the text that can be shown now."""
        return super().advance(token, self.next_position)
