"""The token cache: round trip, and every way a cache can be wrong is caught, clearly."""

from __future__ import annotations

import gzip
import hashlib
import json

import msgpack
import numpy as np
import pytest

from tinygen.errors import TinygenError
from tinygen.replacements import EncodeRule, Replacements
from tinygen_trainer.data import (Encoder, TokenCacheError, TokenDataset, is_token_cache,
                                  load_token_cache)
from tinygen.token_cache import FORMAT_VERSION, save_token_cache
from tinygen_trainer.tokenizer_training import TokenizerConfig, save_tokenizer, train_tokenizer

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Naïve café, crème brûlée 🙂.",
         "To be, or not to be: that is the question."] * 30


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    tok = train_tokenizer(TEXTS, TokenizerConfig(vocab_size=300, progress=False))
    return save_tokenizer(tok, tmp_path_factory.mktemp("tok") / "tokenizer.json")


@pytest.fixture(scope="module")
def other_tokenizer_path(tmp_path_factory):
    tok = train_tokenizer(TEXTS, TokenizerConfig(vocab_size=280, progress=False))
    return save_tokenizer(tok, tmp_path_factory.mktemp("tok2") / "tokenizer.json")


@pytest.fixture
def encoder(tokenizer_path):
    return Encoder.load(tokenizer_path)


@pytest.fixture
def dataset(encoder):
    return TokenDataset.from_documents(TEXTS, encoder, progress=False)


@pytest.mark.parametrize("compress", [True, False])
def test_round_trip(tmp_path, encoder, dataset, compress):
    path = dataset.save(tmp_path / "corpus.tokens", encoder, compress=compress)
    assert is_token_cache(path)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == compress
    loaded = TokenDataset.load(path, encoder)
    assert loaded.tokens.dtype == np.uint16  # a 300-token vocabulary fits
    np.testing.assert_array_equal(loaded.tokens, dataset.tokens)
    np.testing.assert_array_equal(loaded.doc_ends, dataset.doc_ends)
    header = load_token_cache(path).header
    assert header["format_version"] == FORMAT_VERSION
    assert header["tokenizer_sha256"] == encoder.fingerprint
    assert header["num_tokens"] == dataset.num_tokens and header["num_documents"] == len(TEXTS)
    assert not list(tmp_path.glob(".*.tmp"))  # the temp file was renamed away


def test_gzip_is_smaller_and_deterministic(tmp_path, encoder, dataset):
    packed = dataset.save(tmp_path / "a.tokens", encoder)
    plain = dataset.save(tmp_path / "b.tokens", encoder, compress=False)
    assert packed.stat().st_size < plain.stat().st_size / 2
    again = dataset.save(tmp_path / "c.tokens", encoder)
    assert again.read_bytes() == packed.read_bytes()


def test_large_vocabularies_use_uint32(tmp_path):
    tokens = np.array([0, 70_000, 5, 0], dtype=np.uint32)
    info = {"tokenizer_sha256": "x", "replacements_sha256": None, "vocab_size": 70_001, "eos_id": 0}
    path = save_token_cache(tmp_path / "big.tokens", tokens, np.array([2, 4]), info)
    cache = load_token_cache(path)
    assert cache.header["dtype"] == "uint32"
    np.testing.assert_array_equal(cache.tokens, tokens)


def test_other_tokenizer_is_rejected(tmp_path, dataset, encoder, other_tokenizer_path):
    path = dataset.save(tmp_path / "corpus.tokens", encoder)
    with pytest.raises(TokenCacheError, match="different tokenizer.*tinygen-train encode"):
        TokenDataset.load(path, Encoder.load(other_tokenizer_path))


def test_other_replacement_rules_are_rejected(tmp_path, dataset, encoder, tokenizer_path):
    path = dataset.save(tmp_path / "corpus.tokens", encoder)
    rules = Replacements(encode=(EncodeRule("fox", "<|endoftext|>"),))
    with pytest.raises(TokenCacheError, match="different replacement rules"):
        TokenDataset.load(path, Encoder.load(tokenizer_path, rules))


def test_fingerprint_ignores_json_formatting(tmp_path, tokenizer_path, encoder):
    reformatted = tmp_path / "tokenizer.json"
    data = json.loads(tokenizer_path.read_text())
    reformatted.write_text(json.dumps(data, indent=4, sort_keys=True))
    assert Encoder.load(reformatted).fingerprint == encoder.fingerprint


@pytest.mark.parametrize("compress", [True, False])
def test_truncated_file_is_detected(tmp_path, encoder, dataset, compress):
    path = dataset.save(tmp_path / "corpus.tokens", encoder, compress=compress)
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 3, 40):
        path.write_bytes(data[:cut])
        with pytest.raises(TokenCacheError, match="corrupt"):
            TokenDataset.load(path, encoder)


@pytest.mark.parametrize("compress", [True, False])
def test_flipped_byte_is_detected(tmp_path, encoder, dataset, compress):
    path = dataset.save(tmp_path / "corpus.tokens", encoder, compress=compress)
    data = bytearray(path.read_bytes())
    data[len(data) * 2 // 3] ^= 0x01  # inside the token array
    path.write_bytes(bytes(data))
    with pytest.raises(TokenCacheError, match="corrupt"):
        TokenDataset.load(path, encoder)


def test_newer_format_version_is_rejected(tmp_path, encoder, dataset):
    path = dataset.save(tmp_path / "corpus.tokens", encoder, compress=False)
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(path.read_bytes())
    header, tokens, ends = list(unpacker)
    header["format_version"] = FORMAT_VERSION + 1
    header.pop("header_sha256")  # a newer writer checksums its header as this one does
    header["header_sha256"] = hashlib.sha256(msgpack.packb(header, use_bin_type=True)).hexdigest()
    packer = msgpack.Packer(use_bin_type=True)
    path.write_bytes(gzip.compress(packer.pack(header) + packer.pack(tokens) + packer.pack(ends)))
    with pytest.raises(TokenCacheError, match="newer than this tinygen-trainer reads.*upgrade"):
        TokenDataset.load(path, encoder)


def test_not_a_cache(tmp_path, encoder):
    path = tmp_path / "notes.tokens"
    path.write_bytes(msgpack.packb({"hello": "world"}))
    assert not is_token_cache(path)
    with pytest.raises(TokenCacheError, match="not a tinygen token cache"):
        load_token_cache(path)
    with pytest.raises(TinygenError, match="not found"):
        load_token_cache(tmp_path / "missing.tokens")


def test_failed_write_keeps_the_old_cache(tmp_path, encoder, dataset, monkeypatch):
    path = dataset.save(tmp_path / "corpus.tokens", encoder)
    before = path.read_bytes()

    def broken_write(self, data):
        raise OSError("disk full")

    monkeypatch.setattr(gzip.GzipFile, "write", broken_write)
    with pytest.raises(TinygenError, match=f"cannot write {path}: disk full"):
        dataset.save(path, encoder)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["corpus.tokens"]  # no temp file left


@pytest.mark.parametrize("compress", [True, False])
def test_damaged_header_is_corrupt_not_text(tmp_path, encoder, dataset, compress):
    # Not recognised as a cache, it was read as text: "not UTF-8", or binary garbage
    # trained on with --errors replace.
    path = dataset.save(tmp_path / "corpus.tokens", encoder, compress=compress)
    data = path.read_bytes()
    failed = []
    for at in range(40):
        for mask in (0x01, 0x10, 0xff):
            damaged = bytearray(data)
            damaged[at] ^= mask
            path.write_bytes(bytes(damaged))
            try:
                loaded = TokenDataset.from_path(path, encoder, errors="replace", progress=False)
            except TokenCacheError as exc:
                message = str(exc)
                assert "token cache is corrupt" in message and "\n" not in message, (at, mask)
                failed.append(at)
            else:  # gzip's mtime, xfl and OS bytes, and its FTEXT flag, are not checked
                np.testing.assert_array_equal(loaded.tokens, dataset.tokens)
    assert {3, 12, 15} <= set(failed)


def test_text_and_other_files_are_not_caches(tmp_path, encoder):
    cp1252 = tmp_path / "quotes.txt"
    cp1252.write_bytes("\u201eGuten Tag\u201c, sagte sie.".encode("cp1252"))  # starts with 0x84
    assert not is_token_cache(cp1252)
    assert TokenDataset.from_path(cp1252, encoder, errors="replace", progress=False).num_tokens
    words = tmp_path / "format.txt"
    # a cache's first bytes but for its three string lengths: close, but UTF-8 text
    words.write_text("# magic tinygen-tokens format_version 1\n", encoding="utf-8")
    assert not is_token_cache(words)
    packed = tmp_path / "corpus.txt.gz"
    packed.write_bytes(gzip.compress("plain text, compressed".encode()))
    with pytest.raises(TokenCacheError, match="not a tinygen token cache .a gzip file: decompress"):
        TokenDataset.from_path(packed, encoder, errors="replace", progress=False)


def test_other_eos_names_both_tokens_and_the_option(tmp_path):
    tok = train_tokenizer(TEXTS, TokenizerConfig(vocab_size=300, special_tokens=("<|im_end|>",),
                                                 progress=False))
    tok_path = save_tokenizer(tok, tmp_path / "tokenizer.json")
    default = Encoder.load(tok_path)  # the first candidate, <|endoftext|>
    path = TokenDataset.from_documents(TEXTS, default, progress=False).save(
        tmp_path / "corpus.tokens", default)
    chat = Encoder.load(tok_path, eos_token="<|im_end|>")  # what an Instruct model ends with
    with pytest.raises(TokenCacheError) as caught:
        TokenDataset.load(path, chat)
    assert str(caught.value) == (
        f"{path}: documents end with <|endoftext|> (token {default.eos_id}), this run uses "
        f"<|im_end|> (token {chat.eos_id}); re-encode it with tinygen-train encode --eos-token "
        f"'<|im_end|>', or train with --eos-token '<|endoftext|>'")


def test_damaged_header_key_is_corrupt_not_another_tokenizer(tmp_path, encoder, dataset):
    path = dataset.save(tmp_path / "corpus.tokens", encoder, compress=False)
    data = path.read_bytes()
    at = data.index(b"tokenizer_sha256")
    path.write_bytes(data[:at] + b"X" + data[at + 1:])
    with pytest.raises(TokenCacheError, match="token cache is corrupt: its header is damaged"):
        TokenDataset.load(path, encoder)
