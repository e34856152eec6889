"""The runtime on fused graphs (kv_cache "shared"): SharedKVCausalLM under the decode loop.

Exact greedy parity with transformers, left-padded batches (repacked to the right
padding GroupQueryAttention wants), seeds across batch sizes, streaming, the sliding
window, and the cache updated in place.
"""

import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from tinygen import TextGenerator
from tinygen.decoding import BatchDecoding, left_pad
from tinygen.errors import ModelFormatError, TinygenError
from tinygen.shared_kv import SharedKVCausalLM

PROMPTS = ["Once upon a time", "The quick brown fox jumps over", "To be"]


def hf_greedy(source_dir, ids, steps):
    """transformers' greedy continuation of `ids`, cut at EOS (as tinygen's generate cuts it)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source_dir).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids)).long(),
                             do_sample=False, max_new_tokens=steps, use_cache=True,
                             pad_token_id=model.config.eos_token_id)
    tokens = out[0, len(ids):].tolist()
    eos = model.config.eos_token_id
    return tokens[:tokens.index(eos)] if eos in tokens else tokens


@pytest.fixture(scope="module")
def fused_dirs(tiny_gpt2_dir, tiny_llama_dir, tmp_path_factory):
    from tinygen_trainer.export import export_model

    out = tmp_path_factory.mktemp("fused")
    return {arch: export_model(src, out / arch, graph="fused")
            for arch, src in (("gpt2", tiny_gpt2_dir), ("llama", tiny_llama_dir))}


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def case(request, fused_dirs, tiny_gpt2_dir, tiny_llama_dir, optimum_gpt2_dir, optimum_llama_dir):
    """(generator on the fused export, transformers source dir, generator on optimum's graph)"""
    source, optimum = {"gpt2": (tiny_gpt2_dir, optimum_gpt2_dir),
                       "llama": (tiny_llama_dir, optimum_llama_dir)}[request.param]
    return (TextGenerator(fused_dirs[request.param], device="cpu"), source,
            TextGenerator(optimum, device="cpu"))


def test_the_runtime_picks_the_shared_kv_wrapper(case):
    gen, _, _ = case
    assert gen.manifest.kv_cache == "shared"
    assert isinstance(gen.model, SharedKVCausalLM)


def test_greedy_is_token_identical_to_transformers(case):
    gen, source, _ = case
    for prompt in PROMPTS:
        [out] = gen.generate(prompt, do_sample=False, max_new_tokens=40)
        assert list(out.token_ids) == hf_greedy(source, gen.tokenizer.encode(prompt), 40)


def test_left_padded_batch_is_token_identical_to_transformers(case):
    gen, source, _ = case
    prompts = PROMPTS + ["Once", "It read every book in the library, from the first page"]
    batch = gen.generate(prompts, do_sample=False, max_new_tokens=32)
    for prompt, out in zip(prompts, batch):
        assert list(out.token_ids) == hf_greedy(source, gen.tokenizer.encode(prompt), 32)


def test_last_position_logits_match_the_optimum_graph(case):
    """Prefill and a few steps of a left-padded batch: same numbers as optimum's graph."""
    gen, _, optimum = case
    ids = [gen.tokenizer.encode(p) for p in PROMPTS]
    config = gen.defaults.merged(do_sample=False, max_new_tokens=6, stop_at_eos=False)
    ours = BatchDecoding(gen.model, gen.tokenizer, ids, [None] * 3, config, 0)
    theirs = BatchDecoding(optimum.model, optimum.tokenizer, ids, [None] * 3, config, 0)
    for _ in range(5):
        np.testing.assert_allclose(ours.logits, theirs.logits, atol=2e-4, rtol=1e-4)
        ours.step()
        theirs.step()


def test_seeded_text_is_the_same_in_any_batch(case):
    gen, _, _ = case
    batch = gen.generate(PROMPTS[:2], n=4, seed=7, max_new_tokens=20, batch_size=8)
    smaller = gen.generate(PROMPTS[:2], n=4, seed=7, max_new_tokens=20, batch_size=3)
    assert [t.token_ids for t in batch] == [t.token_ids for t in smaller]
    for index in (0, 6):
        [alone] = gen.generate(PROMPTS[index // 4], seed=7 + index, max_new_tokens=20)
        assert alone.token_ids == batch[index].token_ids


def test_stream_yields_what_generate_returns(case):
    gen, _, _ = case
    for seed in range(3):
        pieces = list(gen.stream("café 🙂", seed=seed, max_new_tokens=30))
        [whole] = gen.generate("café 🙂", seed=seed, max_new_tokens=30)
        assert "".join(pieces) == str(whole)


def test_sliding_past_the_window_matches_the_optimum_graph(case):
    gen, _, optimum = case
    window = gen.manifest.context_window
    ids = gen.tokenizer.encode("Once upon a time " * 40)[: window - 5]
    config = gen.defaults.merged(max_new_tokens=3 * window, stop_at_eos=False, do_sample=False)
    decoding = BatchDecoding(gen.model, gen.tokenizer, [ids, ids[:20]], [None, None], config, 0)
    while not decoding.done:
        decoding.step()
        assert all(v.shape()[2] == window for v in decoding.cache)  # flat memory
    assert decoding.slides >= 5
    reference = BatchDecoding(optimum.model, optimum.tokenizer, [ids, ids[:20]], [None, None],
                              config, 0)
    while not reference.done:
        reference.step()
    assert [c.token_ids for c in decoding.completions()] == \
        [c.token_ids for c in reference.completions()]


def test_the_cache_is_updated_in_place(case):
    gen, _, _ = case
    model, m = gen.model, gen.manifest
    ids = np.array([gen.tokenizer.encode("To be, or not")], dtype=np.int64)
    cache = model.empty_cache(1)
    pointers = [v.data_ptr() for v in cache]
    assert cache[0].shape() == [1, m.num_kv_heads, m.context_window, m.head_size]
    logits, same = model.forward(ids, np.ones_like(ids), np.arange(ids.shape[1])[None], cache)
    assert same is cache and [v.data_ptr() for v in same] == pointers
    assert all(isinstance(v, ort.OrtValue) for v in same)
    assert logits.shape == (1, 1, m.vocab_size)
    first = logits.copy()
    n = ids.shape[1]
    step, _ = model.forward(ids[:, :1], np.ones((1, n + 1), np.int64), np.array([[n]]), cache)
    assert step is logits  # the logits buffer is reused too
    assert not np.array_equal(first, step)
    keys = cache[0].numpy()
    assert np.abs(keys[0, :, : n + 1]).sum(axis=-1).all()  # positions 0..n written...
    assert not keys[0, :, n + 1:].any()  # ...and nothing beyond


def test_a_step_equals_a_forward_with_the_whole_mask(case):
    """`step` counts each row's length itself instead of reading the mask: 20 steps of a
    left-padded 2-row batch give the logits and inputs `forward` gives from the mask, on a
    twin cache."""
    gen, _, _ = case
    model = gen.model
    ids, mask, positions = left_pad([gen.tokenizer.encode(p) for p in PROMPTS[:2]], 0)
    stepped_cache, twin = model.empty_cache(2), model.empty_cache(2)
    model.forward(ids, mask, positions, stepped_cache)
    model.forward(ids, mask, positions, twin)
    rng = np.random.default_rng(0)
    for _ in range(20):
        tokens = rng.integers(0, gen.manifest.vocab_size, size=2)
        positions = positions[:, -1:] + 1
        stepped, _ = model.step(tokens, positions[:, 0].tolist(), None, stepped_cache)
        mask = np.concatenate([mask, np.ones((2, 1), np.int64)], axis=1)
        expected, _ = model.forward(tokens[:, None], mask, positions, twin)
        np.testing.assert_allclose(stepped, expected[:, -1, :], atol=1e-5)
        # ...and binds the same inputs (seqlens_k, total_sequence_length, positions, ids)
        assert twin.inputs.keys() == stepped_cache.inputs.keys()
        for name, (array, _) in twin.inputs.items():
            assert np.array_equal(stepped_cache.inputs[name][0], array), name


def test_a_step_needs_a_filled_cache(case):
    gen, _, _ = case
    with pytest.raises(TinygenError, match="a decode step needs a cache that a forward has filled"):
        gen.model.step(np.array([1]), [0], None, gen.model.empty_cache(1))


def test_a_finished_row_past_the_window_leaves_the_others_alone(case):
    """The decode loop keeps stepping finished rows; one may outrun the buffer."""
    gen, _, _ = case
    model, window = gen.model, gen.manifest.context_window
    ids = gen.tokenizer.encode("Once upon a time " * 40)[: window - 1]
    short = gen.tokenizer.encode("To be")
    config = gen.defaults.merged(do_sample=False, max_new_tokens=4, stop_at_eos=False)
    decoding = BatchDecoding(model, gen.tokenizer, [ids, short], [None, None], config, 0)
    decoding.rows[0].finish_reason = "eos"  # row 0 is done; it keeps its slot and its position
    for _ in range(3):
        decoding.step()  # row 0's mask runs past the window: its writes stay in the last slot
    [alone] = gen.generate(short, do_sample=False, max_new_tokens=3, stop_at_eos=False)
    assert decoding.rows[1].generated == list(alone.token_ids)


def test_a_manifest_naming_a_missing_input_is_refused(fused_dirs, tmp_path):
    import json
    import shutil

    target = tmp_path / "model"
    shutil.copytree(fused_dirs["gpt2"], target)
    data = json.loads((target / "tinygen.json").read_text())
    data["inputs"]["seqlens_k"] = "lengths"
    (target / "tinygen.json").write_text(json.dumps(data))
    with pytest.raises(ModelFormatError, match="no input 'lengths' that a shared-KV model needs"):
        TextGenerator(target, device="cpu")


def test_runtime_never_imports_torch_on_fused_models(fused_dirs):
    code = (
        "import sys\n"
        "from tinygen import TextGenerator\n"
        f"g = TextGenerator({str(fused_dirs['llama'])!r})\n"
        "print(len(g.generate(['Once', 'To be or'], n=2, max_new_tokens=5)))\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'optimum') if m in sys.modules)\n"
        "print('heavy:', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "4\nheavy: []" in out


def test_the_mask_outgrows_its_buffer_and_keeps_the_padding(case):
    """100 steps from a 2-row batch: the step-by-step mask (a buffer that starts at the
    prompt's width and grows) still marks each row's padding, and the logits equal a fresh
    prefill of each row's text."""
    gen, _, _ = case
    ids = [gen.tokenizer.encode("To be"), gen.tokenizer.encode(PROMPTS[1])]
    config = gen.defaults.merged(do_sample=False, max_new_tokens=110, stop_at_eos=False)
    decoding = BatchDecoding(gen.model, gen.tokenizer, ids, [None, None], config, 0)
    width = max(map(len, ids)) + 100
    assert width < gen.manifest.context_window
    for _ in range(100):
        decoding.step()
    expected = np.ones((2, width), np.int64)
    expected[0, :width - len(ids[0]) - 100] = 0
    assert np.array_equal(decoding.mask, expected)
    again = BatchDecoding(gen.model, gen.tokenizer, [r.history for r in decoding.rows],
                          [None, None], config, 0)
    np.testing.assert_allclose(decoding.logits, again.logits, atol=1e-4)
