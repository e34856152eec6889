"""TextGenerator for asyncio: the decoding runs in a worker thread, the event loop goes on.

onnxruntime releases the GIL while a step runs, so the loop keeps serving other
coroutines meanwhile. Calls on one generator run one at a time, in its own worker thread
(TextGenerator._worker): two decodings at once would only share the same cores, each at
half the speed.
For many concurrent requests decoded together, use the serving Engine (`tinygen serve`).
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Executor
from typing import AsyncIterator, Callable, Iterator, TypeVar

T = TypeVar("T")
_PIECE, _END, _ERROR = range(3)


async def in_worker_thread(worker: Executor, call: Callable[[threading.Event], T]) -> T:
    """call(cancelled) in the generator's `worker` (one thread: calls run in turn).

    A caller that is cancelled (task.cancel(), wait_for's timeout, Ctrl-C in asyncio.run) sets
    `cancelled`: a call still waiting its turn then never runs, and a running one is to stop
    (generate ends after its current step). A thread cannot be killed, so without this the call
    ran to its end unseen, holding the generator, and every call queued behind it, that long."""
    cancelled = threading.Event()

    def unless_cancelled() -> T | None:
        if cancelled.is_set():
            return None  # nobody waits for it any more
        return call(cancelled)
    try:  # cancelling this future drops the call while it waits its turn
        return await asyncio.get_running_loop().run_in_executor(worker, unless_cancelled)
    except asyncio.CancelledError:
        cancelled.set()
        raise


class AsyncTextStream:
    """`async for piece in gen.astream(...)`: TextStream's pieces, each step taken in a worker
    thread. `.seed` says how to remake the text; `.completion` holds it at the end.
    Leaving the loop early (break, cancellation) stops the decoding after its current step."""

    def __init__(self, worker: Executor, open_stream: Callable[[threading.Event], Iterator[str]],
                 seed: int | None):
        """open_stream(stop): the TextStream, which ends after the step during which `stop` is set."""
        self._executor, self._open = worker, open_stream
        self.seed = seed
        self.completion = None

    def __aiter__(self) -> AsyncIterator[str]:
        return self._pieces()

    async def _pieces(self) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()
        started = threading.Event()

        def post(kind: int, value) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
            except RuntimeError:  # the loop has closed: nobody is waiting any more
                stop.set()

        def work() -> None:
            started.set()
            try:
                if stop.is_set():  # given up while it waited its turn
                    return
                stream = self._open(stop)
                for piece in stream:  # checks `stop` every step, text or none
                    post(_PIECE, piece)
                if stop.is_set():
                    return
                self.completion = stream.completion
                post(_END, None)
            except BaseException as exc:  # raised in the consumer, where it can be handled
                post(_ERROR, exc)

        worker = loop.run_in_executor(self._executor, work)
        try:
            while True:
                kind, value = await queue.get()
                if kind == _ERROR:
                    raise value
                if kind == _END:
                    return
                yield value
        finally:
            stop.set()
            # A worker under way stops after its current step: wait for that, so the
            # generator is free again once this returns. One still waiting its turn, behind
            # other calls, is dropped; waiting for it here held a cancellation (wait_for's
            # timeout) up for as long as those calls took.
            if started.is_set():
                await asyncio.shield(worker)
            else:
                worker.cancel()
