"""The model's tokenizer (`tokenizers`), with its replacement config applied both ways."""

from __future__ import annotations

import os
from pathlib import Path

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

from .errors import ModelFormatError
from .replacements import Replacements


class TextTokenizer:
    def __init__(self, path: str | os.PathLike, replacements: Replacements | None = None):
        path = Path(path)
        try:
            self.tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for bad files
            raise ModelFormatError(f"{path}: not a loadable tokenizer.json ({str(exc)[:200]})") from None
        self.replacements = replacements or Replacements()
        vocab = self.tokenizer.get_vocab(with_added_tokens=True)
        self.replacements.check_vocab(vocab)
        # token id -> the text it stands for when generated
        self.decode_map = {vocab[t]: text for t, text in self.replacements.decode.items()}
        self.banned_ids = sorted(vocab[t] for t in self.replacements.ban)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(self.replacements.apply_encode(text)).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        encoded = self.tokenizer.encode_batch([self.replacements.apply_encode(t) for t in texts])
        return [e.ids for e in encoded]

    def decode(self, ids: list[int]) -> str:
        decoder = self.stream_decoder()
        return "".join(decoder.step(i) for i in ids)

    def stream_decoder(self) -> "StreamDecoder":
        return StreamDecoder(self)


class StreamDecoder:
    """Turns token ids into text one at a time, never splitting a multi-byte character.

    `step` returns "" while a character's bytes are still incomplete; special
    tokens become their replacement text, or nothing.
    """

    def __init__(self, tokenizer: TextTokenizer):
        self._tok = tokenizer
        self._stream = DecodeStream(skip_special_tokens=True)

    def step(self, token_id: int) -> str:
        replacement = self._tok.decode_map.get(token_id)
        if replacement is not None:
            return replacement
        return self._stream.step(self._tok.tokenizer, int(token_id)) or ""
