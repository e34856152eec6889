"""Row operations on a "concat" KV cache, so sequences can join and leave a running batch.

The concat layout (onnx_model.OnnxCausalLM, what optimum exports) holds, per layer,
keys and values of shape (batch, kv_heads, past, head_size); every row is left-padded
to the same `past`, and the attention mask (batch, past) marks the columns that hold a
real token. Rows never read each other's columns and positions are given per row, so
rows can be taken out, and rows from another cache appended (both padded on the left
to a common length), without changing what any row computes.

Between joins and leaves the cache stays in onnxruntime (IO binding); only these
operations copy it through numpy and back, which costs one pass over the cache each
time the batch changes, not each step.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import onnxruntime as ort

KVCache = list  # list[ort.OrtValue], in Manifest.past_names() order


def select_rows(cache: KVCache, mask: np.ndarray, rows: Sequence[int],
                device: str = "cpu") -> tuple[KVCache, np.ndarray]:
    """Keep `rows` (in that order). cache: per layer (batch, heads, past, size); mask (batch, past).

    Columns no kept row uses any more (padding that only a departed row needed) are dropped.
    """
    rows = np.asarray(rows, dtype=np.int64)
    mask = mask[rows]
    start = _first_used_column(mask)
    arrays = [value.numpy()[rows][:, :, start:] for value in cache]
    return _to_ortvalues(arrays, device), np.ascontiguousarray(mask[:, start:])


def append_rows(cache: KVCache, mask: np.ndarray, new_cache: KVCache, new_mask: np.ndarray,
                device: str = "cpu") -> tuple[KVCache, np.ndarray]:
    """The rows of `cache` followed by those of `new_cache`, left-padded to a common length.

    cache: per layer (a, heads, p, size) with mask (a, p); new_cache: (b, heads, q, size)
    with mask (b, q). Returns per layer (a + b, heads, L, size) and mask (a + b, L), where
    L is the longest real row (leading columns that no row uses are dropped).
    """
    width = max(mask.shape[1], new_mask.shape[1])
    joined_mask = np.concatenate([_pad_left(mask, width), _pad_left(new_mask, width)])
    start = _first_used_column(joined_mask)
    arrays = []
    for old, new in zip(cache, new_cache):
        old, new = old.numpy(), new.numpy()
        arrays.append(np.concatenate([_pad_left(old, width, axis=2),
                                      _pad_left(new, width, axis=2)])[:, :, start:])
    return _to_ortvalues(arrays, device), np.ascontiguousarray(joined_mask[:, start:])


def _first_used_column(mask: np.ndarray) -> int:
    used = mask.any(axis=0)
    return int(used.argmax()) if used.any() else mask.shape[1]


def _pad_left(array: np.ndarray, width: int, axis: int = 1) -> np.ndarray:
    missing = width - array.shape[axis]
    if missing == 0:
        return array
    pad = [(0, 0)] * array.ndim
    pad[axis] = (missing, 0)
    return np.pad(array, pad)  # zeros: masked out, so their value never matters


def _to_ortvalues(arrays: list[np.ndarray], device: str) -> KVCache:
    # On the CPU the OrtValue wraps the array without a copy (and keeps it alive).
    return [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a), device, 0) for a in arrays]
