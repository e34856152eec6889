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
