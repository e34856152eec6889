"""The serving engine: owns the model and decodes every request's sequences in one running batch.

Continuous batching. A background thread runs decode steps; each step

1. samples one token for every sequence in the batch: logits processors and samplers
   run per group of sequences that share their settings, and every sequence draws from
   its own seeded generator, so a text does not depend on what else is in the batch;
2. hands each request the text its sequences gained, through the request's asyncio
   queue (`RequestHandle`);
3. builds the next step's batch: finished and cancelled sequences leave, the others
   are fed the token they just drew, and requests that arrived since the last step are
   prefilled and join; their cache rows are appended, padded on the left to a common
   length (batch_ops). A sequence that reaches the model's window slides on its own:
   it is prefilled again from the last half of its tokens, as `generate` does alone.

So a request waits at most one step to join, shares every decode step with the others,
and frees its rows at the step after it ends or its client goes away (`cancel`).

A text made here with seed s equals `TextGenerator.generate(prompt, seed=s)` with the
same options: the same defaults, seeds (sequence i of a request gets seed + i),
processors, sampler and stop handling (sequence.py), one draw per step per sequence.

Models whose KV cache is not the "concat" layout (the in-place "shared" buffer of
shared_kv.py) cannot have rows taken out or put in. For them the engine falls back to
static batches: the requests waiting when the batch is empty start together, finished
rows keep stepping (their tokens ignored), and new requests wait until all are done.
There too a sequence that reaches the window slides on its own: its rows of the cache
are prefilled again from the last half of its tokens (model.restart_rows) while the
others keep theirs, so the texts are still the ones `generate` makes alone.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, AsyncIterator

import numpy as np

from ..batch_memory import BatchTooLarge, check_batch_memory, size, sure_tokens
from ..config import GenerationConfig
from ..decoding import Completion, Piece, check_room, hold_back_ends, left_pad
from ..errors import TinygenError
from ..processors import LogitsProcessor, build_processors, softmax
from ..sampling import RandomSampler, broken_scores, nothing_left
from . import batch_ops
from .sequence import Sequence

if TYPE_CHECKING:
    from ..generator import Prompt, TextGenerator

logger = logging.getLogger("tinygen.serving")


class EngineBusy(TinygenError):
    """Too many requests are already waiting for a place in the batch; try again shortly."""


class GenerationFailed(RuntimeError):
    """The engine could not finish a request, with the HTTP status that says whose doing it
    was: 400 its own options (exclusions and biases left no token to sample), 503 the
    server shutting down or without the memory for it now, 500 a bug."""

    def __init__(self, message: str, status: int = 500):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class SequencePiece:
    """Text that sequence `index` of a request gained, with its tokens' probabilities."""

    index: int
    piece: Piece


@dataclass(frozen=True)
class SequenceDone:
    """Sequence `index` of a request is finished; `completion` is its whole text."""

    index: int
    completion: Completion


@dataclass(frozen=True)
class _Failed:
    message: str
    status: int = 500
    # Read before the events still queued: at shutdown the reply that says so must go out
    # now, not after the text a slow client has yet to take (uvicorn will not wait long).
    first: bool = False


Event = SequencePiece | SequenceDone
_CANCELLED = object()  # queued by RequestHandle.cancel, so a reader waiting for events stops


@dataclass
class EngineStats:
    steps: int = 0  # decode steps run
    tokens: int = 0  # tokens drawn
    admitted: int = 0  # requests that joined the batch
    cancelled: int = 0  # sequences dropped because their request was cancelled
    regroups: int = 0  # times the cache rows were re-packed (someone joined or left mid-batch)
    busiest_step: int = 0  # most sequences decoded in one step
    most_requests_in_a_step: int = 0  # most distinct requests sharing one step


class RequestHandle:
    """The asyncio side of one request: its sequences' events arrive on a queue.

    Read them with `events()` (or `next_event()`), or wait for `completions()`.
    `cancel()` drops the request's sequences at the engine's next step.
    """

    def __init__(self, engine: "Engine", loop: asyncio.AbstractEventLoop, prompt_lengths: list[int],
                 seeds: list[int | None], config: GenerationConfig):
        self._engine, self._loop = engine, loop
        self._queue: asyncio.Queue = asyncio.Queue()
        self.prompt_lengths = prompt_lengths  # tokens of each sequence's prompt
        self.seeds = seeds  # each sequence's seed (None when greedy)
        self.config = config
        self.remaining = len(seeds)
        self.cancelled = False
        self._first: _Failed | None = None  # a failure that overtakes the queue (_Failed.first)

    def cancel(self) -> None:
        """Stop the request: its readers see the end at once, the engine drops it at its next step."""
        if not self.cancelled and self.remaining:
            self.cancelled = True
            self._queue.put_nowait(_CANCELLED)  # wakes a reader waiting in next_event
            self._engine._forget(self)

    @property
    def done(self) -> bool:
        return self.remaining == 0

    async def next_event(self) -> Event | None:
        """The next event, or None once every sequence is done or the request was cancelled.

        Raises GenerationFailed when the engine could not finish it.
        """
        if self.remaining == 0 or self.cancelled:
            return None
        event = self._first or await self._queue.get()
        if event is _CANCELLED:
            return None
        if isinstance(event, _Failed):
            self.remaining = 0
            raise GenerationFailed(event.message, event.status)
        if isinstance(event, SequenceDone):
            self.remaining -= 1
        return event

    async def events(self) -> AsyncIterator[Event]:
        while (event := await self.next_event()) is not None:
            yield event

    async def completions(self) -> list[Completion]:
        """Every sequence's completion, in order (waits for the last one)."""
        done: dict[int, Completion] = {}
        async for event in self.events():
            if isinstance(event, SequenceDone):
                done[event.index] = event.completion
        if len(done) < len(self.seeds):
            raise GenerationFailed("the request was cancelled")
        return [done[i] for i in range(len(done))]

    def _deliver(self, events: list) -> None:
        """Called on the engine thread: hand events to the request's event loop."""
        try:
            self._loop.call_soon_threadsafe(self._put_all, events)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancelled = True

    def _put_all(self, events: list) -> None:
        for event in events:
            if isinstance(event, _Failed) and event.first:
                self._first = event
            self._queue.put_nowait(event)  # also wakes a reader waiting in next_event


class _RowSampler(RandomSampler):
    """RandomSampler over generators that live with their sequences (rows come and go)."""

    def __init__(self, generators: list[np.random.Generator]):
        self.generators = generators


class Engine:
    def __init__(self, generator: "TextGenerator", max_batch: int = 16, max_waiting: int = 64,
                 continuous: bool | None = None):
        """generator: the model, tokenizer and defaults to serve.
        max_batch: sequences decoded at once; max_waiting: requests queued while the batch is full.
        continuous: join and leave at every step (default: when the KV layout allows it).
        """
        if max_batch < 1 or max_waiting < 0:
            raise TinygenError(f"max_batch must be >= 1 and max_waiting >= 0, got {max_batch}, {max_waiting}")
        self.generator = generator
        self.model = generator.model
        self.manifest = generator.manifest
        self.window = self.manifest.context_window
        self.pad_id = generator._pad_id()
        self.max_batch, self.max_waiting = max_batch, max_waiting
        self.continuous = self.manifest.kv_cache == "concat" if continuous is None else continuous
        if self.continuous and self.manifest.kv_cache != "concat":
            raise TinygenError(f"continuous batching needs the 'concat' KV cache; this model's is "
                               f"'{self.manifest.kv_cache}'")
        self.stats = EngineStats()
        self._lock = threading.Condition()
        self._waiting: deque[tuple[RequestHandle, list[Sequence]]] = deque()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._chains: dict[tuple, list[LogitsProcessor]] = {}
        self._reset()

    # -- the asyncio side ----------------------------------------------------------

    def submit(self, prompt: "Prompt | list[Prompt]" = "", n: int = 1, seed: int | list[int] | None = None,
               **options) -> RequestHandle:
        """Check a request and queue it; call it on the event loop that will read the handle.

        Arguments as TextGenerator.generate's (GenerationConfig options, the model's
        defaults, sequence i getting seed + i). Raises TinygenError for bad input, and
        EngineBusy when the request cannot join at the next step and `max_waiting`
        requests are already waiting.
        """
        gen = self.generator
        config = gen.defaults.merged(**options)
        prompts = gen.prompts.encode(prompt)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise TinygenError(f"n must be an integer >= 1, got {n!r}")
        check_room(config, prompts, self.window)
        rows = [ids for ids in prompts for _ in range(n)]
        if len(rows) > self.max_batch:
            raise TinygenError(f"{len(rows)} sequences asked for (prompts x n); this server decodes "
                               f"at most {self.max_batch} at once")
        seeds = gen._seeds(seed, len(rows), config)
        suppress = tuple(gen._excluded_ids(config))
        eos = frozenset(self.manifest.eos_token_ids) if config.stop_at_eos else frozenset()
        handle = RequestHandle(self, asyncio.get_running_loop(), [len(r) for r in rows], seeds, config)
        sequences = [Sequence(handle, i, ids, s, config, suppress, eos, self.window,
                              gen.tokenizer.stream_decoder(ids))
                     for i, (ids, s) in enumerate(zip(rows, seeds))]
        with self._lock:
            if self._closing:
                raise GenerationFailed("the engine is shutting down", 503)
            # Queued requests that will join at the next step do not count as waiting.
            free = self.max_batch - self.active if self.continuous or not self._sequences else 0
            overflow = 0
            for other, queued in self._waiting:
                if other.cancelled:
                    continue
                if overflow == 0 and len(queued) <= free:
                    free -= len(queued)
                else:
                    overflow += 1
            if (overflow or len(rows) > free) and overflow >= self.max_waiting:
                running = "the batch is full" if self.continuous else \
                    "a batch is running (this model's batches start together and end together)"
                waiting = "1 request is" if overflow == 1 else f"{overflow} requests are"
                raise EngineBusy(f"{running} and {waiting} already waiting for a place; try again "
                                 f"shortly")
            self._waiting.append((handle, sequences))
            self._lock.notify()
        self.start()
        return handle

    @property
    def active(self) -> int:
        """Sequences decoding now (finished and cancelled ones excluded)."""
        return sum(1 for s in self._sequences if not s.finish_reason and not s.owner.cancelled)

    @property
    def waiting(self) -> int:
        return sum(1 for h, _ in list(self._waiting) if not h.cancelled)

    # -- the thread ----------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._thread is None and not self._closing:
                self._thread = threading.Thread(target=self._run, name="tinygen-engine", daemon=True)
                self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread; requests still waiting or decoding fail with GenerationFailed."""
        with self._lock:
            self._closing = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            waiting = [h for h, _ in self._waiting]
            self._waiting.clear()
        for handle in {*waiting, *(s.owner for s in self._sequences)}:
            handle._deliver([_Failed("the server is shutting down", 503, first=True)])
        self._reset()

    def _forget(self, handle: RequestHandle) -> None:
        """A cancelled request leaves the queue now, and the engine wakes to drop its rows.

        The engine only pops the queue's head, and not at all while a static batch runs: clients
        that give up while waiting (timeouts, retries) would otherwise pile up there, each with its
        sequences, until the batch ends."""
        with self._lock:
            for i, (waiting, _) in enumerate(self._waiting):
                if waiting is handle:
                    del self._waiting[i]
                    break
            self._lock.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._closing and not self._sequences and not self._waiting:
                    self._lock.wait()
                if self._closing:
                    return
                joining = self._admit()
            try:
                joining = self._within_memory(joining)
                self._step([s for _, seqs in joining for s in seqs])
            except Exception as exc:  # a bug: fail the requests in hand, keep serving the rest
                logger.exception("decode step failed")
                owners = {s.owner for s in self._sequences} | {h for h, _ in joining}
                for handle in owners:
                    handle._deliver([_Failed(f"generation failed: {type(exc).__name__}: {exc}")])
                self._reset()

    def _admit(self) -> list[tuple[RequestHandle, list[Sequence]]]:
        """Waiting requests that fit now, first come first served (called holding the lock)."""
        if not self.continuous and self._sequences:
            return []  # static batches: wait until the batch is empty
        free = self.max_batch - self.active
        admitted = []
        while self._waiting:
            handle, sequences = self._waiting[0]
            if handle.cancelled:
                self._waiting.popleft()
                continue
            if len(sequences) > free:
                break  # no overtaking: a large request is not starved by small ones
            admitted.append(self._waiting.popleft())
            free -= len(sequences)
        self.stats.admitted += len(admitted)
        return admitted

    def _within_memory(self, joining: list[tuple[RequestHandle, list[Sequence]]]
                       ) -> list[tuple[RequestHandle, list[Sequence]]]:
        """The admitted requests the memory available can take (batch_memory: a lower bound),
        first come first served; each other one fails alone (503: memory frees as texts end),
        where its buffers would have had the process killed."""
        kept: list[tuple[RequestHandle, list[Sequence]]] = []
        for handle, sequences in joining:
            rows = [s for _, seqs in kept for s in seqs] + sequences
            sure = [sure_tokens(s.config, s.eos) for s in rows]
            # A static batch's rows all step until its last ends; continuous ones leave at theirs.
            try:
                check_batch_memory(self.model, [len(s.prompt_ids) for s in rows],
                                   min(sure) if self.continuous else max(sure))
            except BatchTooLarge as exc:
                handle._deliver([_Failed(
                    f"the server has no memory for this request now: {exc.rows} sequences "
                    f"starting together need at least {size(exc.need)}, and "
                    f"{size(exc.available)} is available (at most {exc.fit} fit); try again "
                    f"shortly, or ask for fewer", 503)])
                continue
            kept.append((handle, sequences))
        return kept

    def _reset(self) -> None:
        self._sequences: list[Sequence] = []  # the running batch, in cache row order
        self._cache = None  # per layer (batch, kv_heads, past, head_size)
        self._mask: np.ndarray | None = None  # (batch, past)
        self._logits: np.ndarray | None = None  # (batch, vocab): each row's next-token logits

    # -- one step --------------------------------------------------------------------

    def _step(self, joining: list[Sequence]) -> None:
        tokens = np.zeros(0, np.int64)
        if self._sequences:
            tokens = self._sample()
            self._hand_out(tokens)
        for seq in self._sequences:  # from here on, a cancelled sequence is a finished one
            if seq.owner.cancelled and not seq.finish_reason:
                seq.finish_reason = "cancelled"
                self.stats.cancelled += 1
        if self.continuous:
            self._regroup(tokens, joining)
        else:
            self._static_next(tokens, joining)

    def _live(self) -> list[int]:
        return [i for i, s in enumerate(self._sequences) if not s.finish_reason and not s.owner.cancelled]

    def _sample(self) -> np.ndarray:
        """One token per live sequence (pad for the others): processors and sampler per group."""
        sequences, logits = self._sequences, self._logits
        tokens = np.full(len(sequences), self.pad_id, dtype=np.int64)
        groups: dict[tuple, list[int]] = {}
        live = self._live()
        for i in live:
            groups.setdefault(sequences[i].group, []).append(i)
        for (config, suppress), rows in groups.items():
            raw = logits[rows]
            histories = [sequences[i].history for i in rows]
            processed = raw
            if config.min_new_tokens:
                processed = hold_back_ends(processed, [sequences[i] for i in rows],
                                           sequences[rows[0]].eos)
            for processor in self._chain(config, suppress):
                processed = processor(processed, histories)
            if config.greedy:
                chosen = processed.argmax(axis=-1)
            else:
                chosen = _RowSampler([sequences[i].rng for i in rows])(processed)
            if config.return_probs:
                self._record_probs([sequences[i] for i in rows], raw if config.raw_probs else processed,
                                   chosen)
            tokens[rows] = chosen
            picked = processed[np.arange(len(rows)), chosen]
            if not (picked > -np.inf).all():  # every token removed (or NaN): fail that request alone
                for j, (i, ok) in enumerate(zip(rows, (picked > -np.inf).tolist())):
                    if not ok:  # the request's options (400), or the model (500)
                        broken = broken_scores(processed[j])
                        self._fail(sequences[i].owner, nothing_left(sequences[i], processed[j]),
                                   status=500 if broken else 400)
        stats = self.stats
        stats.steps += 1
        stats.tokens += len(live)
        stats.busiest_step = max(stats.busiest_step, len(live))
        stats.most_requests_in_a_step = max(stats.most_requests_in_a_step,
                                            len({sequences[i].owner for i in live}))
        return tokens

    def _fail(self, owner: RequestHandle, message: str, status: int = 500) -> None:
        """End one request with an error; the others in the batch go on."""
        going = [s for s in self._sequences if s.owner is owner and not s.finish_reason]
        if going:
            for seq in going:
                seq.finish_reason = "failed"  # leaves the batch as a finished sequence does
            owner._deliver([_Failed(message, status)])

    def _chain(self, config: GenerationConfig, suppress: tuple[int, ...]) -> list[LogitsProcessor]:
        key = (config, suppress)
        if key not in self._chains:
            if len(self._chains) > 256:
                self._chains.clear()
            self._chains[key] = build_processors(config, suppress=suppress)
        return self._chains[key]

    def _record_probs(self, sequences: list[Sequence], logits: np.ndarray, tokens: np.ndarray) -> None:
        probs = softmax(logits.astype(np.float64))
        for seq, p, token in zip(sequences, probs, tokens.tolist()):
            seq.record_probs(p, token, self.generator.tokenizer.token_text)

    def _hand_out(self, tokens: np.ndarray) -> None:
        """Advance every live sequence by its token and send each request what it gained."""
        outgoing: dict[RequestHandle, list] = {}
        for seq, token in zip(self._sequences, tokens.tolist()):
            if seq.finish_reason or seq.owner.cancelled:
                continue
            piece = seq.advance(token)
            events = outgoing.setdefault(seq.owner, [])
            if piece or piece.token_probs:
                events.append(SequencePiece(seq.index, piece))
            if seq.finish_reason:
                events.append(SequenceDone(seq.index, seq.completion()))
        for handle, events in outgoing.items():
            if events:
                handle._deliver(events)

    def _regroup(self, tokens: np.ndarray, joining: list[Sequence]) -> None:
        """Continuous batching: the finished leave, the rest take their token, newcomers join."""
        sequences = self._sequences
        live = self._live()
        feed = [i for i in live if sequences[i].next_position < self.window]
        sliding = [sequences[i] for i in live if sequences[i].next_position >= self.window]
        fed = [sequences[i] for i in feed]
        cache = mask = logits = None
        if fed:
            cache, mask = self._cache, self._mask
            if len(fed) < len(sequences):
                cache, mask = batch_ops.select_rows(cache, mask, feed, self.model.device)
                self.stats.regroups += 1
            mask = np.concatenate([mask, np.ones((len(fed), 1), mask.dtype)], axis=1)
            positions = np.array([[s.next_position] for s in fed], dtype=np.int64)
            out, cache = self.model.forward(tokens[feed][:, None], mask, positions, cache)
            logits = out[:, -1, :]
            for seq in fed:
                seq.next_position += 1
        # Sliding sequences restart from the last half of their tokens, as BatchDecoding._slide.
        keep = max(1, self.window // 2)
        starting = sliding + joining
        if starting:
            contexts = [s.history[-keep:] for s in sliding] + [s.prompt_ids for s in joining]
            new_logits, new_cache, new_mask = self._prefill(starting, contexts)
            if cache is None:
                cache, mask, logits = new_cache, new_mask, new_logits
            else:
                cache, mask = batch_ops.append_rows(cache, mask, new_cache, new_mask, self.model.device)
                logits = np.concatenate([logits, new_logits])
                self.stats.regroups += 1
        self._sequences = fed + starting
        self._cache, self._mask, self._logits = cache, mask, logits

    def _static_next(self, tokens: np.ndarray, joining: list[Sequence]) -> None:
        """Static batches (no row operations): BatchDecoding's step for rows with mixed settings."""
        if joining:  # admitted only into an empty batch
            self._sequences = joining
            self._logits, self._cache, self._mask = self._prefill(joining, [s.prompt_ids for s in joining])
            return
        sequences = self._sequences
        live = self._live()
        if not live:
            self._reset()
            return
        sliding = [i for i in live if sequences[i].next_position >= self.window]
        if len(sliding) == len(sequences):  # every row slides: one prefill, as alone
            keep = max(1, self.window // 2)
            # Dropped first: on a GPU a live cache holds its batch size's recorded step, which
            # the new cache would then have to run without (cuda_graph.py).
            self._cache = None
            self._logits, self._cache, self._mask = self._prefill(
                sequences, [s.history[-keep:] for s in sequences])
            return
        if len(sliding) < len(live):
            # Finished rows keep their slot and step on padding, their positions clamped to the
            # window; so do sliding rows, whose cache is replaced next.
            ones = np.ones((len(sequences), 1), self._mask.dtype)
            self._mask = np.concatenate([self._mask, ones], axis=1)
            positions = [min(s.next_position, self.window - 1) for s in sequences]
            # generate's decode step: fewer numpy calls than forward, and on a GPU the batch
            # size's recorded CUDA graph replays.
            self._logits, self._cache = self.model.step(
                tokens, positions, self._mask if self.model.step_reads_mask else None, self._cache)
            for seq in sequences:
                seq.next_position += 1
        if sliding:
            self._slide_rows(sliding)

    def _slide_rows(self, sliding: list[int]) -> None:
        """Static batches: the `sliding` rows restart from the last half of their tokens, each
        prefilled on its own into its slot (model.restart_rows); the others keep their cache,
        as in BatchDecoding._slide."""
        keep = max(1, self.window // 2)
        sequences = self._sequences
        mask = self._mask.copy()
        for i, seq in enumerate(sequences):
            if seq.finish_reason or seq.owner.cancelled:  # ignored: keep its last column only
                mask[i, :-1] = 0
        contexts = [sequences[i].history[-keep:] for i in sliding]
        ids, new_mask, positions = left_pad(contexts, self.pad_id)
        logits, self._cache, self._mask = self.model.restart_rows(
            self._cache, mask, sliding, ids, new_mask, positions)
        self._logits = np.array(self._logits, dtype=np.float32)
        self._logits[sliding] = logits
        for i, context in zip(sliding, contexts):
            sequences[i].next_position = len(context)

    def _prefill(self, sequences: list[Sequence], contexts: list[list[int]]):
        """Run the contexts, left-padded, from an empty cache -> (logits (b, vocab), cache, mask)."""
        ids, mask, positions = left_pad(contexts, self.pad_id)
        logits, cache = self.model.forward(ids, mask, positions, self.model.empty_cache(len(ids)))
        for seq, context in zip(sequences, contexts):
            seq.next_position = len(context)
        return logits[:, -1, :], cache, mask
