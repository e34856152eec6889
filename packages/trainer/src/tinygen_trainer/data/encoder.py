"""Encoder: a tokenizer plus the replacement rules, turning documents into one token stream.

The stream is every document's ids followed by EOS, so a model trained on random
windows of it sees where documents end and learns to stop. That EOS ends a document
alone: what the tokenizer's template appends to every text (Llama's add_eos_token
</s>) is dropped, as the runtime drops it from prompts; what it prepends (BOS)
stays. Encoding goes through the `tokenizers` batch path, which spreads documents
over every core. A huge document (a corpus of one text file) is cut into pieces
where the cut changes no token, so it too encodes on every core, in bounded memory.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from tokenizers import Tokenizer

from tinygen.errors import TinygenError
from tinygen.replacements import Replacements
from tinygen.tokenizer import template_tokens, without_end

from ..bars import progress_bar

# Tried in order when neither the caller nor the model names the end-of-text token.
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>")
# A batch is cut at this many characters so memory stays bounded on huge corpora.
BATCH_CHARS = 1 << 22
BATCH_DOCS = 4096
# A longer document is encoded in pieces of about this many characters: tokenizers holds some
# 200 bytes a token while it encodes, so a 40 MB text file encoded whole took 6.5 GB.
PIECE_CHARS = 1 << 20
# A piece ends at a line end or before a space, at one of the first CUT_TRIES there where the
# CUT_CONTEXT characters either side encode to the same tokens cut or whole; with no such place
# (a tokenizer that marks where each text begins, say), the rest of the document is one piece.
CUT_AT = re.compile(r"(?<=\n)|(?= )")
CUT_TRIES = 32
CUT_CONTEXT = 1 << 10


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    if path.is_dir():  # `tokenizer -o tok` writes tok/tokenizer.json: the folder is easily given
        raise TinygenError(f"tokenizer {path} is a folder; give the tokenizer file itself, "
                           f"e.g. {path / 'tokenizer.json'}")
    if not path.is_file():
        raise TinygenError(f"tokenizer not found: {path}")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for bad files
        raise TinygenError(f"{path}: not a loadable tokenizer.json ({str(exc)[:200]})") from None


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned type that holds every id: half the memory for vocabularies <= 65536."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def canonical_sha256(data: object) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Encoder:
    tokenizer: Tokenizer
    eos_id: int
    replacements: Replacements = field(default_factory=Replacements)
    # sha256 of the tokenizer.json contents, keys sorted, no whitespace: files that
    # differ only in formatting encode identically and share a fingerprint.
    fingerprint: str = field(init=False)
    # sha256 of the replacement rules (None without rules): they change the tokens too.
    replacements_fingerprint: str | None = field(init=False)
    # Kept whole by the rules (a record's field tokens), as the runtime keeps them.
    special_tokens: frozenset = field(init=False)
    # (ids before, ids after) a text that the tokenizer's template adds, those after dropped;
    # None where they cannot be told from the text's.
    template: tuple[list[int], list[int]] | None = field(init=False)

    def __post_init__(self) -> None:
        # A tokenizer.json saved by transformers may carry truncation or padding,
        # which would silently cut or pad whole documents.
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        vocab = self.tokenizer.get_vocab(with_added_tokens=True)
        self.replacements.check_vocab(vocab, source="replacements")
        added = self.tokenizer.get_added_tokens_decoder().values()
        self.replacements.check_added({t.content for t in added}, source="replacements")
        object.__setattr__(self, "special_tokens", frozenset(t.content for t in added if t.special))
        object.__setattr__(self, "template", template_tokens(self.tokenizer))
        fingerprint = canonical_sha256(json.loads(self.tokenizer.to_str()))
        rules = self.replacements.to_json()["encode"] if self.replacements.encode else None
        object.__setattr__(self, "fingerprint", fingerprint)
        object.__setattr__(self, "replacements_fingerprint", rules and canonical_sha256(rules))

    @classmethod
    def load(cls, tokenizer_path: str | Path, replacements: Replacements | None = None,
             eos_token: str | None = None) -> "Encoder":
        tokenizer = load_tokenizer(tokenizer_path)
        return cls(tokenizer, find_eos_id(tokenizer, eos_token, source=str(tokenizer_path)),
                   replacements or Replacements())

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def dtype(self) -> np.dtype:
        return token_dtype(self.vocab_size)

    def encode(self, documents: Sequence[str], progress: bool = True,
               desc: str = "encoding") -> tuple[np.ndarray, np.ndarray]:
        """Documents -> (tokens (N,) uint16/uint32, doc_ends (D,) int64).

        doc_ends[i] is the exclusive end of document i in tokens, its EOS included.
        """
        drop = len(self.template[1]) if self.template else 0
        # encode_batch_fast (tokenizers >= 0.21) skips computing offsets we never use.
        encode_batch = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)
        specials = self.special_tokens
        chunks: list[np.ndarray] = []
        lengths: list[int] = []
        total_chars = sum(len(d) for d in documents)
        n_tokens = 0
        with progress_bar(total_chars, desc, "char", unit_scale=True, enabled=progress,
                          leave=False) as bar:
            for batch in _batches(documents):
                shown = bar.n  # a long document's pieces move the bar as they are encoded
                texts = [self.replacements.apply_encode(d, specials) for d in batch]
                cuts = [self._cuts(t) for t in texts]
                ids = [e.ids[:len(e.ids) - drop]
                       for e in encode_batch([t for t, c in zip(texts, cuts) if not c])]
                if len(ids) == len(texts):  # no long document: the batch is one chunk
                    sizes = [len(i) + 1 for i in ids]
                    flat = chain.from_iterable(i + [self.eos_id] for i in ids)
                    chunks.append(np.fromiter(flat, dtype=self.dtype, count=sum(sizes)))
                else:
                    whole = iter(ids)
                    docs = [self._encode_pieces(t, c, encode_batch, bar) if c else
                            np.asarray(next(whole) + [self.eos_id], dtype=self.dtype)
                            for t, c in zip(texts, cuts)]
                    sizes = [d.size for d in docs]
                    chunks.extend(docs)
                lengths.extend(sizes)
                n_tokens += sum(sizes)
                bar.update(sum(len(d) for d in batch) - (bar.n - shown))
                bar.set_postfix(tokens=f"{n_tokens:,}", refresh=False)
        tokens = np.concatenate(chunks) if chunks else np.zeros(0, dtype=self.dtype)
        return tokens, np.cumsum(np.asarray(lengths, dtype=np.int64))

    def prompt_ids(self, text: str) -> list[int]:
        """`text`'s ids as a prompt to continue, as the runtime encodes one: the rules applied
        as to the corpus, and without what the template appends (an end of text)."""
        ids = self.tokenizer.encode(self.replacements.apply_encode(text, self.special_tokens)).ids
        return without_end(ids, self.template[1]) if self.template else ids

    def _cuts(self, text: str) -> list[int]:
        """Where to cut `text` into pieces of about PIECE_CHARS whose tokens, joined, are the
        whole text's (none for a short text)."""
        cuts, start = [], 0
        while len(text) - start > PIECE_CHARS:
            places = (m.start() for m in CUT_AT.finditer(text, start + PIECE_CHARS, len(text) - 1))
            cut = next((c for c in islice(places, CUT_TRIES) if self._cuts_clean(text, c)), None)
            if cut is None:
                break
            cuts.append(cut)
            start = cut
        return cuts

    def _cuts_clean(self, text: str, cut: int) -> bool:
        left, right = text[max(0, cut - CUT_CONTEXT):cut], text[cut:cut + CUT_CONTEXT]
        whole, *halves = self.tokenizer.encode_batch([left + right, left, right],
                                                     add_special_tokens=False)
        return whole.ids == halves[0].ids + halves[1].ids

    def _encode_pieces(self, text: str, cuts: list[int], encode_batch, bar) -> np.ndarray:
        """One long document's tokens and EOS, its pieces encoded a batch at a time."""
        if self.template is None:  # no telling the added tokens from the text's: encode whole
            return np.asarray(encode_batch([text])[0].ids + [self.eos_id], dtype=self.dtype)
        bounds = [0, *cuts, len(text)]
        spans = list(zip(bounds, bounds[1:]))
        parts = [np.asarray(self.template[0], dtype=self.dtype)]
        step = max(1, BATCH_CHARS // PIECE_CHARS)
        for i in range(0, len(spans), step):
            encoded = encode_batch([text[a:b] for a, b in spans[i:i + step]],
                                   add_special_tokens=False)
            parts.extend(np.asarray(e.ids, dtype=self.dtype) for e in encoded)
            bar.update(sum(b - a for a, b in spans[i:i + step]))
        parts.append(np.asarray([self.eos_id], dtype=self.dtype))
        return np.concatenate(parts)

    def describe(self) -> dict[str, object]:
        """What a token cache records to recognise this encoder later."""
        info: dict[str, object] = {
            "tokenizer_sha256": self.fingerprint,
            "replacements_sha256": self.replacements_fingerprint,
            "vocab_size": self.vocab_size,
            "eos_id": self.eos_id,
        }
        if self.template and self.template[1]:
            # Only where a template appends: every other tokenizer's caches stay valid, and
            # one encoded before its end was dropped (two EOS a document) is told apart.
            info["template_end_dropped"] = self.template[1]
        return info


def find_eos_id(tokenizer: Tokenizer, eos_token: str | None = None,
                source: str = "tokenizer") -> int:
    names = (eos_token,) if eos_token else EOS_CANDIDATES
    for name in names:
        token_id = tokenizer.token_to_id(name)
        if token_id is not None:
            if eos_token:
                _check_special(tokenizer, eos_token, token_id, source)
            return token_id
    if eos_token:
        raise TinygenError(f"{source}: has no token '{eos_token}'")
    raise TinygenError(
        f"{source}: no end-of-text token (looked for {', '.join(EOS_CANDIDATES)}); "
        f"name one with --eos-token"
    )


def _check_special(tokenizer: Tokenizer, name: str, token_id: int, source: str) -> None:
    """An end token must be a special token: an ordinary one ("." say) also comes out of
    the text itself, so every one of them would end a document, and a generated text."""
    added = tokenizer.get_added_tokens_decoder().get(token_id)
    if added is None or not added.special:
        specials = [t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special]
        raise TinygenError(
            f"{source}: --eos-token {name!r} is an ordinary token, which the text itself makes; "
            + (f"name a special token: {', '.join(specials)}" if specials else
               "it has no special token: train one with tinygen-train tokenizer"))


def _batches(documents: Sequence[str]) -> Iterator[Sequence[str]]:
    start, chars = 0, 0
    for i, doc in enumerate(documents):
        chars += len(doc)
        if chars >= BATCH_CHARS or i + 1 - start >= BATCH_DOCS:
            yield documents[start:i + 1]
            start, chars = i + 1, 0
    if start < len(documents):
        yield documents[start:]
