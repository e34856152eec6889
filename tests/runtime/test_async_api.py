"""agenerate / astream: the same texts as generate / stream, made while the event loop goes on."""

import asyncio
import gc
import subprocess
import sys

import pytest

from tinygen import TextGenerator, TinygenError
from tinygen import generator as generator_module
from tinygen.async_api import AHEAD


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


@pytest.fixture
def produced(monkeypatch):
    """The pieces the streams' workers have decoded so far, in order."""
    pieces = []

    class Counted(generator_module.TextStream):
        def __iter__(self):
            for piece in super().__iter__():
                pieces.append(piece)
                yield piece
    monkeypatch.setattr(generator_module, "TextStream", Counted)
    return pieces


async def _until(done, timeout=60.0):
    """Wait for done(); the timeout only catches a deadlock."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout
    while not done():
        assert loop.time() < give_up, "waited a minute: deadlock?"
        await asyncio.sleep(0.01)


async def _read_then_pause(it, produced, read: int, count: int) -> int:
    """Read `count` more pieces (`read` already), then stop reading until the worker is AHEAD
    pieces past them, and a while after: a worker that does not wait for its consumer runs on
    meanwhile. How many pieces past the ones read the worker has decoded."""
    for _ in range(count):
        await anext(it)
    read += count
    await _until(lambda: len(produced) >= read + AHEAD)
    await asyncio.sleep(0.2)
    return len(produced) - read


def _long_stream(gen):
    return aiter(gen.astream("Once", seed=3, max_new_tokens=200, stop_at_eos=False))


def test_a_stream_not_read_decodes_only_a_few_pieces_ahead(gen, produced):
    async def run():
        it = _long_stream(gen)
        ahead = await _read_then_pause(it, produced, 0, 3)
        more = await _read_then_pause(it, produced, 3, 2)  # and again after more reads
        await it.aclose()
        return ahead, more
    assert asyncio.run(run()) == (AHEAD, AHEAD)


def test_closing_a_stream_whose_worker_waits_frees_the_generator(gen, produced):
    async def run():
        it = _long_stream(gen)
        ahead = await _read_then_pause(it, produced, 0, 3)
        await asyncio.wait_for(it.aclose(), timeout=60)  # the waiting worker wakes up and stops
        texts = await asyncio.wait_for(gen.agenerate("Once", seed=3, max_new_tokens=4), timeout=60)
        return ahead, len(produced), texts
    ahead, total, texts = asyncio.run(run())
    assert ahead == AHEAD and total == 3 + AHEAD
    assert list(texts) == list(gen.generate("Once", seed=3, max_new_tokens=4))


def test_dropping_a_stream_unclosed_frees_the_generator(gen, produced):
    async def run():
        it = _long_stream(gen)
        ahead = await _read_then_pause(it, produced, 0, 3)
        del it  # neither read nor closed any more: the loop's finalizer closes it
        gc.collect()
        texts = await asyncio.wait_for(gen.agenerate("Once", seed=3, max_new_tokens=4), timeout=60)
        return ahead, len(produced), texts
    ahead, total, texts = asyncio.run(run())
    assert ahead == AHEAD and total == 3 + AHEAD
    assert list(texts) == list(gen.generate("Once", seed=3, max_new_tokens=4))


def test_a_stream_left_unread_does_not_hold_up_the_exit(optimum_gpt2_dir):
    """Its worker waits for a reader that never comes; the exit waits for the worker threads
    (a loop never closed, so no finalizer closes the stream): the worker gives up at the exit."""
    code = ("import asyncio, sys\n"
            "from tinygen import TextGenerator\n"
            "gen = TextGenerator(sys.argv[1])\n"
            "loop = asyncio.new_event_loop()\n"
            "it = aiter(gen.astream('Once', seed=3, max_new_tokens=200, stop_at_eos=False))\n"
            "print(loop.run_until_complete(anext(it)))\n")
    done = subprocess.run([sys.executable, "-c", code, str(optimum_gpt2_dir)], capture_output=True,
                          text=True, timeout=120)  # a worker that waited on held the exit forever
    assert done.returncode == 0 and done.stdout.strip(), done.stderr


@pytest.mark.parametrize("how", ["a reader task still running", "sys.exit in the loop"])
def test_a_stream_open_as_asyncio_run_ends_leaves_no_task_behind(optimum_gpt2_dir, how):
    # As an async generator, its cleanup (waiting for the worker) ran in a task of its own that
    # the closing loop destroyed: "Task was destroyed but it is pending!" on every such exit.
    code = ("import asyncio, sys\n"
            "from tinygen import TextGenerator\n"
            "gen = TextGenerator(sys.argv[1])\n"
            "async def read(stream, exit):\n"
            "    async for piece in stream:\n"
            "        print(piece, flush=True)\n"
            "        sys.exit(0) if exit else await asyncio.sleep(0.01)\n"
            "async def main(exit):\n"
            "    stream = gen.astream('Once', seed=3, max_new_tokens=200, stop_at_eos=False)\n"
            "    if exit:\n"
            "        await read(stream, exit)\n"
            "    task = asyncio.create_task(read(stream, exit))\n"
            "    await asyncio.sleep(0.2)\n"
            "asyncio.run(main(sys.argv[2] == 'exit'))\n")
    done = subprocess.run([sys.executable, "-X", "dev", "-c", code, str(optimum_gpt2_dir),
                           "exit" if how.startswith("sys.exit") else "task"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip(), done.stderr
    assert "Task was destroyed" not in done.stderr and "GeneratorExit" not in done.stderr, \
        done.stderr


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
