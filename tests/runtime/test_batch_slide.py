"""Sliding past the window one row at a time: a text in a batch is the text made alone.

When one row of a batch reaches the model's window, only that row restarts from the
last half of its tokens; the other rows keep their cache as it is. Checked on both KV
layouts (the fused graphs' in-place "shared" buffers and optimum's "concat" cache), for
seeded sampling and greedy decoding (the serving engine's static batches:
tests/serving/test_static_slide.py).
"""

import numpy as np
import pytest

from tinygen import TextGenerator
from tinygen.decoding import BatchDecoding


@pytest.fixture(scope="module")
def fused_dirs(tiny_gpt2_dir, tiny_llama_dir, tmp_path_factory):
    from tinygen_trainer.export import export_model

    out = tmp_path_factory.mktemp("fused-slide")
    return {arch: export_model(src, out / arch, graph="fused")
            for arch, src in (("gpt2", tiny_gpt2_dir), ("llama", tiny_llama_dir))}


@pytest.fixture(scope="module",
                params=["shared-gpt2", "shared-llama", "concat-gpt2", "concat-llama"])
def gen(request, fused_dirs, optimum_gpt2_dir, optimum_llama_dir):
    kind, arch = request.param.split("-")
    folder = fused_dirs[arch] if kind == "shared" else \
        {"gpt2": optimum_gpt2_dir, "llama": optimum_llama_dir}[arch]
    generator = TextGenerator(folder, device="cpu")
    assert generator.manifest.kv_cache == kind
    return generator


def long_prompt(gen, short_of_window: int) -> list[int]:
    window = gen.manifest.context_window
    ids = gen.tokenizer.encode("Once upon a time there was a dog. " * 60)
    return ids[:window - short_of_window]


SAMPLING = [dict(seed=5), dict(do_sample=False)]


def alone(gen, prompts, options):
    """Each prompt generated on its own, with the seed it has in the batch."""
    texts = []
    for i, prompt in enumerate(prompts):
        extra = {"seed": options["seed"] + i} if "seed" in options else {}
        [text] = gen.generate(prompt, **{**options, **extra})
        texts.append(text)
    return texts


@pytest.mark.parametrize("sampling", SAMPLING, ids=["seeded", "greedy"])
def test_rows_that_never_reach_the_window_are_left_alone(gen, sampling):
    """The long prompt slides (twice); the short ones never reach the window, and their texts
    are the ones made alone: their cache was not rebuilt."""
    prompts = ["The dog", long_prompt(gen, 12), "To be, or not"]
    options = dict(sampling, max_new_tokens=100, stop_at_eos=False)
    batch = gen.generate(prompts, **options)
    assert [t.token_ids for t in batch] == [t.token_ids for t in alone(gen, prompts, options)]


@pytest.mark.parametrize("sampling", SAMPLING, ids=["seeded", "greedy"])
def test_rows_slide_each_at_their_own_time(gen, sampling):
    """Every row runs past the window, each at its own step and several times."""
    window = gen.manifest.context_window
    prompts = ["The dog", long_prompt(gen, 12), long_prompt(gen, 40)]
    options = dict(sampling, max_new_tokens=2 * window, stop_at_eos=False)
    batch = gen.generate(prompts, **options)
    assert [t.token_ids for t in batch] == [t.token_ids for t in alone(gen, prompts, options)]


def test_only_the_rows_at_the_window_restart_and_memory_stays_flat(gen):
    window, keep = gen.manifest.context_window, gen.manifest.context_window // 2
    prompts = [gen.tokenizer.encode("The dog"), long_prompt(gen, 3)]
    config = gen.defaults.merged(max_new_tokens=3 * window, stop_at_eos=False, do_sample=False)
    decoding = BatchDecoding(gen.model, gen.tokenizer, prompts, [None, None], config, 0)
    restarts = []  # per step, the rows that restarted
    while not decoding.done:
        before = list(decoding.next_position)
        decoding.step()
        if decoding.done:
            break
        after = decoding.next_position
        restarted = [row for row in (0, 1) if after[row] != before[row] + 1]
        assert all(after[row] == keep for row in restarted)  # from the last half of the window
        restarts.append(restarted)
        assert decoding.cache[0].shape()[2] <= window  # flat memory, on either layout
        assert decoding.mask.shape[1] <= window
    slid = [(step, rows) for step, rows in enumerate(restarts) if rows]
    assert slid[0] == (3, [1])  # the long row, at its fourth step; the short one steps on
    assert all(len(rows) == 1 for _, rows in slid)  # the rows slide at steps of their own
    assert {rows[0] for _, rows in slid} == {0, 1} and decoding.slides == len(slid) >= 5
    assert [c.token_ids for c in decoding.completions()] == \
        [t.token_ids for t in alone(gen, prompts, dict(do_sample=False, max_new_tokens=3 * window,
                                                       stop_at_eos=False))]


def test_a_finished_row_does_not_change_a_row_that_slides(gen):
    """Row 0 is done (it keeps stepping, its tokens ignored); row 1 slides past the window."""
    window = gen.manifest.context_window
    prompts = [long_prompt(gen, 1), long_prompt(gen, 20)]
    config = gen.defaults.merged(max_new_tokens=window, stop_at_eos=False, do_sample=False)
    decoding = BatchDecoding(gen.model, gen.tokenizer, prompts, [None, None], config, 0)
    decoding.rows[0].finish_reason = "eos"
    while not decoding.done:
        decoding.step()
        if decoding.slides:  # the finished row no longer holds a concat cache wide
            assert decoding.cache[0].shape()[2] <= window
    assert decoding.slides >= 2
    [want] = gen.generate(prompts[1], do_sample=False, max_new_tokens=window, stop_at_eos=False)
    assert tuple(decoding.rows[1].generated) == want.token_ids


def test_restart_rows_leaves_the_other_rows_cache_as_it_was(gen):
    """model.restart_rows: the restarted row's cache and logits are a prefill of its tokens
    alone; every other row's real keys and values are the same numbers as before."""
    model = gen.model
    prompts = [gen.tokenizer.encode(p) for p in ("The dog", "Once upon a time there was", "To be")]
    config = gen.defaults.merged(do_sample=False, max_new_tokens=20, stop_at_eos=False)
    decoding = BatchDecoding(model, gen.tokenizer, prompts, [None] * 3, config, 0)
    for _ in range(5):
        decoding.step()

    def rows_of(cache, mask):  # each row's real (unpadded) keys of layer 0, or the shared prefix
        keys = np.array(cache[0].numpy())
        if gen.manifest.kv_cache == "shared":
            return [keys[r, :, :int(mask[r].sum())] for r in range(len(mask))]
        return [keys[r][:, mask[r].astype(bool)] for r in range(len(mask))]

    before = rows_of(decoding.cache, decoding.mask)
    new = gen.tokenizer.encode("It read every book in the library")
    ids = np.array([new])
    logits, cache, mask = model.restart_rows(decoding.cache, decoding.mask.copy(), [1], ids,
                                             np.ones_like(ids), np.arange(len(new))[None])
    after = rows_of(cache, mask)
    for row in (0, 2):
        assert np.array_equal(after[row], before[row])
    [ref] = BatchDecoding(model, gen.tokenizer, [new], [None], config, 0).logits
    np.testing.assert_array_equal(logits[0], ref)
    fresh = BatchDecoding(model, gen.tokenizer, [new], [None], config, 0)
    np.testing.assert_array_equal(after[1], rows_of(fresh.cache, fresh.mask)[0])


def test_buffers_python_cannot_write_take_a_round_trip(gen, monkeypatch):
    """Shared buffers in device memory (CUDA) have no numpy arrays to write rows into:
    restart_rows copies them through the host and back in place. The same path on the CPU,
    with the arrays hidden, gives the same texts."""
    if gen.manifest.kv_cache != "shared":
        pytest.skip("the concat cache is rebuilt through numpy on every device")
    empty_cache = gen.model.empty_cache

    def without_arrays(batch, **options):
        cache = empty_cache(batch, **options)
        cache.arrays = None
        return cache

    monkeypatch.setattr(gen.model, "empty_cache", without_arrays)
    prompts = ["The dog", long_prompt(gen, 12), long_prompt(gen, 40)]
    options = dict(seed=5, max_new_tokens=gen.manifest.context_window, stop_at_eos=False)
    batch = gen.generate(prompts, **options)
    monkeypatch.undo()
    assert [t.token_ids for t in batch] == [t.token_ids for t in alone(gen, prompts, options)]


def test_the_embedded_model_keeps_a_batch_text_the_same():
    """The reported case: the default model (window 512, shared KV), a short prompt next to one
    of 500 tokens that slides; the short text is the one made alone."""
    gen = TextGenerator(device="cpu")
    long = gen.tokenizer.encode("Once upon a time there was a dog. " * 100)[:500]
    options = dict(max_new_tokens=120, stop_at_eos=False)
    batch = gen.generate(["The dog", long], seed=5, **options)
    [short] = gen.generate("The dog", seed=5, **options)
    [longer] = gen.generate(long, seed=6, **options)
    assert batch[0].token_ids == short.token_ids and batch[1].token_ids == longer.token_ids
