"""agenerate / astream: the same texts as generate / stream, made while the event loop goes on."""

import asyncio

import pytest

from tinygen import TextGenerator, TinygenError


@pytest.fixture(scope="module")
def gen(optimum_gpt2_dir):
    return TextGenerator(optimum_gpt2_dir)


async def _ticks_while(coro):
    """(coro's result, how many times another coroutine ran before it finished)."""
    ticks, done = 0, False

    async def ticker():
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    try:
        return await coro, ticks
    finally:
        done = True
        await task


def test_agenerate_gives_generates_texts_without_blocking_the_loop(gen):
    want = gen.generate("Once upon", n=3, seed=11, max_new_tokens=48)
    texts, ticks = asyncio.run(_ticks_while(gen.agenerate("Once upon", n=3, seed=11, max_new_tokens=48)))
    assert list(texts) == list(want) and [t.seed for t in texts] == [11, 12, 13]
    assert ticks > 1  # a blocking call would have let the ticker run once, before it


def test_concurrent_calls_each_get_their_own_texts(gen):
    async def both():
        return await asyncio.gather(gen.agenerate("Once", seed=1, max_new_tokens=16),
                                    gen.agenerate("Hello", seed=2, max_new_tokens=16))
    first, second = asyncio.run(both())
    assert list(first) == list(gen.generate("Once", seed=1, max_new_tokens=16))
    assert list(second) == list(gen.generate("Hello", seed=2, max_new_tokens=16))


def test_astream_gives_streams_pieces_seed_and_completion(gen):
    stream = gen.stream("Once upon", seed=5, max_new_tokens=24)
    want = list(stream)

    async def collect():
        s = gen.astream("Once upon", seed=5, max_new_tokens=24)
        return s, [piece async for piece in s]
    s, pieces = asyncio.run(collect())
    assert pieces == want and s.seed == 5
    assert str(s.completion) == "".join(want) == str(stream.completion)


def test_astream_draws_its_seed_at_the_call(gen):
    s = gen.astream("Once", max_new_tokens=8)
    assert isinstance(s.seed, int)

    async def collect():
        return "".join([piece async for piece in s])
    assert asyncio.run(collect()) == str(gen.generate("Once", seed=s.seed, max_new_tokens=8)[0])


def test_leaving_a_stream_early_frees_the_generator(gen):
    async def run():
        async for _ in gen.astream("Once", seed=3, max_new_tokens=200, stop_at_eos=False):
            break
        # the stream's worker stops after its step and lets the next call in
        return await asyncio.wait_for(gen.agenerate("Once", seed=3, max_new_tokens=4), timeout=60)
    assert list(asyncio.run(run())) == list(gen.generate("Once", seed=3, max_new_tokens=4))


def test_errors_reach_the_caller(gen):
    with pytest.raises(TinygenError, match="top_p must be in"):
        gen.astream("Hi", top_p=2)  # options: at the call

    with pytest.raises(TinygenError, match="prompt is"):  # the prompt: at the call too, as stream's
        gen.astream("Once upon a time " * 100, seed=1)
    with pytest.raises(TinygenError, match="n must be an integer >= 1"):
        asyncio.run(gen.agenerate("Hi", n=0))


def test_astream_checks_at_the_call_what_stream_does(gen):
    """Exclusions, the prompt and min_new_tokens against the window were checked only once
    iteration started; stream checks them at the call, and so does astream now."""
    window = gen.manifest.context_window
    for bad in (dict(exclude_strings=["zzqq"]), dict(exclude_ids=[10 ** 6]),
                dict(min_new_tokens=window, max_new_tokens=window, slide_window=False)):
        with pytest.raises(TinygenError) as streamed:
            gen.stream("Once", **bad)
        with pytest.raises(TinygenError) as astreamed:
            gen.astream("Once", **bad)  # no iteration: refused at the call
        assert str(astreamed.value) == str(streamed.value)
    with pytest.raises(TinygenError, match="astream takes one prompt"):
        gen.astream(["Once", "Twice"])
    with pytest.raises(TinygenError, match="prompt is .* tokens; the model's window"):
        gen.astream([5] * window)
