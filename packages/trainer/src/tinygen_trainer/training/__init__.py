"""Training and finetuning causal LMs: `train(TrainConfig(...)) -> output folder`.

config (TrainConfig, DataSource, Phase), presets (model shapes), setup (resolve
and check everything before the first step), loop (Trainer), schedule, loss,
device (cpu / cuda / xla backends), feed (batches onto the device), xla (what
the xla backend needs from torch_xla), distributed (torchrun data parallel),
checkpoint, progress, samples.

The config names import without torch; `train` and `Trainer` load it on first use,
so `tinygen-train --help` stays fast.
"""

from __future__ import annotations

from typing import Any

from .config import DataSource, Phase, TrainConfig
from .presets import PRESETS, Preset
from .progress import read_metrics

__all__ = ["PRESETS", "DataSource", "Phase", "Preset", "TrainConfig", "Trainer", "read_metrics",
           "train"]


def __getattr__(name: str) -> Any:
    if name in ("train", "Trainer"):
        from . import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
