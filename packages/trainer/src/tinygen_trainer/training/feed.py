"""Feed: a phase's training batches, placed on the device, one optimizer step at a time.

The loop asks its feed for a step's micro-batches and saves the feed's state in
checkpoints. This one draws each batch when asked and copies it to the device;
XLA's (xla.XlaFeed) copies ahead in a background thread, so its state is the
position of the last batch handed out rather than the sampler's.

`batch_size` is the global micro-batch: rows summed over every device of every
host. On a pod slice each host keeps only its share of every global batch
(host_step), and so does each torchrun process (Feed's `part`), so the same
options train the same on one chip, one host, a slice or several GPUs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict

import torch

from ..data.dataset import Rows, Sampler

# One micro-batch by field name: input_ids, labels (B, T) int64, and when they matter
# loss_weights (B, T) float32 (distillation adds its teacher's fields).
HostBatch = Dict[str, torch.Tensor]


class Feed:
    """`part` of `parts` (a torchrun process of several) trains its share of every batch.

    Every part draws the whole global batch, as a host of a pod slice does
    (host_step), so all samplers stay at the same position and one checkpoint
    resumes them all.
    """

    def __init__(self, sampler: Sampler, make_batch: Callable[[Rows], HostBatch],
                 batch_size: int, accum: int, to_device: Callable[[torch.Tensor], torch.Tensor],
                 part: int = 0, parts: int = 1):
        self.sampler = sampler
        self.make_batch = make_batch
        self.batch_size = batch_size
        self.accum = accum
        self.to_device = to_device
        self.rows = host_rows(batch_size, part, parts)

    def next_step(self) -> list[HostBatch]:
        """The `accum` micro-batches of the next optimizer step, this part's rows, on the device."""
        step = []
        for _ in range(self.accum):
            rows = _rows(self.sampler.next_rows(self.batch_size), self.rows)
            step.append({key: self.to_device(t) for key, t in self.make_batch(rows).items()})
        return step

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)

    def close(self) -> None:
        pass


def host_rows(batch_size: int, host: int, hosts: int) -> slice:
    """The rows of a global batch that host `host` of `hosts` trains: its contiguous share.

    batch_size must divide by hosts (XlaRuntime.check_batch, Backend.check_batch say so first).
    """
    share = batch_size // hosts
    return slice(host * share, (host + 1) * share)


def host_step(sampler: Sampler, make_batch: Callable[[Rows], HostBatch], batch_size: int,
              accum: int, host: int = 0, hosts: int = 1) -> HostBatch:
    """One optimizer step's rows for host `host` of `hosts`: (batch_size // hosts, accum, T).

    Every host draws the whole global batch from its own sampler (token windows out
    of the cache every host holds: cheap next to a step), so all samplers stay in
    step and the state of any one (process 0's, in the checkpoint) resumes them all;
    each keeps only its rows when they become tensors and go to its chips.
    Concatenated in host order, the hosts' rows are the batch one host would train.
    """
    mine = host_rows(batch_size, host, hosts)
    micro = [make_batch(_rows(sampler.next_rows(batch_size), mine)) for _ in range(accum)]
    return {key: torch.stack([m[key] for m in micro], dim=1) for key in micro[0]}


def _rows(rows: Rows, part: slice) -> Rows:
    """`rows` cut to `part`; every field (a subclass's too, e.g. teacher logits) is per row."""
    if part == slice(0, len(rows.input_ids)):
        return rows
    return type(rows)(**{f.name: getattr(rows, f.name)[part] for f in dataclasses.fields(rows)})
