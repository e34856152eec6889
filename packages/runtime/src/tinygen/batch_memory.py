"""A batch that cannot fit in memory, refused in one line before its buffers are made.

Without this, a batch too large for the machine (`tinygen -n 4096 --batch-size 4096`, or a
bigger model) allocates until the kernel kills the process, with no message at all. The
estimate counts only what the batch is sure to hold at once: the KV buffers' positions its
prompts and its sure decode steps write, and its logits. What a step allocates beside them
(the processors' copies, onnxruntime's working memory) is left out, so the estimate is a
lower bound: a batch it refuses could never have run, and one it lets through may still not
fit. The embedded model, texts of 64 tokens: 0.26 MB a text estimated, 0.7 to 0.9 MB measured.

Linux only: elsewhere there is no MemAvailable to read, and psutil is too much for a guard.
"""

from __future__ import annotations

import mmap
from typing import Collection, Sequence

import numpy as np

from .config import GenerationConfig
from .errors import TinygenError

PAGE = mmap.PAGESIZE


class BatchTooLarge(TinygenError):
    """A batch whose buffers cannot fit in the memory available (bytes, as the fields say)."""

    def __init__(self, message: str, rows: int, need: int, available: int, fit: int):
        super().__init__(message)
        self.rows, self.need, self.available, self.fit = rows, need, available, fit


def available_memory(meminfo: str = "/proc/meminfo") -> int | None:
    """Bytes that can still be allocated (Linux: MemAvailable, page cache the kernel can drop
    included, plus free swap, so that nothing that would fit, however slowly, is refused);
    None where there is no /proc/meminfo. The trainer's memory check reads it too."""
    found = {}
    try:
        with open(meminfo, "rb") as f:
            for line in f:
                name, _, rest = line.partition(b":")
                if name in (b"MemAvailable", b"SwapFree"):
                    found[name] = int(rest.split()[0]) * 1024  # given in kB
    except (OSError, ValueError, IndexError):
        return None
    if b"MemAvailable" not in found:
        return None
    return found[b"MemAvailable"] + found.get(b"SwapFree", 0)


def sure_tokens(config: GenerationConfig, ends: Collection[int]) -> int:
    """The tokens a text gets whatever it draws: a stop string may end it at its first token,
    an end token (EOS, a field's) once min_new_tokens are made; with neither it runs to
    max_new_tokens (or the window, which row_bytes caps at)."""
    if config.stop:
        return 1
    if ends:
        return max(1, config.min_new_tokens)
    return config.max_new_tokens


def row_bytes(model, lengths: Sequence[int], tokens: int) -> int:
    """A lower bound on the host memory each row of a batch holds at its fullest (KV buffers
    on a GPU are not counted). lengths: the rows' prompt lengths; tokens: the tokens every
    row surely gets (sure_tokens), each but the last fed back at one more position."""
    m = model.manifest
    steps = max(tokens - 1, 0)
    logit = np.dtype(model.logits_dtype).itemsize
    logit += 4 if logit != 4 else 0  # forward hands back float32: a copy of any other type
    kv = np.dtype(model.kv_dtype).itemsize * m.head_size  # one position of one head's keys
    slices = m.num_layers * 2 * m.num_kv_heads  # keys and values, per layer and head
    on_host = model.device == "cpu"
    if m.kv_cache == "shared":
        # A row writes its own slots of buffers context_window positions long, mapped only
        # where written (shared_kv.lazy_zeros): in whole pages, when each slice starts a page.
        # Finished rows keep stepping, so every row gets as many steps.
        written = min(min(lengths) + steps, m.context_window) * kv
        if m.context_window * kv % PAGE == 0:
            written = -(-written // PAGE) * PAGE
        return slices * written * on_host + m.vocab_size * logit
    # concat: every row padded to the longest prompt, and the prefill's logits cover each position.
    width = max(lengths)
    prefill = slices * width * kv * on_host + width * m.vocab_size * logit
    decoding = slices * min(width + steps, m.context_window) * kv * on_host + m.vocab_size * logit
    return max(prefill, decoding)


def check_batch_memory(model, lengths: Sequence[int], tokens: int) -> None:
    """Raise BatchTooLarge when a batch of rows with these prompt lengths, each sure of
    `tokens` tokens, needs more memory than is available now (row_bytes: a lower bound)."""
    available = available_memory()
    if available is None:
        return
    each = row_bytes(model, lengths, tokens)
    rows = len(lengths)
    need = each * rows
    if need <= available:
        return
    fit = available // each
    if rows == 1:
        message = (f"one text needs at least {size(need)} of memory, and {size(available)} is "
                   f"available")
    else:
        message = (f"a batch of {rows} texts needs at least {size(need)} of memory ({size(each)} a "
                   f"text), and {size(available)} is available: "
                   f"{f'at most {fit} fit' if fit else 'not even one fits'}")
    advice = f"lower batch_size to {fit} or less" if fit else \
        "free some memory, or use a smaller model"
    raise BatchTooLarge(f"{message}; {advice}", rows, need, available, fit)


def size(count: int) -> str:
    """Bytes in words: 1.07 GB, 262.1 MB, 48 kB."""
    if count >= 10**9:
        return f"{count / 10**9:.2f} GB"
    if count >= 10**6:
        return f"{count / 10**6:.1f} MB"
    return f"{max(1, round(count / 10**3))} kB"
