"""Feed: a phase's training batches, placed on the device, one optimizer step at a time.

The loop asks its feed for a step's micro-batches and saves the feed's state in
checkpoints. This one draws each batch when asked and copies it to the device;
XLA's (xla.XlaFeed) copies ahead in a background thread, so its state is the
position of the last batch handed out rather than the sampler's.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

import torch

from ..data.dataset import Rows, Sampler

# One micro-batch by field name: input_ids, labels (B, T) int64, and when they matter
# attention_mask (B, T) int64 and loss_weights (B, T) float32.
HostBatch = Dict[str, torch.Tensor]


class Feed:
    def __init__(self, sampler: Sampler, make_batch: Callable[[Rows], HostBatch],
                 batch_size: int, accum: int, to_device: Callable[[torch.Tensor], torch.Tensor]):
        self.sampler = sampler
        self.make_batch = make_batch
        self.batch_size = batch_size
        self.accum = accum
        self.to_device = to_device

    def next_step(self) -> list[HostBatch]:
        """The `accum` micro-batches of the next optimizer step, on the device."""
        return [{key: self.to_device(value) for key, value in
                 self.make_batch(self.sampler.next_rows(self.batch_size)).items()}
                for _ in range(self.accum)]

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)

    def close(self) -> None:
        pass
