"""tinygen inside an application: one TextGenerator shared by threads and asyncio tasks, streams
left half way, calls cancelled or timed out. Whatever happened before, the generator's next
texts are the ones a fresh generator makes with the same seeds, and a call nobody waits for
any more does not keep the generator busy."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tinygen import TextGenerator

from model_calls import ModelCalls

OPTIONS = dict(max_new_tokens=12)


@pytest.fixture(scope="module")
def gen():
    return TextGenerator()  # the embedded model: what an application gets by default


@pytest.fixture(scope="module")
def alone():
    """Texts from a generator of their own, made one at a time: what every text must equal."""
    fresh = TextGenerator()

    def text(prompt, seed, **options) -> str:
        return str(fresh.generate(prompt, seed=seed, **{**OPTIONS, **options})[0])
    return text


def test_threads_sharing_a_generator_get_the_texts_made_alone(gen, alone):
    jobs = [("Once upon a time", s) for s in range(4)] + [("The night was", s) for s in range(4)]
    got, errors = {}, []

    def work(i):
        try:
            for prompt, seed in jobs[i::4]:
                if i % 2:
                    got[prompt, seed, i] = str(gen.generate(prompt, seed=seed, **OPTIONS)[0])
                else:
                    got[prompt, seed, i] = "".join(gen.stream(prompt, seed=seed, **OPTIONS))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(got) == len(jobs)
    assert all(text == alone(prompt, seed) for (prompt, seed, _), text in got.items())


def test_a_stream_left_half_way_leaves_the_generator_as_it_was(gen, alone):
    for i, _ in enumerate(gen.stream("Hello", seed=1, max_new_tokens=200, stop_at_eos=False)):
        if i == 3:
            break
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C, or any error, in the caller's loop body
        for i, _ in enumerate(gen.stream("Hello", seed=1, max_new_tokens=200, stop_at_eos=False)):
            if i == 3:
                raise KeyboardInterrupt
    kept = iter(gen.stream("Hello", seed=2, max_new_tokens=200, stop_at_eos=False))
    next(kept)  # still open, not finished: another stream runs beside it
    assert "".join(gen.stream("Once upon", seed=7, **OPTIONS)) == alone("Once upon", 7)
    assert str(gen.generate("The night was", seed=8, **OPTIONS)[0]) == alone("The night was", 8)


def test_a_cancelled_agenerate_stops_after_its_current_step(gen, alone, monkeypatch):
    want = alone("Hello", 4)
    calls = ModelCalls(gen, monkeypatch)

    async def run():
        long = asyncio.create_task(
            gen.agenerate("Once", seed=3, max_new_tokens=400, stop_at_eos=False))
        await calls.wait_first_step()
        long.cancel()  # as wait_for's timeout does, or Ctrl-C under asyncio.run
        with pytest.raises(asyncio.CancelledError):
            await long
        return await gen.agenerate("Hello", seed=4, **OPTIONS)
    [text] = asyncio.run(run())
    assert text == want
    # It would have taken 399 steps, holding the generator (and the call after it) that long.
    assert calls.steps < 100


def test_calls_queued_behind_a_long_one_give_up_at_their_timeout(gen, alone, monkeypatch):
    """wait_for on an astream or agenerate that waits for the generator raises at its timeout,
    not when the call before it is done, and the call then never runs."""
    gate = threading.Event()
    calls = ModelCalls(gen, monkeypatch, gate=gate)

    async def stream_text():
        return "".join([piece async for piece in gen.astream("Hello", seed=4, **OPTIONS)])

    async def run():
        first = asyncio.create_task(gen.agenerate("Once", seed=3, **OPTIONS))
        await calls.wait_first_step()  # it holds the generator until the gate opens
        for queued in (stream_text(), gen.agenerate("Hello", seed=4, **OPTIONS)):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(queued, 0.2)
            assert not gate.is_set(), "the timeout came only once the call before it was done"
        gate.set()
        return await first
    [text] = asyncio.run(run())  # which waits for its worker threads to end
    assert text == alone("Once", 3)
    assert calls.prefills == 1  # the calls given up never decoded
    assert "".join(gen.stream("Hello", seed=4, **OPTIONS)) == alone("Hello", 4)


def test_astream_cancelled_mid_stream_then_reused(gen, alone):
    async def run():
        async def consume():
            async for _ in gen.astream("Once", seed=5, max_new_tokens=400, stop_at_eos=False):
                pass
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(consume(), 0.2)
        streams = [_joined(gen.astream("Hello", seed=s, **OPTIONS)) for s in (7, 8)]
        texts = await asyncio.gather(gen.agenerate("Hello", seed=6, **OPTIONS), *streams)
        return [str(texts[0][0]), *texts[1:]]
    assert asyncio.run(run()) == [alone("Hello", s) for s in (6, 7, 8)]


async def _joined(stream) -> str:
    return "".join([piece async for piece in stream])


def test_close_frees_the_model_and_later_calls_say_so():
    import gc
    import weakref

    from tinygen import TinygenError

    with TextGenerator() as gen:
        text = str(gen.generate("Once", seed=1, max_new_tokens=4)[0])
        session = weakref.ref(gen.model.session)
    gc.collect()
    assert session() is None  # the onnxruntime session is gone with the block
    # astream at the call, as it checks everything else there (not when iterated)
    for call in (lambda: gen.generate("Once", seed=1), lambda: list(gen.stream("Once")),
                 lambda: gen.astream("Once"), lambda: gen.next_token_probs("Once"),
                 lambda: gen.device):
        with pytest.raises(TinygenError, match="this TextGenerator was closed; make a new one"):
            call()
    gen.close()  # again: nothing to do
    assert str(TextGenerator().generate("Once", seed=1, max_new_tokens=4)[0]) == text
