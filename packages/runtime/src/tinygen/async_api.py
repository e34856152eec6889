"""TextGenerator for asyncio: the decoding runs in a worker thread, the event loop goes on.

onnxruntime releases the GIL while a step runs, so the loop keeps serving other
coroutines meanwhile. Calls on one generator run one at a time, in its own worker thread
(TextGenerator._worker): two decodings at once would only share the same cores, each at
half the speed.
For many concurrent requests decoded together, use the serving Engine (`tinygen serve`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures.thread  # noqa: F401  (its exit hook first: see _exiting)
import threading
from concurrent.futures import Executor
from typing import AsyncIterator, Callable, Iterator, TypeVar

T = TypeVar("T")
_PIECE, _END, _ERROR = range(3)
# How many pieces an astream worker may decode past the ones its consumer has taken. A few
# let the next steps overlap with the consumer's own work (sending a piece, say) and smooth
# its hiccups; more would only be steps wasted, and the worker held that much longer, when the
# consumer stops reading.
AHEAD = 4
# Set as the program exits, before the thread pools wait for their threads: a worker waiting
# for a reader that never comes (a stream left unread and unclosed) gives up then, instead of
# holding the exit forever. Exit hooks run last registered first, hence the pools' module
# imported above, before this; the same (private) hook the pools use.
_exiting = threading.Event()
threading._register_atexit(_exiting.set)


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
    The worker decodes at most AHEAD pieces past the ones read, then waits for the reader.
    Leaving the loop early (break, aclose, cancellation, or dropping the iterator) stops the
    decoding after its current step and frees the worker."""

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
        room = threading.Semaphore(AHEAD)  # one per piece the worker may decode unread

        def post(kind: int, value) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
            except RuntimeError:  # the loop has closed: nobody is waiting any more
                stop.set()

        def wait_for_room() -> bool:
            """Block until the consumer takes a piece; False once it has given up."""
            while not room.acquire(timeout=1.0):
                # Closing the stream releases `room`. Nothing will when its loop was closed
                # without closing it (no asyncio.run, no shutdown_asyncgens), or when the
                # program exits with it unread: look now and then.
                if loop.is_closed() or _exiting.is_set():
                    stop.set()
                    return False
            return not stop.is_set()

        def work() -> None:
            started.set()
            try:
                if stop.is_set():  # given up while it waited its turn
                    return
                stream = self._open(stop)
                pieces = iter(stream)  # checks `stop` every step, text or none
                while wait_for_room():  # room first: no piece decoded that nobody may read
                    piece = next(pieces, None)
                    if piece is None:
                        break
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
                room.release()  # taken: the worker may decode one more
                yield value
        finally:
            stop.set()
            room.release()  # a worker waiting for room wakes up, sees `stop` and ends
            # A worker under way stops after its current step: wait for that, so the
            # generator is free again once this returns. One still waiting its turn, behind
            # other calls, is dropped; waiting for it here held a cancellation (wait_for's
            # timeout) up for as long as those calls took.
            if started.is_set():
                await asyncio.shield(worker)
            else:
                worker.cancel()
