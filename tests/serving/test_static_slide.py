"""Static batches (what a shared-KV model is served with) slide one row at a time: a request
that runs past the window does not change the texts of the requests decoding beside it."""

import asyncio

import pytest

from tinygen import TextGenerator
from tinygen.serving.engine import Engine


@pytest.fixture(scope="module")
def fused_gpt2(tiny_gpt2_dir, tmp_path_factory) -> TextGenerator:
    from tinygen_trainer.export import export_model

    folder = export_model(tiny_gpt2_dir, tmp_path_factory.mktemp("fused-static") / "gpt2",
                          graph="fused")
    return TextGenerator(folder, device="cpu")


@pytest.mark.parametrize("kind", ["shared", "concat"])
def test_static_batches_slide_rows_on_their_own(kind, fused_gpt2, gpt2_gen):
    gen = fused_gpt2 if kind == "shared" else gpt2_gen
    assert gen.manifest.kv_cache == kind
    engine = Engine(gen, continuous=False)
    window = gen.manifest.context_window
    long = gen.tokenizer.encode("Once upon a time there was a dog. " * 60)
    jobs = [("The dog", 11, dict(max_new_tokens=100)),  # never reaches the window
            (long[:window - 12], 12, dict(max_new_tokens=100)),  # slides twice
            (long[:window - 30], 13, dict(max_new_tokens=2 * window, do_sample=False)),
            ("To be", 14, dict(max_new_tokens=2 * window, temperature=0.7))]

    async def main():
        with engine._lock:  # all four wait together, so they start as one static batch
            handles = [engine.submit(prompt, seed=seed, stop_at_eos=False, **options)
                       for prompt, seed, options in jobs]
        return [await h.completions() for h in handles]

    try:
        results = asyncio.run(asyncio.wait_for(main(), 120))
    finally:
        engine.close()
    assert engine.stats.most_requests_in_a_step == 4 and engine.stats.regroups == 0
    for (prompt, seed, options), [got] in zip(jobs, results):
        [want] = gen.generate(prompt, seed=seed, stop_at_eos=False, **options)
        assert got.token_ids == want.token_ids and got.finish_reason == want.finish_reason


def test_static_batches_decode_through_the_models_step(fused_gpt2):
    """Each decode step goes through model.step, as generate's does (on a GPU that replays the
    batch size's recorded graph), and a batch whose rows all slide drops its cache before
    prefilling the new one (a live cache keeps that graph leased); checked here on the CPU."""
    import weakref

    model = fused_gpt2.model
    steps, made = [], []
    step, empty_cache = model.step, model.empty_cache

    def counting_step(*args):
        steps.append(len(args[0]))
        return step(*args)

    def recording(batch, **options):
        cache = empty_cache(batch, **options)
        if options.get("capture", True):  # restart_rows' own small caches never record
            assert all(ref() is None for ref in made), "the last batch's cache is still alive"
            made.append(weakref.ref(cache))
        return cache

    engine = Engine(fused_gpt2, continuous=False)
    window = fused_gpt2.manifest.context_window
    options = dict(max_new_tokens=window + 20, stop_at_eos=False, do_sample=False)
    prompts = ["Once upon a time"] * 2  # greedy: two rows, equal, that slide in one step
    try:
        model.step, model.empty_cache = counting_step, recording

        async def main():
            with engine._lock:  # one static batch
                handles = [engine.submit(p, **options) for p in prompts]
            return [await h.completions() for h in handles]

        results = asyncio.run(asyncio.wait_for(main(), 120))
    finally:
        model.step, model.empty_cache = step, empty_cache
        engine.close()
    assert steps and set(steps) == {2}
    assert len(made) >= 2  # the first prefill, and the one after both rows slid
    for prompt, [got] in zip(prompts, results):
        assert got.token_ids == fused_gpt2.generate(prompt, **options)[0].token_ids
