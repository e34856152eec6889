"""BlendSampler: rows from several corpora mixed by ratio.

Each row picks its corpus at random with probability weight / sum(weights);
the picks are a fixed function of (seed, row number), and every corpus keeps
its own sampler, so the mix and the rows within each corpus both replay exactly
after a resume.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from tinygen.errors import TinygenError

from .dataset import Rows, Sampler

CHUNK = 4096  # picks are generated this many at a time from one seeded generator


def derive_seed(seed: int, *keys: int) -> int:
    """An independent seed for a part (a corpus, a phase) of a run seeded with `seed`."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


class BlendSampler:
    def __init__(self, samplers: Sequence[Sampler], weights: Sequence[float], seed: int):
        if not samplers or len(samplers) != len(weights):
            raise TinygenError("a blend needs one weight per corpus")
        if any(not w > 0 for w in weights):
            raise TinygenError(f"blend weights must be > 0, got {list(weights)}")
        sizes = {s.block_size for s in samplers}
        if len(sizes) != 1:
            raise TinygenError(f"blended corpora must share one block_size, got {sorted(sizes)}")
        self.samplers = list(samplers)
        self.block_size = sizes.pop()
        total = float(sum(weights))
        self.probs = np.asarray([w / total for w in weights])
        self.seed = seed
        self.drawn = 0  # rows handed out so far
        self._chunk_id = -1
        self._chunk = np.zeros(0, dtype=np.int64)

    def _picks(self, start: int, n: int) -> np.ndarray:
        out = []
        for row in range(start, start + n):  # chunks are cached, so this is cheap per row
            chunk_id = row // CHUNK
            if chunk_id != self._chunk_id:
                rng = np.random.default_rng([self.seed, chunk_id])
                self._chunk = rng.choice(len(self.samplers), size=CHUNK, p=self.probs)
                self._chunk_id = chunk_id
            out.append(self._chunk[row % CHUNK])
        return np.asarray(out, dtype=np.int64)

    def next_rows(self, n: int) -> Rows:
        picks = self._picks(self.drawn, n)
        self.drawn += n
        parts, where = [], []
        for i, sampler in enumerate(self.samplers):
            rows_here = np.flatnonzero(picks == i)
            if rows_here.size:
                parts.append(sampler.next_rows(int(rows_here.size)))
                where.append(rows_here)
        rows = Rows.concat(parts)
        order = np.empty(n, dtype=np.int64)
        order[np.concatenate(where)] = np.arange(n)  # row k of the output is row order[k] of rows
        return rows.take(order)

    def state_dict(self) -> dict[str, Any]:
        return {"drawn": self.drawn, "corpora": [s.state_dict() for s in self.samplers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["corpora"]) != len(self.samplers):
            raise TinygenError("checkpoint was written for a different number of corpora")
        self.drawn = int(state["drawn"])
        for sampler, sub in zip(self.samplers, state["corpora"], strict=True):
            sampler.load_state_dict(sub)
