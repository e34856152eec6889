"""Learning rate over the run: per phase, linear warmup then cosine / linear decay.

The optimizer's lr is set from this before every step (as nanoGPT does), so the
schedule's whole state is the step number and a resume needs nothing else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LRSchedule:
    peak: float
    steps: int  # length of the phase
    warmup: int  # capped at the phase length
    kind: str = "cosine"  # "cosine", "linear" or "constant"
    min_ratio: float = 0.1  # where the decay ends, as a fraction of peak

    def __call__(self, step: int) -> float:
        """Learning rate for `step`, counted from 0 at the start of the phase."""
        warmup = min(self.warmup, self.steps)
        if step < warmup:
            return self.peak * (step + 1) / warmup  # (step + 1): the first step already learns
        if self.kind == "constant":
            return self.peak
        progress = min(1.0, (step - warmup) / max(1, self.steps - warmup))
        if self.kind == "cosine":
            factor = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            factor = 1.0 - progress
        return self.peak * (self.min_ratio + (1.0 - self.min_ratio) * factor)
