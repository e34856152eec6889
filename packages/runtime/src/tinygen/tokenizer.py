"""The model's tokenizer (`tokenizers`), with its replacement config applied both ways."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

from .errors import ModelFormatError
from .replacements import Replacements


class TokenIds(Mapping):
    """token -> id, asked of the tokenizer one token at a time (added tokens included):
    get_vocab() builds the whole table, ~50 ms for a vocabulary of 49k, on every load,
    where a replacement config names a handful of tokens."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer

    def __getitem__(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise KeyError(token)
        return token_id

    def __iter__(self):
        return iter(self.tokenizer.get_vocab(with_added_tokens=True))

    def __len__(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)


class TextTokenizer:
    def __init__(self, path: str | os.PathLike, replacements: Replacements | None = None):
        path = Path(path)
        try:
            self.tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for bad files
            raise ModelFormatError(f"{path}: not a loadable tokenizer.json ({str(exc)[:200]})") from None
        self.replacements = replacements or Replacements()
        vocab = TokenIds(self.tokenizer)
        self.replacements.check_vocab(vocab)
        # token id -> the text it stands for when generated
        self.decode_map = {vocab[t]: text for t, text in self.replacements.decode.items()}
        self.banned_ids = sorted(vocab[t] for t in self.replacements.ban)
        added = self.tokenizer.get_added_tokens_decoder().values()
        self.replacements.check_added({t.content for t in added})
        # Kept whole by the rules, as training kept them (a context's <|body|>, say).
        self.special_tokens = frozenset(t.content for t in added if t.special)
        self._token_bytes: list[bytes] | None = None
        self._shown_bytes: list[bytes] | None = None
        # What the template appends to every text (</s> with Llama's add_eos_token) is dropped
        # from prompts: a prompt is continued, not ended. Here, not by export rewriting the
        # template, so folders exported before are mended too, and every path a prompt takes
        # (a batch, context fields, curate) comes through here. What the template prepends
        # (BOS) stays: the model was trained with it (data/encoder.py drops the same end).
        template = template_tokens(self.tokenizer)
        self.template_end = template[1] if template else []

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        text = self.replacements.apply_encode(text, self.special_tokens)
        if len(text) > 4096:
            # encode_batch lets go of the GIL (encode does not): a megabyte takes most of a
            # second, in which a server's other threads, streams among them, would stand still.
            return without_end(self.tokenizer.encode_batch([text])[0].ids, self.template_end)
        return without_end(self.tokenizer.encode(text).ids, self.template_end)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        keep = self.special_tokens
        encoded = self.tokenizer.encode_batch([self.replacements.apply_encode(t, keep) for t in texts])
        return [without_end(e.ids, self.template_end) for e in encoded]

    def decode(self, ids: list[int]) -> str:
        decoder = self.stream_decoder()
        return "".join(decoder.step(i) for i in ids) + decoder.finish()

    def stream_decoder(self, prompt_ids: Sequence[int] | None = None) -> "StreamDecoder":
        """A decoder for one generated text; `prompt_ids`: the tokens the text continues.

        With the prompt, the first generated token is decoded as a continuation (for
        SentencePiece/Metaspace tokenizers: "Hello" + "▁world" gives " world", not the
        "world" a text's first token gives). Without it, the text decodes as a new one.
        """
        return StreamDecoder(self, prompt_ids)

    def token_text(self, token_id: int) -> str:
        """One token's text as shown to a user (partial UTF-8 bytes show as \ufffd)."""
        return self.decode_map.get(token_id) or self.tokenizer.decode([token_id], skip_special_tokens=False)

    @property
    def token_bytes(self) -> list[bytes]:
        """The raw bytes each token id stands for: the unit that can never split a character."""
        if self._token_bytes is None:
            self._token_bytes = _vocab_bytes(self.tokenizer)
        return self._token_bytes

    def ids_for_strings(self, strings) -> list[int]:
        """Every token whose text is exactly one of `strings` (e.g. " the", "<|url|>"), by its
        name or by the text it shows (a replacement token by the text it is replaced with)."""
        wanted = {s.encode("utf-8") for s in strings}
        return [i for i, (name, shown) in enumerate(zip(self.token_bytes, self.shown_bytes))
                if name in wanted or shown in wanted]

    @property
    def shown_bytes(self) -> list[bytes]:
        """The bytes each token id adds to a generated text, as `StreamDecoder` shows it.

        As `token_bytes`, except for added tokens: a special token shows nothing (the
        text skips it), and a token with a replacement shows the replacement's text.
        """
        if self._shown_bytes is None:
            shown = list(self.token_bytes)
            for i in self.tokenizer.get_added_tokens_decoder():
                if i < len(shown) and not self.tokenizer.decode([i], skip_special_tokens=True):
                    shown[i] = b""
            for i, text in self.decode_map.items():
                shown[i] = text.encode("utf-8")
            self._shown_bytes = shown
        return self._shown_bytes

    def ids_for_chars(self, chars: str) -> list[int]:
        """Every token whose text in the output could contain, or form, one of `chars`.

        Judged by the text a token shows (`shown_bytes`), not its name: EOS
        (`<|endoftext|>`) shows nothing, so no character excludes it.
        """
        return sorted(_ids_for_chars(tuple(self.shown_bytes), "".join(sorted(set(chars)))))


class StreamDecoder:
    """Turns token ids into text one at a time, never splitting a multi-byte character.

    `step` returns "" while a character's bytes are still incomplete; special
    tokens become their replacement text, or nothing. `finish` gives what a text that
    ends there still holds back (an incomplete character shows as \ufffd, as a full
    decode shows it).

    `prompt_ids`: the tokens the text continues. The stream starts from their last
    few (`PRIME_TOKENS`), so the first token decodes as it would inside the text: a
    Metaspace decoder strips the leading space of a text's first token only. Costs
    one decode of those few tokens, once; each step costs what it did without.
    """

    PRIME_TOKENS = 8

    def __init__(self, tokenizer: TextTokenizer, prompt_ids: Sequence[int] | None = None):
        self._tok = tokenizer
        self._start(self._prime(prompt_ids) if prompt_ids is not None else [])

    def _start(self, prime: list[int]) -> None:
        """A fresh DecodeStream that continues the text of the ids `prime`."""
        self._stream = DecodeStream(prime, skip_special_tokens=True) if prime else DecodeStream(
            skip_special_tokens=True)
        # While a primed stream has emitted nothing, the ids it took: to start over
        # unprimed if the tokenizer's decoding of prompt + text is not prefix-stable.
        self._pending: list[int] | None = [] if prime else None
        self._prime_ids = prime
        self._ids: list[int] = []  # every id the stream took; those from `_shown` on are held back
        self._shown = 0

    def _prime(self, prompt_ids: Sequence[int]) -> list[int]:
        # Replacement tokens never reach the stream while generating; nor here.
        tail = [int(i) for i in prompt_ids[-self.PRIME_TOKENS:] if int(i) not in self._tok.decode_map]
        # A prompt that ends inside a character: decode the text on its own, as before.
        if not tail or self._tok.tokenizer.decode(tail, skip_special_tokens=True).endswith("\ufffd"):
            return []
        return tail

    def step(self, token_id: int) -> str:
        replacement = self._tok.decode_map.get(token_id)
        if replacement is not None:
            if self._shown == len(self._ids):
                return replacement
            # It cuts a character short: its bytes so far come first (as \ufffd, as a full
            # decode shows them), and the bytes after it cannot complete it.
            prime = (self._prime_ids + self._ids[:self._shown])[-self.PRIME_TOKENS:]
            cut = self.finish()
            self._start(prime)
            return cut + replacement
        ids = self._ids
        ids.append(int(token_id))
        if self._pending is None:
            text = self._stream.step(self._tok.tokenizer, ids[-1])
        else:
            self._pending.append(ids[-1])
            try:
                text = self._stream.step(self._tok.tokenizer, ids[-1])
            except Exception:  # tokenizers: "Invalid prefix encountered"
                self._stream = DecodeStream(skip_special_tokens=True)
                text = self._stream.step(self._tok.tokenizer, self._pending)
            if text:
                self._pending = None
        if text:
            self._shown = len(ids)
            return text
        return ""

    def finish(self) -> str:
        """The text of the ids the stream still holds back, for a text that ends here:
        bytes of a character that never completed decode to \ufffd, and whatever came
        with them in their tokens (a space, say) is kept."""
        held = self._ids[self._shown:]
        if not held:
            return ""
        self._shown = len(self._ids)
        decode = self._tok.tokenizer.decode
        # Decoded after the ids before them, as the stream would: a Metaspace tokenizer
        # strips the leading space of a text's first token only.
        context = (self._prime_ids + self._ids[:-len(held)])[-self.PRIME_TOKENS:]
        before = decode(context, skip_special_tokens=True)
        whole = decode(context + held, skip_special_tokens=True)
        return whole[len(before):] if whole.startswith(before) else decode(held, skip_special_tokens=True)


def template_tokens(tokenizer: Tokenizer) -> tuple[list[int], list[int]] | None:
    """The ids the tokenizer's post-processor puts before and after every text's own (Llama's
    template: [<s>], and [</s>] with add_eos_token); None where they cannot be told apart
    from the text's."""
    bare = tokenizer.encode("a", add_special_tokens=False).ids
    full = tokenizer.encode("a").ids
    at = next((i for i in range(len(full)) if full[i:i + len(bare)] == bare), None)
    if not bare or at is None:
        return None
    return full[:at], full[at + len(bare):]


def without_end(ids: list[int], end: list[int]) -> list[int]:
    """A prompt's `ids` without the `end` its template appends (template_tokens' second list):
    a prompt is continued, not ended."""
    return ids[:-len(end)] if end and ids[-len(end):] == end else ids


def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: the printable stand-in character -> the byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, n = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def _uses(component: dict | None, kind: str) -> bool:
    if not component:
        return False
    if component.get("type") == kind:
        return True
    return any(_uses(c, kind) for c in component.get("decoders", []) or [])


def _vocab_bytes(tokenizer: Tokenizer) -> list[bytes]:
    spec = json.loads(tokenizer.to_str())
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    added = {t["content"] for t in spec.get("added_tokens", [])}
    byte_level = _uses(spec.get("decoder"), "ByteLevel")
    metaspace = _uses(spec.get("decoder"), "Metaspace") or _uses(spec.get("decoder"), "Replace")
    table = _byte_decoder()
    out = [b""] * (max(vocab.values()) + 1)
    for token, i in vocab.items():
        if token in added:
            out[i] = token.encode("utf-8")
        elif byte_level and all(c in table for c in token):
            out[i] = bytes(table[c] for c in token)
        elif m := re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", token):  # SentencePiece byte fallback
            out[i] = bytes([int(m.group(1), 16)])
        else:
            out[i] = (token.replace("\u2581", " ") if metaspace else token).encode("utf-8")
    return out


@lru_cache(maxsize=32)
def _ids_for_chars(token_bytes: tuple[bytes, ...], chars: str) -> frozenset[int]:
    """Tokens that contain, or could form with their neighbours, any of `chars`.

    A multi-byte character can be split across byte-level tokens, so a token is also
    banned when it ends with the start of the character's bytes, starts with their end,
    or lies inside them. U+FFFD is also what bytes that are no UTF-8 decode to, so
    excluding it bans every token that is not whole UTF-8 text on its own as well.
    Computed once per model and character set, one pass over the vocabulary whatever the
    number of characters.
    """
    if not chars:
        return frozenset()
    whole = sorted({ch.encode("utf-8") for ch in chars}, key=len, reverse=True)
    contains = re.compile(b"|".join(re.escape(b) for b in whole)).search
    multi = [b for b in whole if len(b) > 1]
    starts = {b[:k] for b in multi for k in range(1, len(b))}  # a token may end with one
    ends = {b[k:] for b in multi for k in range(1, len(b))}  # or begin with one
    inside = {b[i:k] for b in multi for i in range(len(b)) for k in range(i + 1, len(b) + 1)}
    no_utf8 = "\ufffd" in chars
    banned = set()
    for i, tb in enumerate(token_bytes):
        if not tb:
            continue
        # Pieces of a multi-byte character are bytes >= 0x80: a token with ASCII at an end
        # cannot end with a start of one or begin with an end of one.
        if (contains(tb) or tb in inside
                or (tb[-1] >= 0x80 and any(tb[-k:] in starts for k in (1, 2, 3)))
                or (tb[0] >= 0x80 and any(tb[:k] in ends for k in (1, 2, 3)))):
            banned.add(i)
        elif no_utf8:
            try:
                tb.decode("utf-8")
            except UnicodeDecodeError:
                banned.add(i)
    return frozenset(banned)
