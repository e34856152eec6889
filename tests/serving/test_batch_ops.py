"""KV-cache row operations: rows keep their real columns right-aligned, and compute the same logits."""

import numpy as np
import onnxruntime as ort

from tinygen.serving.batch_ops import append_rows, select_rows


def cache_of(arrays):
    return [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a)) for a in arrays]


def test_select_rows_keeps_the_order_asked_for_and_drops_unused_padding():
    rng = np.random.default_rng(0)
    keys = rng.normal(size=(3, 2, 5, 4)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 1], [0, 0, 0, 1, 1], [0, 0, 1, 1, 1]])
    cache, kept = select_rows(cache_of([keys, keys + 1]), mask, [2, 1])
    assert kept.tolist() == [[1, 1, 1], [0, 1, 1]]  # row 0, the longest, left: two columns go
    np.testing.assert_array_equal(cache[0].numpy(), keys[[2, 1]][:, :, 2:])
    np.testing.assert_array_equal(cache[1].numpy(), keys[[2, 1]][:, :, 2:] + 1)


def test_append_rows_pads_the_shorter_side_on_the_left():
    rng = np.random.default_rng(1)
    old = rng.normal(size=(2, 2, 3, 4)).astype(np.float32)
    new = rng.normal(size=(1, 2, 5, 4)).astype(np.float32)
    old_mask = np.array([[1, 1, 1], [0, 1, 1]])
    new_mask = np.array([[0, 1, 1, 1, 1]])
    cache, mask = append_rows(cache_of([old]), old_mask, cache_of([new]), new_mask)
    assert mask.tolist() == [[0, 1, 1, 1], [0, 0, 1, 1], [1, 1, 1, 1]]
    joined = cache[0].numpy()
    assert joined.shape == (3, 2, 4, 4)
    np.testing.assert_array_equal(joined[:2, :, 1:], old)
    assert not joined[:2, :, :1].any()  # padding is zeros (masked out)
    np.testing.assert_array_equal(joined[2], new[0, :, 1:])


def _prefill(model, pad_id, contexts):
    width = max(len(c) for c in contexts)
    ids = np.full((len(contexts), width), pad_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, c in enumerate(contexts):
        ids[i, width - len(c):], mask[i, width - len(c):] = c, 1
    positions = np.maximum(mask.cumsum(axis=1) - 1, 0)
    logits, cache = model.forward(ids, mask, positions, model.empty_cache(len(contexts)))
    return logits[:, -1], cache, mask


def _step(model, tokens, positions, cache, mask):
    mask = np.concatenate([mask, np.ones((len(tokens), 1), mask.dtype)], axis=1)
    logits, cache = model.forward(np.array(tokens)[:, None], mask, np.array(positions)[:, None], cache)
    return logits[:, -1], cache, mask


def test_a_row_computes_the_same_logits_alone_and_moved_between_batches(gpt2_gen):
    model, pad = gpt2_gen.model, gpt2_gen._pad_id()
    tok = gpt2_gen.tokenizer
    a, b, c = (tok.encode(t) for t in ("Once upon a time there was", "To be", "The quick brown fox"))
    # Alone: prompt a, then one more token.
    alone, cache, mask = _prefill(model, pad, [a])
    alone_next, _, _ = _step(model, [7], [len(a)], cache, mask)
    # a joins a running batch (b, c) that has already taken a step, and c leaves after.
    _, bc_cache, bc_mask = _prefill(model, pad, [b, c])
    _, bc_cache, bc_mask = _step(model, [5, 6], [len(b), len(c)], bc_cache, bc_mask)
    joined_logits, a_cache, a_mask = _prefill(model, pad, [a])
    cache, mask = append_rows(bc_cache, bc_mask, a_cache, a_mask)
    cache, mask = select_rows(cache, mask, [2, 0])  # a first, then b
    moved_next, _, _ = _step(model, [7, 9], [len(a), len(b) + 1], cache, mask)
    np.testing.assert_allclose(joined_logits[0], alone[0], atol=1e-5)
    np.testing.assert_allclose(moved_next[0], alone_next[0], atol=1e-4)
