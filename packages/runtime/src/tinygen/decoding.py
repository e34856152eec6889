"""The decoding loop for one batch: prefill, then one token per step for every row.

`BatchDecoding` is step-wise (as in onnxruntime-genai): `step()` generates one
token per unfinished row and returns the text each row gained, so `generate`
collects it and `stream` yields it. Stop strings are held back while they may
still be forming, so streamed text never shows a stop string or half of one.

Past the model's window a row slides: when its next token would fall past the
window, it keeps the last half of its tokens as context and its cache is rebuilt
from them in a prefill of its own (`_slide`), written into its rows of the batch's
cache; the other rows' caches are not touched. So a text slides where it would
alone and is the same text in any batch. That costs one prefill per half-window of
a row's tokens, and memory stays flat however long the text.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from typing import Collection, Sequence

import numpy as np

from .batch_memory import check_batch_memory, sure_tokens
from .config import GenerationConfig
from .errors import TinygenError
from .onnx_model import OnnxCausalLM
from .processors import build_processors, softmax
from .sampling import GreedySampler, RandomSampler
from .tokenizer import StreamDecoder, TextTokenizer


@dataclass(frozen=True)
class TokenProb:
    """One generated token: its id, text and probability, and the top alternatives."""

    token_id: int
    text: str
    prob: float
    top: tuple[tuple[str, float], ...] = ()


class Completion(str):
    """A generated text (it is a `str`) that also says how to make it again.

    seed: the sequence's own seed (None for greedy decoding, which needs none);
    token_ids: the generated tokens; finish_reason: "eos", "stop", "length"
    (max_new_tokens reached) or "window" (the window is full and sliding is off);
    token_probs: when return_probs was set, one TokenProb per token of the text: every
    generated token but those wholly inside the stop string a text was cut at (the token
    the cut falls in is kept whole), so the tokens' texts line up with the text's.
    """

    seed: int | None
    token_ids: tuple[int, ...]
    finish_reason: str
    token_probs: tuple[TokenProb, ...]

    def __new__(cls, text: str, seed: int | None, token_ids: tuple[int, ...], finish_reason: str,
                token_probs: tuple[TokenProb, ...] = ()):
        self = super().__new__(cls, text)
        self.seed, self.token_ids, self.finish_reason = seed, token_ids, finish_reason
        self.token_probs = token_probs
        return self

    def __reduce__(self):  # str's own would remake it from the text alone (pickle, copy)
        # type(self): a subclass comes back as itself, with its own attributes (the state).
        return type(self), (str(self), self.seed, self.token_ids, self.finish_reason,
                            self.token_probs), _own_attributes(self, Completion)


class Piece(str):
    """A streamed piece of text, with the probabilities of the tokens that made it."""

    token_probs: tuple[TokenProb, ...]

    def __new__(cls, text: str, token_probs: tuple[TokenProb, ...] = ()):
        self = super().__new__(cls, text)
        self.token_probs = token_probs
        return self

    def __reduce__(self):
        return type(self), (str(self), self.token_probs), _own_attributes(self, Piece)


def _own_attributes(value: str, base: type) -> dict | None:
    """What a subclass of `base` set on `value` beyond base's fields (pickle's state), if anything."""
    known = base.__annotations__
    return {k: v for k, v in vars(value).items() if k not in known} or None


class SequenceState:
    """One sequence's progress: its tokens and text, what was handed out, and why it ended.

    The rules that make a text what it is live here, shared by BatchDecoding and the
    serving engine: where it ends (EOS, stop string, length, window), which text may
    be shown yet (stop strings held back), and the probabilities recorded per token.
    """

    def __init__(self, prompt_ids: Sequence[int], seed: int | None, decoder: StreamDecoder,
                 config: GenerationConfig, eos: frozenset[int] | set[int], window: int):
        self.prompt_ids, self.seed, self.decoder = list(prompt_ids), seed, decoder
        self.config, self.eos, self.window = config, eos, window
        self.generated: list[int] = []
        self.probs: list[TokenProb] = []
        self.text = ""
        self.undecoded = 0  # generated tokens not yet in `text` (see advance's `show`)
        self.emitted = 0  # characters of `text` already handed out
        self.stop_free = 0  # characters of `text` searched for stop strings, none found
        self.probs_emitted = 0
        self.starts: list[int] = []  # with stop strings: where each token's text begins in `text`
        self.finish_reason: str | None = None

    @property
    def history(self) -> list[int]:
        return self.prompt_ids + self.generated

    @property
    def may_end(self) -> bool:
        """Whether an end token may come now (min_new_tokens)."""
        return len(self.generated) >= self.config.min_new_tokens

    def record_probs(self, probs: np.ndarray, token: int, token_text) -> None:
        """probs: this step's distribution (vocab,); token_text: id -> shown text."""
        top = ()
        top_n = self.config.top_n
        if top_n:
            best = np.argpartition(-probs, min(top_n, len(probs) - 1))[:top_n]
            best = best[np.argsort(-probs[best], kind="stable")]
            best = best[probs[best] > 0]  # a token the filters removed is no alternative
            top = tuple((token_text(int(i)), float(probs[i])) for i in best)
        self.probs.append(TokenProb(token, token_text(token), float(probs[token]), top))

    def advance(self, token: int, position: int, show: bool = True) -> Piece | None:
        """Take the token sampled at `position`; returns the text that can be shown now.

        show=False (nobody reads the pieces, as in `generate`): the token's text is left
        for later, since one cold call into the tokenizer per token costs more than a
        batch of warm ones at the end, and None comes back. Stop strings need the text
        as it grows, so with stop strings it is decoded every step anyway.
        """
        if token in self.eos:
            self.finish_reason = "eos"
            if self.probs:
                self.probs.pop()  # the EOS token is not part of the text
        else:
            self.generated.append(token)
            self.undecoded += 1
            stops = self.config.stop
            if stops:
                self.starts.append(len(self.text))
            if show or stops:
                self.decode_pending()
            if stops:
                # Only where a stop could end in the new text: searching the whole text each
                # step made a long text's generation cost the square of its length.
                searched = self.stop_free
                cut = min((i for i in (self.text.find(s, max(0, searched - len(s) + 1))
                                       for s in stops) if i >= 0), default=-1)
                if cut >= 0:
                    self.text, self.finish_reason = self.text[:cut], "stop"
                    del self.probs[bisect_left(self.starts, cut):]  # the stop string's own tokens
                self.stop_free = len(self.text)
            if not self.finish_reason:
                if len(self.generated) >= self.config.max_new_tokens:
                    self.finish_reason = "length"
                elif position + 1 >= self.window and not self.config.slide_window:
                    self.finish_reason = "window"
        if not show:
            return None
        self.decode_pending()
        end = len(self.text) if self.finish_reason else \
            len(self.text) - _partial_stop(self.text, self.config.stop)
        text, self.emitted = self.text[self.emitted:end], max(self.emitted, end)
        if self.finish_reason:
            upto = len(self.probs)
        elif self.config.stop:  # the tokens whose text begins in what is shown
            upto = max(self.probs_emitted, min(len(self.probs), bisect_left(self.starts, end)))
        else:
            upto = len(self.probs) if text else self.probs_emitted
        probs, self.probs_emitted = tuple(self.probs[self.probs_emitted:upto]), upto
        return Piece(text, probs)

    def decode_pending(self) -> None:
        """Bring `text` up to the last generated token; once the text has ended (but for
        a stop string, which cut it), with what the decoder still held back."""
        if self.undecoded:
            step = self.decoder.step
            self.text += "".join([step(t) for t in self.generated[-self.undecoded:]])
        self.undecoded = 0
        if self.finish_reason and self.finish_reason != "stop":
            self.text += self.decoder.finish()

    def completion(self) -> Completion:
        self.decode_pending()
        if self.finish_reason is None:  # ended from outside: the text ends here all the same
            self.text += self.decoder.finish()
        return Completion(self.text, self.seed, tuple(self.generated), self.finish_reason or "length",
                          tuple(self.probs))


def check_room(config: GenerationConfig, prompts: Sequence[Sequence[int]], window: int) -> None:
    """Refuse a min_new_tokens that the window cannot hold. Without sliding a text ends where
    the window does, window - len(prompt) tokens on, min_new_tokens or not: that many is all
    the longest prompt's text can be sure of. (With sliding there is no such end.)"""
    if config.slide_window or not config.min_new_tokens or not prompts:
        return
    longest = max(len(p) for p in prompts)
    room = window - longest
    if config.min_new_tokens > room:
        which = "the longest prompt" if len(prompts) > 1 else "the prompt"
        raise TinygenError(f"min_new_tokens must be at most {room} with slide_window=False: the room "
                           f"the window ({window} tokens) leaves after {which} ({longest} tokens), "
                           f"got {config.min_new_tokens}; lower min_new_tokens, or let the window slide")


def left_pad(contexts: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of token ids -> (ids, attention_mask, position_ids), each (batch, longest).

    Left padding, so every row's next token lands in the same last column.
    """
    width = max(len(c) for c in contexts)
    ids = np.full((len(contexts), width), pad_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, context in enumerate(contexts):
        ids[i, width - len(context):] = context
        mask[i, width - len(context):] = 1
    return ids, mask, np.maximum(mask.cumsum(axis=1) - 1, 0)


def _partial_stop(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that begins some stop string (to hold back).

    Only the places in the text's tail that hold a stop's first character are tried, longest
    first: trying every length cost a step time in the square of a long stop string's length."""
    best = 0
    for stop in stops:
        i = text.find(stop[0], max(0, len(text) - len(stop) + 1))
        while i >= 0 and len(text) - i > best:
            # A few characters first: most places fail there, without copying the tail.
            if stop.startswith(text[i:i + 16]) and stop.startswith(text[i:]):
                best = len(text) - i
                break
            i = text.find(stop[0], i + 1)
    return best


def hold_back_ends(logits: np.ndarray, rows: Sequence[SequenceState],
                   ends: Collection[int]) -> np.ndarray:
    """The logits with the end tokens ruled out for the rows still under min_new_tokens (as
    transformers' MinNewTokensLengthLogitsProcessor); the same array when no row is."""
    early = [i for i, row in enumerate(rows) if not row.finish_reason and not row.may_end]
    if not early or not ends:
        return logits
    out = logits.copy()
    out[np.ix_(early, sorted(ends))] = -np.inf
    return out


class BatchDecoding:
    def __init__(self, model: OnnxCausalLM, tokenizer: TextTokenizer, prompts: list[list[int]],
                 seeds: list[int | None], config: GenerationConfig, pad_id: int,
                 suppress: Sequence[int] = (), end_ids: Sequence[int] = ()):
        self.model, self.tokenizer, self.config, self.pad_id = model, tokenizer, config, pad_id
        self.window = model.manifest.context_window
        # Tokens that end a text: EOS, and the next field's token under context conditioning.
        self.eos = (set(model.manifest.eos_token_ids) if config.stop_at_eos else set()) | set(end_ids)
        # Before any buffer is made: a batch too large for memory is one line, not a process killed.
        check_batch_memory(model, [len(p) for p in prompts], sure_tokens(config, self.eos))
        self.rows = [SequenceState(p, s, tokenizer.stream_decoder(p), config, self.eos, self.window)
                     for p, s in zip(prompts, seeds)]
        self.processors = build_processors(config, suppress=suppress)
        self.needs_history = any(p.needs_history for p in self.processors)
        self.sampler = GreedySampler() if config.greedy else RandomSampler(seeds)
        self.slides = 0
        self.done = False  # every row finished
        self._prefill([r.prompt_ids for r in self.rows])

    def _prefill(self, contexts: list[list[int]]) -> None:
        ids, mask, positions = left_pad(contexts, self.pad_id)
        logits, self.cache = self.model.forward(ids, mask, positions, self.model.empty_cache(len(ids)))
        self.logits = logits[:, -1, :]
        # The mask grows a column of ones a step (finished rows included: static batch). Only
        # the width is counted here; `mask` builds the columns when a model's steps read them.
        self._mask = mask
        self._width = mask.shape[1]
        self.next_position = (positions[:, -1] + 1).tolist()

    @property
    def mask(self) -> np.ndarray:
        """The attention mask so far, (batch, width): left padding 0, tokens 1."""
        if self._width > self._mask.shape[1]:  # room for as many steps again
            grown = np.ones((self._mask.shape[0], 2 * self._width), np.int64)
            grown[:, :self._mask.shape[1]] = self._mask
            self._mask = grown
        return self._mask[:, :self._width]

    def step(self, show: bool = True) -> list[Piece] | None:
        """Generate one token for each unfinished row; returns the text each row gained.

        show=False: nothing reads the text until `completions` (see SequenceState.advance),
        and None comes back. A step runs once per token, after a model run that has pushed
        everything else out of the CPU caches, so it keeps to few numpy calls.
        """
        histories = [r.history for r in self.rows] if self.needs_history else None
        logits = self.logits
        if self.config.min_new_tokens:
            logits = hold_back_ends(logits, self.rows, self.eos)
        for processor in self.processors:
            logits = processor(logits, histories)
        tokens = self.sampler(logits)
        if self.config.return_probs:
            self._record_probs(self.logits if self.config.raw_probs else logits, tokens)
        pieces, furthest = [], -1  # the furthest next position of a row still going
        for row, token, position in zip(self.rows, tokens.tolist(), self.next_position):
            pieces.append(Piece("") if row.finish_reason else row.advance(token, position, show))
            if not row.finish_reason:
                furthest = max(furthest, position)
        self.done = furthest < 0
        if furthest >= self.window:
            self._slide(tokens)
        elif furthest >= 0:
            self._step_model(tokens)
        return pieces if show else None

    def _step_model(self, tokens: np.ndarray) -> None:
        """One model step for every row. Finished rows keep a slot (static batch shape):
        their tokens are ignored, and their positions clamped so they never pass the window."""
        last = self.window - 1
        positions = [p if p < last else last for p in self.next_position]
        self._width += 1
        self.logits, self.cache = self.model.step(
            tokens, positions, self.mask if self.model.step_reads_mask else None, self.cache)
        self.next_position = [p + 1 for p in self.next_position]

    def _slide(self, tokens: np.ndarray) -> None:
        """A row's next token would fall past the window: that row (every row that got there
        this step) restarts its cache from the last half of its tokens, prefilled on its own,
        as it would alone. The other rows take their step as usual, their cache untouched."""
        keep = max(1, self.window // 2)
        self.slides += 1
        sliding = [i for i, (row, position) in enumerate(zip(self.rows, self.next_position))
                   if not row.finish_reason and position >= self.window]
        if len(sliding) == len(self.rows):  # the whole batch (a text alone): one prefill
            self._prefill([r.history[-keep:] for r in self.rows])
            return
        if any(not row.finish_reason and position < self.window
               for row, position in zip(self.rows, self.next_position)):
            # The sliding rows step too, as finished rows do (clamped to the window's last
            # position): whatever they write is replaced just below.
            self._step_model(tokens)
        mask = self.mask.copy()
        for i, row in enumerate(self.rows):
            if row.finish_reason:  # its logits are ignored: keep its last column only, so
                mask[i, :-1] = 0  # it does not hold the cache wide (concat)
        ids, new_mask, positions = left_pad([self.rows[i].history[-keep:] for i in sliding],
                                            self.pad_id)
        logits, self.cache, self._mask = self.model.restart_rows(
            self.cache, mask, sliding, ids, new_mask, positions)
        self._width = self._mask.shape[1]
        self.logits = np.array(self.logits, dtype=np.float32)  # its own, to write rows into
        self.logits[sliding] = logits
        for i, position in zip(sliding, (positions[:, -1] + 1).tolist()):
            self.next_position[i] = position

    def _record_probs(self, logits: np.ndarray, tokens: np.ndarray) -> None:
        probs = softmax(logits.astype(np.float64))
        for row, p, token in zip(self.rows, probs, tokens.tolist()):
            if not row.finish_reason:
                row.record_probs(p, token, self.tokenizer.token_text)

    def completions(self) -> list[Completion]:
        return [r.completion() for r in self.rows]
