"""Prompts to token ids, checked against the model: the part of TextGenerator that needs no
onnxruntime session, so the Ray driver refuses a bad prompt before any actor starts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

from .config import check_utf8, plain
from .errors import ModelFormatError, PromptTooLong, TinygenError
from .manifest import Manifest
from .replacements import Replacements
from .tokenizer import TextTokenizer

Prompt = Union[str, Sequence[int]]  # text, or token ids


class PromptEncoder:
    def __init__(self, manifest: Manifest, tokenizer: TextTokenizer):
        self.manifest = manifest
        self.tokenizer = tokenizer

    @classmethod
    def load(cls, model_dir: str | os.PathLike, manifest: Manifest,
             replacements: str | os.PathLike | None = None) -> "PromptEncoder":
        """The model's tokenizer, with `replacements` (a replacements.json) or the model's own."""
        model_dir = Path(model_dir)
        if replacements is None and manifest.replacements_file:
            replacements = model_dir / manifest.replacements_file
        loaded = Replacements.load(replacements) if replacements is not None else None
        return cls(manifest, TextTokenizer(model_dir / manifest.tokenizer_file, loaded))

    def encode(self, prompt, single: str | None = None) -> list[list[int]]:
        """One prompt or a list of them -> token ids per prompt. single: the name of a method
        that takes one prompt only, for the error that refuses a list."""
        prompt = as_prompt(prompt)
        if isinstance(prompt, str) or is_token_ids(prompt) or _other_ids(prompt):
            prompts = [prompt]  # ids that are not all integers: _encode_one names the first
        elif not isinstance(prompt, (list, tuple)):
            # bytes would iterate as ints, a number not at all
            kinds = "a string or a list of token ids" if single else \
                "a string, a list of token ids or a list of prompts"
            raise TinygenError(f"a prompt must be {kinds}, got {type(prompt).__name__}")
        elif single:
            raise TinygenError(f"{single} takes one prompt (a string or a list of token ids), "
                               f"not a list of prompts")
        else:
            prompts = list(prompt)
            if not prompts:
                raise TinygenError("no prompts given")
        return [self._encode_one(p) for p in prompts]

    def _encode_one(self, prompt) -> list[int]:
        vocab = self.manifest.vocab_size
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(check_utf8(prompt, "the prompt"))
            if ids and max(ids) >= vocab:  # onnxruntime would fail on it, blaming the export
                raise ModelFormatError(
                    f"{self.manifest.tokenizer_file}: it gives the prompt token id {max(ids)}, "
                    f"outside the model's vocabulary (0..{vocab - 1}): it is another model's "
                    f"tokenizer; put the model's own tokenizer.json in its folder")
        elif is_token_ids(prompt) or (isinstance(prompt, (list, tuple)) and not prompt):
            ids = [int(i) for i in prompt]  # no ids: start_ids(), below
            bad = [i for i in ids if not 0 <= i < vocab]
            if bad:
                raise TinygenError(f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})")
        elif _other_ids(prompt):  # [1.5] was "a prompt must be ... a list of token ids, got list"
            bad = next(i for i in prompt if not (isinstance(i, int) and not isinstance(i, bool)))
            raise TinygenError(f"token ids must be integers, got {bad!r}")
        else:
            raise TinygenError(f"a prompt must be a string or a list of token ids, got {type(prompt).__name__}")
        if not ids:
            ids = self.start_ids()
        window = self.manifest.context_window
        if len(ids) >= window:
            raise PromptTooLong(f"prompt is {len(ids)} tokens; the model's window is {window} tokens, "
                                f"so the prompt must be shorter than that")
        return ids

    def start_ids(self) -> list[int]:
        """What an empty prompt starts from: BOS, or the end-of-text token as in GPT-2."""
        m = self.manifest
        start = m.bos_token_id if m.bos_token_id is not None else \
            (m.eos_token_ids[0] if m.eos_token_ids else None)
        if start is None:
            raise TinygenError("empty prompt, and the model has no BOS/EOS token to start from")
        return [start]


def as_prompt(value):
    """None is no prompt (""); numpy token ids are Python ints."""
    return "" if value is None else plain(value)


def is_token_ids(value) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 0 and \
        all(isinstance(i, int) and not isinstance(i, bool) for i in value)


def _other_ids(value) -> bool:
    """Numbers meant as token ids, one of them no int ([1.5], [1, True]): no list of prompts."""
    return isinstance(value, (list, tuple)) and len(value) > 0 and not is_token_ids(value) and \
        all(isinstance(i, (int, float)) for i in value)
