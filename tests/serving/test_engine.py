"""The engine: continuous batching keeps every text equal to TextGenerator.generate with its seed."""

import asyncio

import pytest

from tinygen import TinygenError
from tinygen.serving.engine import Engine, EngineBusy, GenerationFailed, SequenceDone, SequencePiece

PROMPTS = ["Once upon a time", "The quick brown fox jumps over", "To be", "It read every book"]
# Mixed settings in one batch: each row must get its own processors and sampler.
SETTINGS = [
    dict(temperature=0.8),
    dict(top_p=0.9, temperature=1.2),
    dict(do_sample=False),
    dict(top_k=20, repetition_penalty=1.3),
    dict(min_p=0.05, no_repeat_ngram_size=2),
    dict(typical_p=0.9),
]


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 60))


@pytest.fixture(params=["gpt2", "llama"])
def gen(request, gpt2_gen, llama_gen):
    return {"gpt2": gpt2_gen, "llama": llama_gen}[request.param]


def test_staggered_requests_with_mixed_settings_equal_generate_alone(gen):
    """Requests arrive while others decode, with different settings; some run past the window (128)."""
    engine = Engine(gen, max_batch=8)
    jobs = [(PROMPTS[i % 4], 100 + i, dict(SETTINGS[i % 6], max_new_tokens=20 + 23 * i, stop_at_eos=False))
            for i in range(10)]

    async def main():
        handles = []
        for prompt, seed, options in jobs:
            handles.append(engine.submit(prompt, seed=seed, **options))
            await asyncio.sleep(0.01)
        return [await h.completions() for h in handles]

    try:
        results = run(main())
    finally:
        engine.close()
    for (prompt, seed, options), [got] in zip(jobs, results):
        [want] = gen.generate(prompt, seed=seed, **options)
        assert got.token_ids == want.token_ids and str(got) == str(want)
        assert got.seed == want.seed and got.finish_reason == want.finish_reason
    assert engine.stats.most_requests_in_a_step > 1  # they shared decode steps
    assert engine.stats.regroups > 0  # and joined or left a running batch
    assert engine.stats.busiest_step <= 8


def test_n_and_prompt_lists_take_seeds_as_generate_does(gpt2_gen):
    engine = Engine(gpt2_gen)

    async def main():
        return await engine.submit(PROMPTS[:2], n=3, seed=10, max_new_tokens=12).completions()

    try:
        got = run(main())
    finally:
        engine.close()
    want = gpt2_gen.generate(PROMPTS[:2], n=3, seed=10, max_new_tokens=12)
    assert [t.seed for t in got] == list(range(10, 16))
    assert [t.token_ids for t in got] == [t.token_ids for t in want]


def test_a_request_joins_a_running_batch_at_the_next_step(gpt2_gen):
    engine = Engine(gpt2_gen)

    async def main():
        long = engine.submit("Once upon a time", seed=1, max_new_tokens=120, stop_at_eos=False)
        for _ in range(5):
            assert isinstance(await long.next_event(), SequencePiece)
        short = engine.submit("To be", seed=2, max_new_tokens=10, stop_at_eos=False)
        [short_text] = await short.completions()
        long_running = not long.done
        [long_text] = await long.completions()
        return short_text, long_running, long_text

    try:
        short_text, long_running, long_text = run(main())
    finally:
        engine.close()
    assert long_running  # the short one joined and left while the long one went on
    assert engine.stats.most_requests_in_a_step == 2
    assert short_text.token_ids == gpt2_gen.generate("To be", seed=2, max_new_tokens=10,
                                                     stop_at_eos=False)[0].token_ids
    assert long_text.token_ids == gpt2_gen.generate("Once upon a time", seed=1, max_new_tokens=120,
                                                    stop_at_eos=False)[0].token_ids


def test_stop_strings_and_probabilities_match_generate(gpt2_gen):
    engine = Engine(gpt2_gen)
    options = dict(seed=4, max_new_tokens=40, stop=["e"], return_probs=True, top_n=3)

    async def main():
        pieces, done = [], None
        handle = engine.submit("Once upon a time", **options)
        async for event in handle.events():
            if isinstance(event, SequencePiece):
                pieces.append(event.piece)
            else:
                done = event
        return pieces, done

    try:
        pieces, done = run(main())
    finally:
        engine.close()
    [want] = gpt2_gen.generate("Once upon a time", **options)
    assert isinstance(done, SequenceDone) and str(done.completion) == str(want)
    assert "".join(pieces) == str(want) and "e" not in "".join(pieces)
    assert done.completion.finish_reason == want.finish_reason
    got_probs = [tp for p in pieces for tp in p.token_probs]
    assert [tp.token_id for tp in got_probs] == [tp.token_id for tp in want.token_probs]
    assert [tp.prob for tp in got_probs] == pytest.approx([tp.prob for tp in want.token_probs], rel=1e-4)


def test_cancel_frees_the_rows_at_the_next_step(gpt2_gen, eventually):
    engine = Engine(gpt2_gen, max_batch=1, max_waiting=1)

    async def main():
        handle = engine.submit("Once upon a time", seed=1, max_new_tokens=4000, stop_at_eos=False)
        await handle.next_event()
        waiting = engine.submit("To be", seed=3, max_new_tokens=5)
        assert engine.waiting == 1
        handle.cancel()
        assert await handle.next_event() is None
        [text] = await waiting.completions()  # it got the slot
        return text

    try:
        text = run(main())
        assert eventually(lambda: engine.active == 0, 2)
    finally:
        engine.close()
    assert engine.stats.cancelled == 1
    assert text.token_ids == gpt2_gen.generate("To be", seed=3, max_new_tokens=5)[0].token_ids


def test_a_full_queue_is_refused_and_too_many_sequences_are_a_user_error(gpt2_gen):
    engine = Engine(gpt2_gen, max_batch=2, max_waiting=1)

    async def main():
        first = engine.submit("Once", n=2, seed=1, max_new_tokens=4000, stop_at_eos=False)
        await first.next_event()
        engine.submit("To be", seed=1)  # waits: the batch is full
        with pytest.raises(EngineBusy, match="batch is full and 1 request is already waiting"):
            engine.submit("To be", seed=2)
        with pytest.raises(TinygenError, match="3 sequences asked for .* at most 2 at once"):
            engine.submit("To be", n=3)
        with pytest.raises(TinygenError, match="top_p must be in"):
            engine.submit("To be", top_p=1.5)
        first.cancel()

    try:
        run(main())
    finally:
        engine.close()


def test_a_full_queue_in_static_batches_says_a_batch_is_running(gpt2_gen):
    """The running batch has room (one row of two), but static batches take no one in."""
    engine = Engine(gpt2_gen, max_batch=2, max_waiting=1, continuous=False)

    async def main():
        first = engine.submit("Once", seed=1, max_new_tokens=4000, stop_at_eos=False)
        await first.next_event()
        engine.submit("To be", seed=1)  # waits for the batch to end
        with pytest.raises(EngineBusy, match="^a batch is running .* and 1 request is already "
                                             "waiting for a place; try again shortly$"):
            engine.submit("To be", seed=2)
        first.cancel()

    try:
        run(main())
    finally:
        engine.close()


def test_static_batches_when_rows_cannot_move(gpt2_gen):
    """continuous=False (what a "shared" KV layout gets): requests start together, others wait."""
    engine = Engine(gpt2_gen, continuous=False)
    options = dict(max_new_tokens=30, stop_at_eos=False)

    async def main():
        a = engine.submit("Once upon a time", seed=1, top_p=0.8, **options)
        b = engine.submit("To be", seed=2, temperature=0.5, **options)
        await a.next_event()
        c = engine.submit("The quick brown fox", seed=3, **options)  # arrives mid-batch: waits
        return [await a.completions(), await b.completions(), await c.completions()]

    try:
        [a], [b], [c] = run(main())
    finally:
        engine.close()
    assert a.token_ids == gpt2_gen.generate("Once upon a time", seed=1, top_p=0.8, **options)[0].token_ids
    assert b.token_ids == gpt2_gen.generate("To be", seed=2, temperature=0.5, **options)[0].token_ids
    assert c.token_ids == gpt2_gen.generate("The quick brown fox", seed=3, **options)[0].token_ids
    # c never shared a step with a and b: it started once their batch was done.
    assert engine.stats.most_requests_in_a_step == 2 and engine.stats.regroups == 0


def test_the_shared_kv_layout_falls_back_to_static_batches(exported_gpt2_dir):
    from tinygen import TextGenerator

    gen = TextGenerator(exported_gpt2_dir, device="cpu")
    engine = Engine(gen)
    assert engine.continuous == (gen.manifest.kv_cache == "concat")

    async def main():
        handles = [engine.submit(p, seed=5 + i, max_new_tokens=16) for i, p in enumerate(PROMPTS)]
        return [await h.completions() for h in handles]

    try:
        results = run(main())
    finally:
        engine.close()
    for i, (prompt, [got]) in enumerate(zip(PROMPTS, results)):
        assert got.token_ids == gen.generate(prompt, seed=5 + i, max_new_tokens=16)[0].token_ids


class _FailOnce:
    """The model, except that its next forward raises."""

    def __init__(self, model):
        self._model, self.armed = model, True

    def __getattr__(self, name):
        return getattr(self._model, name)

    def forward(self, *args):
        if self.armed:
            self.armed = False
            raise RuntimeError("boom")
        return self._model.forward(*args)


def test_a_failing_step_fails_its_requests_and_the_engine_goes_on(gpt2_gen):
    engine = Engine(gpt2_gen)
    engine.model = _FailOnce(gpt2_gen.model)

    async def main():
        with pytest.raises(GenerationFailed, match="RuntimeError: boom"):
            await engine.submit("Once", seed=1, max_new_tokens=5).completions()
        return await engine.submit("Once", seed=1, max_new_tokens=5).completions()

    try:
        [text] = run(main())
    finally:
        engine.close()
    assert text.token_ids == gpt2_gen.generate("Once", seed=1, max_new_tokens=5)[0].token_ids


def test_close_fails_what_is_still_running(gpt2_gen):
    engine = Engine(gpt2_gen)

    async def main():
        handle = engine.submit("Once", seed=1, max_new_tokens=4000, stop_at_eos=False)
        await handle.next_event()
        await asyncio.get_running_loop().run_in_executor(None, engine.close)
        with pytest.raises(GenerationFailed, match="shutting down"):
            await handle.completions()
        with pytest.raises(GenerationFailed, match="shutting down"):
            engine.submit("Once")

    run(main())


@pytest.mark.parametrize("do_sample", [True, False])
def test_a_request_left_with_no_token_fails_alone(gen, do_sample):
    """Bans that empty one request's distribution mid-text fail that request with the
    one-line reason; the request decoding beside it finishes as generate makes it."""
    engine = Engine(gen, max_batch=8)
    others = [i for i in range(gen.manifest.vocab_size) if i != 42]  # 42 only, and never twice

    async def main():
        bad = engine.submit("Once", seed=1, exclude_ids=others, no_repeat_ngram_size=1,
                            max_new_tokens=4, do_sample=do_sample)
        good = engine.submit("Once upon", seed=2, max_new_tokens=12, stop_at_eos=False,
                             do_sample=do_sample)
        with pytest.raises(GenerationFailed, match="no token is left to sample"):
            await bad.completions()
        return await good.completions()

    try:
        [got] = run(main())
    finally:
        engine.close()
    [want] = gen.generate("Once upon", seed=2, max_new_tokens=12, stop_at_eos=False, do_sample=do_sample)
    assert got.token_ids == want.token_ids


def test_no_token_left_but_the_end_min_tokens_holds_back_says_so_in_the_apis_names(gpt2_gen):
    """Every token excluded but EOS, which min_new_tokens holds back: the failure names it, and
    the API's reply names it as a request does (min_tokens)."""
    from tinygen.serving.openai_api import failure_error

    engine = Engine(gpt2_gen)
    [eos] = gpt2_gen.manifest.eos_token_ids[:1]
    others = [i for i in range(gpt2_gen.manifest.vocab_size) if i != eos]

    async def main():
        handle = engine.submit("Once", seed=1, exclude_ids=others, min_new_tokens=1, max_new_tokens=3)
        with pytest.raises(GenerationFailed) as info:
            await handle.completions()
        return info.value

    try:
        failure = run(main())
    finally:
        engine.close()
    assert failure.status == 400 and "min_new_tokens (1) holds back the end of the text" in str(failure)
    error = failure_error(failure)
    assert error.status == 400 and error.message == (
        "no token is left to sample: the exclusions, logit bias and repetition bans remove every "
        "token, and min_tokens (1) holds back the end of the text; allow more tokens, or lower min_tokens")


def test_nan_scores_fail_as_the_servers_fault_not_the_requests(gpt2_gen, monkeypatch):
    """A model that computes NaN logits (damaged weights) fails its request with a 500 that says
    so, not a 400 blaming the request's bans."""
    import numpy as np

    engine = Engine(gpt2_gen)
    monkeypatch.setattr(engine, "_chain", lambda config, suppress: [
        lambda logits, history: np.full_like(logits, np.nan)])

    async def main():
        with pytest.raises(GenerationFailed, match="^the model's next-token scores are not "
                                                   "numbers") as failed:
            await engine.submit("Once", seed=1, max_new_tokens=4).completions()
        return failed.value

    try:
        assert run(main()).status == 500
    finally:
        engine.close()


@pytest.mark.parametrize("model", ["gpt2", "embedded"], ids=["continuous", "static"])
def test_a_request_memory_cannot_take_fails_alone_and_one_that_fits_runs(request, model,
                                                                          monkeypatch):
    """The engine makes a batch's buffers too: a request whose rows the memory available cannot
    hold (batch_memory's lower bound) fails with 503, where it had the server killed; the next,
    which fits, is served as generate serves it."""
    import tinygen.batch_memory as batch_memory
    from tinygen import TextGenerator

    gen = request.getfixturevalue("gpt2_gen") if model == "gpt2" else TextGenerator(device="cpu")
    ids = gen.prompts.encode("Once")[0]
    each = batch_memory.row_bytes(gen.model, [len(ids)], 1)
    monkeypatch.setattr(batch_memory, "available_memory", lambda: 2 * each + each // 2)
    engine = Engine(gen, max_batch=8)

    async def main():
        with pytest.raises(GenerationFailed, match=r"^the server has no memory for this request "
                                                   r"now: 4 sequences starting together need at "
                                                   r"least .*\(at most 2 fit\); try again shortly, "
                                                   r"or ask for fewer$") as info:
            await engine.submit("Once", n=4, seed=1, max_new_tokens=5).completions()
        assert info.value.status == 503
        return await engine.submit("Once", n=2, seed=1, max_new_tokens=5).completions()

    try:
        texts = run(main())
    finally:
        engine.close()
    assert [t.token_ids for t in texts] == \
        [t.token_ids for t in gen.generate("Once", n=2, seed=1, max_new_tokens=5)]
