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
from typing import Callable, Iterator, TypeVar

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

    def __aiter__(self) -> "_Pieces":
        return _Pieces(self)


class _Pieces:
    """One pass over an AsyncTextStream. A class, not an async generator: one dropped
    unfinished (a break, an exception, a reader task cancelled as asyncio.run ends) has
    nothing to await. A generator's cleanup awaited its worker in a task of its own, which
    a closing loop destroyed pending ("Task was destroyed but it is pending!")."""

    def __init__(self, stream: AsyncTextStream):
        self._stream = stream
        self._channel = _Channel()  # the worker holds this, never the iterator: it may be dropped
        self._worker: asyncio.Future | None = None  # made at the first __anext__, as a generator's
        self._ended = False

    def __aiter__(self) -> "_Pieces":
        return self

    async def __anext__(self) -> str:
        if self._ended:
            raise StopAsyncIteration
        if self._worker is None:
            loop = asyncio.get_running_loop()
            self._worker = loop.run_in_executor(self._stream._executor, _work, self._stream,
                                                self._channel, loop)
        try:
            kind, value = await self._channel.queue.get()
        except BaseException:  # cancelled while it waited for a piece
            await self.aclose()
            raise
        if kind == _PIECE:
            self._channel.room.release()  # taken: the worker may decode one more
            return value
        await self.aclose()  # the worker has ended: nothing to wait for
        if kind == _ERROR:
            raise value
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop the decoding after its current step and wait for that, so the generator is
        free again once this returns. A worker still waiting its turn, behind other calls,
        is dropped: waiting for it held a cancellation (wait_for's timeout) up for as long
        as those calls took."""
        worker, self._ended = self._worker, True
        self._channel.halt()
        if worker is None:
            return
        if self._channel.started.is_set():
            await asyncio.shield(worker)
        else:
            worker.cancel()

    def __del__(self) -> None:
        if not self._ended:  # dropped unclosed: the worker ends after its step, unwaited for
            self._channel.halt()


class _Channel:
    """What a _Pieces iterator and its worker share."""

    def __init__(self):
        self.queue: asyncio.Queue = asyncio.Queue()
        self.stop = threading.Event()  # the text ends after the step during which it is set
        self.room = threading.Semaphore(AHEAD)  # one per piece the worker may decode unread
        self.started = threading.Event()

    def halt(self) -> None:
        self.stop.set()
        self.room.release()  # a worker waiting for room wakes up, sees `stop` and ends


def _work(stream: AsyncTextStream, channel: _Channel, loop: asyncio.AbstractEventLoop) -> None:
    """The worker thread's part: decode, posting each piece, while the reader makes room."""
    stop = channel.stop
    channel.started.set()

    def post(kind: int, value) -> None:
        try:
            loop.call_soon_threadsafe(channel.queue.put_nowait, (kind, value))
        except RuntimeError:  # the loop has closed: nobody is waiting any more
            stop.set()

    def wait_for_room() -> bool:
        """Block until the consumer takes a piece; False once it has given up."""
        while not channel.room.acquire(timeout=1.0):
            # Closing or dropping the iterator releases `room`. Nothing does when the
            # program exits with it unread and still held: look now and then.
            if loop.is_closed() or _exiting.is_set():
                stop.set()
                return False
        return not stop.is_set()

    try:
        if stop.is_set():  # given up while it waited its turn
            return
        text = stream._open(stop)
        pieces = iter(text)  # checks `stop` every step, text or none
        while wait_for_room():  # room first: no piece decoded that nobody may read
            piece = next(pieces, None)
            if piece is None:
                break
            post(_PIECE, piece)
        if stop.is_set():
            return
        stream.completion = text.completion
        post(_END, None)
    except BaseException as exc:  # raised in the consumer, where it can be handled
        post(_ERROR, exc)
