"""A micro-batch too big for the memory, refused in one line before the data is read.

`--batch-size 99999999` warned that the batch was more rows than the corpus, then the
kernel killed the run (exit 137) with nothing said. The estimate counts only what a
step is sure to hold at once: the step's rows on the host (every micro-batch of it is
drawn up front, and every torchrun process draws the whole global batch) and the
logits of one micro-batch, (B, T, V) read as float32 by the loss. The model, its
activations and the optimizer come on top, so a batch refused here could never have
run, and one let through may still not fit.
"""

from __future__ import annotations

import torch

from tinygen.batch_memory import available_memory
from tinygen.errors import TinygenError

# A row's token on the host, surely: input id and label (int64). Loss weights (float32,
# when they matter) and distillation's teacher fields come on top.
TOKEN_BYTES = 8 + 8
# A logit as the loss reads it: float32 (a bf16 run's logits are copied to float32 for it).
LOGIT_BYTES = 4


def device_memory(device: torch.device) -> int | None:
    """Free bytes on an accelerator that says (CUDA); None for the CPU and XLA."""
    if device.type != "cuda":
        return None
    return int(torch.cuda.mem_get_info(device)[0])


def check_batch_memory(batch_size: int, grad_accum: int, block_size: int, vocab_size: int,
                       processes: int, device: torch.device) -> None:
    """One line unless this process's share of a step fits: `batch_size` is the global
    micro-batch, split over `processes` (torchrun), of `block_size` tokens a row."""
    host_row = grad_accum * block_size * TOKEN_BYTES  # a global row, drawn by every process
    logits_row = block_size * vocab_size * LOGIT_BYTES  # a row this process trains
    share = batch_size // processes
    logits = (f"the logits of {share} rows x {block_size} tokens x {vocab_size} vocabulary x "
              f"{LOGIT_BYTES} bytes")
    rows = f"the step's {batch_size * grad_accum} rows on the host"
    host, gpu = available_memory(), device_memory(device)
    # Each limit: (where, bytes needed, what they are, bytes free, bytes a row per process).
    limits = []
    if device.type == "cpu":
        if host is not None:
            limits.append(("memory", batch_size * host_row + share * logits_row,
                           f"{logits}, and {rows}", host, processes * host_row + logits_row))
    else:
        if host is not None:
            limits.append(("host memory", batch_size * host_row, rows, host,
                           processes * host_row))
        if gpu is not None:
            limits.append((f"{device} memory", share * logits_row, logits, gpu, logits_row))
    for where, need, what, free, _ in limits:
        if need <= free:
            continue
        fits = processes * min(f // r for *_, f, r in limits)  # rows per process, x processes
        advice = (f"no batch above {fits} rows can fit: lower --batch-size (--grad-accum "
                  f"trains more rows per step)" if fits else
                  "not even one row per process can fit: use a smaller --block-size")
        raise TinygenError(f"--batch-size {batch_size} does not fit in {where}: it needs at "
                           f"least {_size(need)} ({what}), and {_size(free)} is free; {advice}")


def _size(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} bytes"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} TiB"
