"""Byte-level BPE trained from scratch on the user's corpus, as GPT-2's tokenizer was.

Byte level means every string encodes (no unknown token): the 256 bytes are the
base alphabet and merges are learned on top. Special tokens (`<|endoftext|>`
first, so it gets id 0, then the user's and the replacement tokens) are matched
before pre-tokenization and always encode as one id.

Replacement rules are applied to the corpus before training, so, for example,
URLs replaced by `<|url|>` do not spend merges on URL fragments; the special tokens
are then cut out of the training text, so none is learned in pieces (`<|`, `|>`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from tinygen.atomic import atomic_write_text
from tinygen.errors import TinygenError
from tinygen.fields import FieldSchema
from tinygen.replacements import FILE_NAME as REPLACEMENTS_FILE
from tinygen.replacements import Replacements

EOS_TOKEN = "<|endoftext|>"
BYTE_ALPHABET = 256
# tokenizers reserves memory for every token asked before it merges, and a size past the
# machine's memory aborts the process (1e9 did on 23 GB); real vocabularies are
# 8k to 256k.
MAX_VOCAB = 1 << 24


@dataclass(frozen=True)
class TokenizerConfig:
    # Final vocabulary size: 256 bytes + special tokens + learned merges.
    vocab_size: int = 8000
    # Extra special tokens after <|endoftext|>, each always one id.
    special_tokens: tuple[str, ...] = ()
    # A pair must occur this often to be merged; 2 skips one-off noise.
    min_frequency: int = 2
    # Strings/regexes replaced by special tokens before training and encoding.
    replacements: Replacements = field(default_factory=Replacements)
    # tokenizers' own progress bar.
    progress: bool = True

    def __post_init__(self) -> None:
        if any(not isinstance(t, str) or not t.strip() for t in self.special_tokens):
            raise TinygenError(
                f"special tokens must be non-empty strings, got {list(self.special_tokens)}")
        word = next((t for t in self.all_special_tokens() if all(c.isalnum() or c.isspace() for c in t)),
                    None)
        if word is not None:
            # Special tokens are matched before anything else and skipped when decoding:
            # a plain word would be cut out of every word that holds it ("the" from "there").
            raise TinygenError(f"special token {word!r} is a plain word: it would be cut out of every "
                               f"word that contains it and vanish from decoded text; mark it, "
                               f"e.g. <|{word.strip()}|>")
        if not isinstance(self.min_frequency, int) or self.min_frequency < 1:
            raise TinygenError(f"min_frequency must be an integer >= 1, got {self.min_frequency!r}")
        if any(rule.token == EOS_TOKEN for rule in self.replacements.encode):
            raise TinygenError(f"a replacement to {EOS_TOKEN} would end a document at every match; "
                               f"replace with a token of its own, e.g. <|url|>")
        if EOS_TOKEN in self.replacements.ban:
            raise TinygenError(f"banning {EOS_TOKEN} would keep the model from ever ending a text; "
                               f"drop --ban {EOS_TOKEN}")
        least = BYTE_ALPHABET + len(self.all_special_tokens())
        if not isinstance(self.vocab_size, int) or self.vocab_size < least:
            raise TinygenError(
                f"vocab_size must be at least {least} (256 bytes + {least - BYTE_ALPHABET} "
                f"special token{'s' * (least - BYTE_ALPHABET != 1)}), got {self.vocab_size!r}"
            )
        if self.vocab_size > MAX_VOCAB:
            raise TinygenError(f"vocab_size must be at most {MAX_VOCAB} (real vocabularies are "
                               f"8k to 256k tokens), got {self.vocab_size}")

    def all_special_tokens(self) -> list[str]:
        """<|endoftext|>, the user's, then every token the replacements name; no duplicates."""
        tokens = [EOS_TOKEN, *self.special_tokens, *sorted(self.replacements.tokens())]
        return list(dict.fromkeys(tokens))


def train_tokenizer(documents: Sequence[str], config: TokenizerConfig) -> Tokenizer:
    if not any(doc.strip() for doc in documents):
        raise TinygenError("cannot train a tokenizer on an empty corpus")
    specials = config.all_special_tokens()
    tokenizer = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    # Encoding splits the text at the special tokens before pre-tokenizing; training does not
    # (BpeTrainer's special_tokens only reserve their ids), so it would learn `<|`, `|>` and
    # `title` from their text. This split, for the training only, cuts them out as encoding
    # does; longest first, so `<|a|>x` is not cut as `<|a|>`.
    alternatives = "|".join(re.escape(t) for t in sorted(specials, key=len, reverse=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(alternatives), "removed"), byte_level])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=config.progress,
    )
    # No rule matches into a special token: they are kept whole, as encoding keeps them.
    texts = (config.replacements.apply_encode(doc, specials) for doc in documents)
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(documents))
    tokenizer.pre_tokenizer = byte_level  # the saved one: encoding splits at the specials itself
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, path: str | os.PathLike,
                   replacements: Replacements | None = None,
                   schema: FieldSchema | None = None) -> Path:
    """Write tokenizer.json and, with rules or fields, replacements.json and fields.json beside
    it, each atomically. tokenizer.json goes last: a run killed before it leaves no new
    tokenizer missing the rules its special tokens were made for."""
    path = Path(path)
    if replacements is not None and replacements.tokens():
        replacements.save(path.parent / REPLACEMENTS_FILE)
    if schema is not None:
        schema.save(path.parent)
    atomic_write_text(path, tokenizer.to_str(pretty=True))
    return path
