"""The runtime on tiny random models: exact greedy parity, seeds, batching, streaming, stops."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from tinygen import Completion, TextGenerator
from tinygen.onnx_model import OnnxCausalLM

PROMPTS = ["Once upon a time", "The quick brown fox jumps over", "To be"]


def hf_greedy(source_dir, ids, steps):
    model = AutoModelForCausalLM.from_pretrained(source_dir).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             do_sample=False, max_new_tokens=steps, use_cache=True,
                             pad_token_id=model.config.eos_token_id)
    tokens = out[0, len(ids):].tolist()
    eos = model.config.eos_token_id
    return tokens[:tokens.index(eos)] if eos in tokens else tokens


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def pair(request, optimum_gpt2_dir, optimum_llama_dir, tiny_gpt2_dir, tiny_llama_dir):
    """(generator on the optimum export, transformers source dir)"""
    exported, source = {"gpt2": (optimum_gpt2_dir, tiny_gpt2_dir),
                        "llama": (optimum_llama_dir, tiny_llama_dir)}[request.param]
    return TextGenerator(exported, device="cpu"), source


def test_greedy_is_token_identical_to_transformers(pair):
    gen, source = pair
    for prompt in PROMPTS:
        ids = gen.tokenizer.encode(prompt)
        [out] = gen.generate(prompt, do_sample=False, max_new_tokens=40)
        expected = hf_greedy(source, ids, 40)
        assert list(out.token_ids) == expected
        assert out.finish_reason == ("length" if len(expected) == 40 else "eos")
        assert out.seed is None


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_greedy_parity_on_tinygen_exports(arch, request):
    """The same parity through `tinygen-train export`'s directories (with tinygen.json)."""
    exported = request.getfixturevalue(f"exported_{arch}_dir")
    source = request.getfixturevalue(f"tiny_{arch}_dir")
    gen = TextGenerator(exported, device="cpu")
    assert (exported / "tinygen.json").is_file()
    prompts = PROMPTS * 2  # a left-padded batch of 6
    batch = gen.generate(prompts, do_sample=False, max_new_tokens=32)
    for prompt, out in zip(prompts, batch):
        assert list(out.token_ids) == hf_greedy(source, gen.tokenizer.encode(prompt), 32)


def test_left_padded_batch_greedy_equals_each_alone(pair):
    gen, _ = pair
    batch = gen.generate(PROMPTS, do_sample=False, max_new_tokens=20, stop_at_eos=False)
    for prompt, joint in zip(PROMPTS, batch):
        [alone] = gen.generate(prompt, do_sample=False, max_new_tokens=20, stop_at_eos=False)
        assert joint.token_ids == alone.token_ids


def test_seeded_text_in_a_batch_of_16_equals_the_text_alone(pair):
    gen, _ = pair
    batch = gen.generate(PROMPTS[:2], n=8, seed=100, max_new_tokens=24, batch_size=16)
    assert len(batch) == 16 and [t.seed for t in batch] == list(range(100, 116))
    for index in (0, 5, 11, 15):
        prompt = PROMPTS[index // 8]
        [alone] = gen.generate(prompt, seed=100 + index, max_new_tokens=24)
        assert alone.token_ids == batch[index].token_ids
        assert str(alone) == str(batch[index])
    assert len({t.token_ids for t in batch}) > 8  # different seeds, different texts


def test_no_seed_draws_one_and_reports_it(pair):
    gen, _ = pair
    [first] = gen.generate("Once", max_new_tokens=16)
    assert isinstance(first, Completion) and isinstance(first, str)
    assert isinstance(first.seed, int)
    [again] = gen.generate("Once", max_new_tokens=16, seed=first.seed)
    assert again.token_ids == first.token_ids


def test_drawn_seeds_survive_javascript_numbers():
    """The playground (JSON.parse) shows a seed rounded to a double; it must still remake the text."""
    from tinygen.sampling import draw_seed

    seeds = [draw_seed() for _ in range(2000)]
    assert all(float(s + 1000) == s + 1000 for s in seeds)  # seed + i, exact as a double
    assert len(set(seeds)) == len(seeds)


def test_temperature_zero_is_greedy(pair):
    gen, _ = pair
    [a] = gen.generate("To be", temperature=0, max_new_tokens=12)
    [b] = gen.generate("To be", do_sample=False, max_new_tokens=12)
    assert a.token_ids == b.token_ids


def test_stream_yields_the_same_text_as_generate_in_whole_characters(pair):
    gen, _ = pair
    for seed in range(5):
        stream = gen.stream("café 🙂", seed=seed, max_new_tokens=30)
        pieces = list(stream)
        [whole] = gen.generate("café 🙂", seed=seed, max_new_tokens=30)
        assert "".join(pieces) == str(whole)
        assert stream.seed == seed and stream.completion.token_ids == whole.token_ids
        for piece in pieces:
            piece.encode("utf-8")  # a split surrogate or half a character would fail here
            assert piece


def test_stop_string_ends_the_text_and_is_never_streamed(pair):
    gen, _ = pair
    [free] = gen.generate("Once upon", seed=7, max_new_tokens=40, stop_at_eos=False)
    text = str(free)
    assert len(text) > 6
    stop = text[3:6]  # a string that certainly appears
    [cut] = gen.generate("Once upon", seed=7, max_new_tokens=40, stop=stop, stop_at_eos=False)
    assert str(cut) == text[:text.find(stop)] and cut.finish_reason == "stop"
    streamed = "".join(gen.stream("Once upon", seed=7, max_new_tokens=40, stop=[stop], stop_at_eos=False))
    assert streamed == str(cut)


def test_generation_stops_at_eos(pair):
    gen, _ = pair
    eos = gen.manifest.eos_token_ids[0]
    # Find a seed whose free run emits EOS, then check generation ends right there.
    for seed in range(200):
        [free] = gen.generate("To be", seed=seed, max_new_tokens=30, stop_at_eos=False, temperature=2.0)
        if eos in free.token_ids:
            [stopped] = gen.generate("To be", seed=seed, max_new_tokens=30, temperature=2.0)
            assert stopped.finish_reason == "eos"
            assert stopped.token_ids == free.token_ids[:free.token_ids.index(eos)]
            return
    pytest.skip("no seed produced EOS on this random model")


def test_without_sliding_generation_stops_at_the_window(pair):
    gen, _ = pair
    window = gen.manifest.context_window
    ids = gen.tokenizer.encode("Once upon a time " * 40)[: window - 5]
    [out] = gen.generate(ids, do_sample=False, max_new_tokens=50, stop_at_eos=False, slide_window=False)
    assert out.finish_reason == "window" and len(out.token_ids) == 5


def test_generation_slides_past_the_window_with_flat_memory(pair):
    from tinygen.decoding import BatchDecoding

    gen, _ = pair
    window = gen.manifest.context_window
    ids = gen.tokenizer.encode("Once upon a time " * 40)[: window - 5]
    config = gen.defaults.merged(max_new_tokens=3 * window, stop_at_eos=False, do_sample=False)
    decoding = BatchDecoding(gen.model, gen.tokenizer, [ids, ids[:20]], [None, None], config, 0)
    longest_cache = 0
    while not decoding.done:
        decoding.step()
        longest_cache = max(longest_cache, decoding.cache[0].shape()[2])
    [a, b] = decoding.completions()
    assert len(a.token_ids) == len(b.token_ids) == 3 * window and a.finish_reason == "length"
    assert decoding.slides >= 5 and longest_cache <= window  # the cache never outgrows the window
    # Up to the first slide the text is what a run without sliding gives.
    [plain] = gen.generate(ids, do_sample=False, max_new_tokens=5, stop_at_eos=False, slide_window=False)
    assert a.token_ids[:5] == plain.token_ids


def test_token_id_prompt_and_empty_prompt(pair):
    gen, _ = pair
    ids = gen.tokenizer.encode("To be")
    [a] = gen.generate(ids, do_sample=False, max_new_tokens=8)
    [b] = gen.generate("To be", do_sample=False, max_new_tokens=8)
    assert a.token_ids == b.token_ids
    [c] = gen.generate("", seed=1, max_new_tokens=8)
    assert len(c.token_ids) > 0


def test_kv_cache_stays_in_onnxruntime(pair):
    import onnxruntime as ort

    gen, _ = pair
    model: OnnxCausalLM = gen.model
    ids = np.array([gen.tokenizer.encode("To be")], dtype=np.int64)
    mask = np.ones_like(ids)
    logits, cache = model.forward(ids, mask, np.arange(ids.shape[1])[None], model.empty_cache(1))
    assert logits.shape == (1, ids.shape[1], gen.manifest.vocab_size)
    assert cache and all(isinstance(v, ort.OrtValue) for v in cache)
    assert cache[0].shape() == [1, gen.manifest.num_kv_heads, ids.shape[1], gen.manifest.head_size]


def test_runtime_never_imports_torch(optimum_gpt2_dir):
    code = (
        "import sys\n"
        "from tinygen import TextGenerator\n"
        f"g = TextGenerator({str(optimum_gpt2_dir)!r})\n"
        "print(len(g.generate('Once', n=2, max_new_tokens=5)))\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'optimum') if m in sys.modules)\n"
        "print('heavy:', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "2\nheavy: []" in out


@pytest.mark.parametrize("text,stops,held", [
    ("Once upon a ti", ("time",), 2), ("Once upon a ti", ("a time", "time"), 4),
    ("abcab", ("abcabd",), 5), ("aaaa", ("aab",), 2), ("xyz", ("abc",), 0),
    ("a", ("abc", "a b"), 1), ("", ("abc",), 0), ("the end", ("end.", "he end?"), 6),
])
def test_the_start_of_a_stop_string_is_held_back(text, stops, held):
    """The longest end of the text that begins a stop string, as every length tried in turn."""
    from tinygen.decoding import _partial_stop

    assert _partial_stop(text, stops) == held
    assert held == max((k for s in stops for k in range(min(len(s) - 1, len(text)) + 1)
                        if text.endswith(s[:k])), default=0)


@pytest.mark.parametrize("show", [True, False])
def test_a_stop_string_is_found_across_the_pieces_of_text(show):
    """The search for stop strings covers only where one could end in each step's new text:
    still found when it began in an earlier step, and at its first place."""
    from tinygen.config import GenerationConfig
    from tinygen.decoding import SequenceState

    class Pieces:  # a decoder showing these texts, one a token
        def __init__(self, texts):
            self.texts = iter(texts)

        def step(self, token):
            return next(self.texts)

        def finish(self):
            return ""

    texts = ["ab", "cd", "x", "efg", "hef", "gh"]
    for stops, want in ((("bcdx",), "a"), (("dxe", "fgh"), "abc"), (("efgh",), "abcdx"),
                        (("gh",), "abcdxef"), (("zz",), "abcdxefghefgh")):
        row = SequenceState([1], 1, Pieces(texts), GenerationConfig(max_new_tokens=6, stop=stops),
                            frozenset(), 100)
        for position in range(6):
            row.advance(5, position, show=show)
            if row.finish_reason:
                break
        assert row.completion() == want
        assert row.completion().finish_reason == ("length" if want == "abcdxefghefgh" else "stop")


@pytest.mark.parametrize("show", [True, False])
@pytest.mark.parametrize("stop,kept", [("dxe", 2), ("bcd", 1), ("ab", 0), ("x", 2), ("fgh", 4), ("zz", 6)])
def test_token_probs_are_those_of_the_tokens_in_the_text(show, stop, kept):
    """A text cut at a stop string keeps the probabilities of its tokens, the one the cut falls
    in among them, and not those of the stop string's own tokens; streamed pieces carry the
    same ones, each with the piece its text begins in."""
    from tinygen.config import GenerationConfig
    from tinygen.decoding import SequenceState

    texts = ["ab", "cd", "x", "efg", "hef", "gh"]
    decoder = type("Pieces", (), {"step": lambda self, t: next(steps), "finish": lambda self: ""})
    steps = iter(texts)
    row = SequenceState([1], 1, decoder(), GenerationConfig(max_new_tokens=6, stop=(stop,), top_n=0),
                        frozenset(), 100)
    pieces = []
    for position, token in enumerate(range(10, 16)):
        row.record_probs(np.full(20, 0.05), token, str)
        pieces.append(row.advance(token, position, show=show))
        if row.finish_reason:
            break
    done = row.completion()
    assert [tp.token_id for tp in done.token_probs] == list(range(10, 10 + kept))
    assert len(done.token_ids) == len(pieces)  # every generated token still counts
    if show:
        assert [tp for piece in pieces for tp in piece.token_probs] == list(done.token_probs)
        shown = 0
        for piece in pieces:  # a piece's tokens begin in its own text
            for tp in piece.token_probs:
                begins = sum(len(texts[t - 10]) for t in range(10, tp.token_id))
                assert shown <= begins < shown + len(piece) or not piece and begins == shown
            shown += len(piece)
