"""An application's event loop around one TextGenerator: async calls waiting their turn leave
the loop's own worker threads free, a stream cancelled while its tokens show no text stops
after its current step, and close() ends the generator's worker thread."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tinygen import TextGenerator, TinygenError

from model_calls import ModelCalls

OPTIONS = dict(max_new_tokens=12)


@pytest.fixture(scope="module")
def gen():
    return TextGenerator()  # the embedded model, as an application gets it


@pytest.fixture(scope="module")
def alone():
    fresh = TextGenerator()
    return lambda prompt, seed: str(fresh.generate(prompt, seed=seed, **OPTIONS)[0])


def test_calls_waiting_their_turn_leave_the_loops_threads_to_the_app(gen, alone, monkeypatch):
    """Each call queued behind a running one held a thread of the loop's default executor
    (min(32, cores + 4) of them) while it waited: the app's own asyncio.to_thread, and
    DNS lookups, waited behind every queued generation."""
    gate = threading.Event()
    calls = ModelCalls(gen, monkeypatch, gate=gate, release_after=20)

    async def run():
        first = asyncio.create_task(gen.agenerate("Once", seed=3, **OPTIONS))
        await calls.wait_first_step()  # it holds the generator until the gate opens
        queued = [asyncio.create_task(gen.agenerate("Hello", seed=s, **OPTIONS)) for s in range(40)]
        await asyncio.sleep(0.05)  # the queued calls reach the executor
        ran = await asyncio.wait_for(asyncio.to_thread(lambda: "ran"), 10)
        held = not gate.is_set()
        for task in queued:
            task.cancel()
        await asyncio.gather(*queued, return_exceptions=True)
        gate.set()
        return ran, held, await first
    ran, held, [text] = asyncio.run(run())
    assert ran == "ran" and held, "the app's thread ran only once the generator was free"
    assert text == alone("Once", 3)
    assert calls.prefills == 1  # the queued calls, cancelled, never decoded


def test_a_stream_cancelled_while_it_shows_no_text_stops_after_its_step(gen, alone, monkeypatch):
    """The worker looked for the cancellation only when a step gave text: a text of tokens
    that show none (special tokens, with stop_at_eos=False) ran to max_new_tokens, and the
    cancellation (wait_for's timeout, Ctrl-C) waited for all of it."""
    calls = ModelCalls(gen, monkeypatch)
    end = gen.manifest.eos_token_ids[0]

    async def run():
        async def consume():
            async for _ in gen.astream("Once", seed=1, max_new_tokens=400, stop_at_eos=False,
                                       logit_bias={end: 100.0}):
                pass
        task = asyncio.create_task(consume())
        await calls.wait_first_step()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await gen.agenerate("Hello", seed=4, **OPTIONS)
    [text] = asyncio.run(run())
    assert calls.steps < 100 + OPTIONS["max_new_tokens"]  # not the 399 steps it asked for
    assert text == alone("Hello", 4)


def test_close_ends_the_worker_thread_and_async_calls_after_it_say_closed():
    gen = TextGenerator()
    before = set(threading.enumerate())

    async def run():
        [text] = await gen.agenerate("Once", seed=1, max_new_tokens=4)
        return text
    text = asyncio.run(run())
    [worker] = set(threading.enumerate()) - before  # asyncio.run's own threads have ended
    gen.close()
    worker.join(10)
    assert not worker.is_alive()
    with pytest.raises(TinygenError, match="this TextGenerator was closed"):
        asyncio.run(gen.agenerate("Once", seed=1, max_new_tokens=4))
    assert str(TextGenerator().generate("Once", seed=1, max_new_tokens=4)[0]) == text


def test_next_token_probs_from_threads_beside_generate_are_those_made_alone(gen, alone):
    """The README says threads may share a generator for all three calls."""
    prompts = ["Once upon a time", "The night was", "Hello", "A"]
    want = [gen.next_token_probs(p, top_n=5) for p in prompts]
    got, texts = {}, {}

    def work(i):
        got[i] = gen.next_token_probs(prompts[i], top_n=5)
        texts[i] = str(gen.generate("Hello", seed=i, **OPTIONS)[0])
    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[i] for i in range(len(prompts))] == want
    assert [texts[i] for i in range(len(prompts))] == [alone("Hello", i) for i in range(len(prompts))]
