"""The decoding loop for one batch: prefill, then one token per step for every row.

`BatchDecoding` is step-wise (as in onnxruntime-genai): `step()` generates one
token per unfinished row and returns the text each row gained, so `generate`
collects it and `stream` yields it. Stop strings are held back while they may
still be forming, so streamed text never shows a stop string or half of one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .config import GenerationConfig
from .onnx_model import OnnxCausalLM
from .processors import build_processors
from .sampling import GreedySampler, RandomSampler
from .tokenizer import StreamDecoder, TextTokenizer


class Completion(str):
    """A generated text (it is a `str`) that also says how to make it again.

    seed: the sequence's own seed (None for greedy decoding, which needs none);
    token_ids: the generated tokens; finish_reason: "eos", "stop", "length"
    (max_new_tokens reached) or "window" (the model's context is full).
    """

    seed: int | None
    token_ids: tuple[int, ...]
    finish_reason: str

    def __new__(cls, text: str, seed: int | None, token_ids: tuple[int, ...], finish_reason: str):
        self = super().__new__(cls, text)
        self.seed, self.token_ids, self.finish_reason = seed, token_ids, finish_reason
        return self


@dataclass
class _Row:
    prompt_ids: list[int]
    seed: int | None
    decoder: StreamDecoder
    generated: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0  # characters of `text` already handed out
    finish_reason: str | None = None


def _partial_stop(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that begins some stop string (to hold back)."""
    best = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:k]):
                best = k
                break
    return best


class BatchDecoding:
    def __init__(self, model: OnnxCausalLM, tokenizer: TextTokenizer, prompts: list[list[int]],
                 seeds: list[int | None], config: GenerationConfig, pad_id: int):
        self.model, self.config = model, config
        self.window = model.manifest.context_window
        self.eos = set(model.manifest.eos_token_ids) if config.stop_at_eos else set()
        self.rows = [_Row(list(p), s, tokenizer.stream_decoder()) for p, s in zip(prompts, seeds)]
        self.processors = build_processors(config, suppress=tokenizer.banned_ids)
        self.sampler = GreedySampler() if config.greedy else RandomSampler(seeds)
        self._prefill(pad_id)

    def _prefill(self, pad_id: int) -> None:
        # Left padding, so every row's next token lands in the same last column.
        width = max(len(r.prompt_ids) for r in self.rows)
        ids = np.full((len(self.rows), width), pad_id, dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, row in enumerate(self.rows):
            ids[i, width - len(row.prompt_ids):] = row.prompt_ids
            mask[i, width - len(row.prompt_ids):] = 1
        positions = np.maximum(mask.cumsum(axis=1) - 1, 0)
        logits, self.cache = self.model.forward(ids, mask, positions, self.model.empty_cache(len(ids)))
        self.logits = logits[:, -1, :]
        self.mask = mask
        self.next_position = positions[:, -1] + 1

    @property
    def done(self) -> bool:
        return all(r.finish_reason for r in self.rows)

    def step(self) -> list[str]:
        """Generate one token for each unfinished row; returns the text each row gained."""
        histories = [r.prompt_ids + r.generated for r in self.rows]
        logits = self.logits
        for processor in self.processors:
            logits = processor(logits, histories)
        tokens = self.sampler(logits)
        pieces = []
        for row, token, position in zip(self.rows, tokens.tolist(), self.next_position.tolist()):
            pieces.append("" if row.finish_reason else self._advance(row, token, position))
        if not self.done:
            # Finished rows keep a slot (static batch shape); their tokens are ignored.
            self.mask = np.concatenate([self.mask, np.ones((len(self.rows), 1), np.int64)], axis=1)
            logits, self.cache = self.model.forward(
                tokens[:, None], self.mask, self.next_position[:, None], self.cache)
            self.logits = logits[:, -1, :]
            self.next_position = self.next_position + 1
        return pieces

    def _advance(self, row: _Row, token: int, position: int) -> str:
        if token in self.eos:
            row.finish_reason = "eos"
        else:
            row.generated.append(token)
            row.text += row.decoder.step(token)
            stops = self.config.stop
            if stops:
                cut = min((i for i in (row.text.find(s, max(0, row.emitted - len(s)))
                                       for s in stops) if i >= 0), default=-1)
                if cut >= 0:
                    row.text, row.finish_reason = row.text[:cut], "stop"
            if not row.finish_reason:
                if len(row.generated) >= self.config.max_new_tokens:
                    row.finish_reason = "length"
                elif position + 1 >= self.window:
                    row.finish_reason = "window"
        end = len(row.text) if row.finish_reason else len(row.text) - _partial_stop(row.text, self.config.stop)
        piece, row.emitted = row.text[row.emitted:end], max(row.emitted, end)
        return piece

    def completions(self) -> list[Completion]:
        return [Completion(r.text, r.seed, tuple(r.generated), r.finish_reason or "length")
                for r in self.rows]
