"""A token cache knows the text it was encoded from: a changed file is a warning naming the
command to encode again, and a damaged header is a corrupt cache, not another tokenizer."""

from __future__ import annotations

import gzip
import os
import shlex

import msgpack
import pytest

from tinygen_trainer.cli import main
from tinygen_trainer.data import Encoder, TokenCacheError, TokenDataset, load_token_cache

from training_corpus import corpus, tokenizer  # noqa: F401

WARNING = "tinygen-train: warning: "


@pytest.fixture
def project(tmp_path, corpus, tokenizer, monkeypatch):
    """A user's folder: data/stories.txt and tok/tokenizer.json, worked in from its root."""
    (tmp_path / "data").mkdir()
    (tmp_path / "tok").mkdir()
    (tmp_path / "data" / "stories.txt").write_text(corpus.read_text(), encoding="utf-8")
    (tmp_path / "tok" / "tokenizer.json").write_text(tokenizer.read_text(), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def encode(*options: str) -> list[str]:
    argv = ["encode", "data/stories.txt", "--tokenizer", "tok/tokenizer.json", "--quiet",
            *options, "-o", "train.tokens"]
    assert main(argv) == 0
    return argv


def load(capsys) -> str:
    """Load train.tokens as train, eval and distill do; what it said on stderr."""
    capsys.readouterr()
    TokenDataset.from_path("train.tokens", Encoder.load("tok/tokenizer.json"), progress=False)
    return capsys.readouterr().err


def test_the_cache_records_its_files(project):
    encode()
    text = project / "data" / "stories.txt"
    [source] = load_token_cache("train.tokens").header["sources"]
    assert source["path"] == "data/stories.txt"  # relative to the cache: they move together
    assert source["size"] == text.stat().st_size and len(source["sha256"]) == 64
    assert source["mtime_ns"] is None  # written just before: an edit could keep its mtime
    os.utime(text, ns=(10**18, 10**18))  # an older file's mtime is kept
    encode()
    assert load_token_cache("train.tokens").header["sources"][0]["mtime_ns"] == 10**18


@pytest.mark.parametrize("edit", ["append", "same size"])
def test_changed_text_warns_with_the_command_to_encode_again(project, capsys, edit):
    encode("--line-by-line", "--no-compress")
    text = project / "data" / "stories.txt"
    old = text.read_text()
    text.write_text(old + " the end." if edit == "append" else old.replace("cat", "bat"))
    err = load(capsys)
    assert err.count("\n") == 1 and err.startswith(WARNING), err
    command = ("tinygen-train encode data/stories.txt --tokenizer tok/tokenizer.json "
               "--line-by-line --no-compress -o train.tokens")
    assert err == (f"{WARNING}train.tokens was encoded from data/stories.txt before it changed; "
                   f"this run uses the old text (for the new, encode again: {command})\n")
    # and the command does it: the new cache holds the new text, and says nothing
    assert main([*shlex.split(command)[1:], "--quiet"]) == 0
    assert load(capsys) == ""


def test_unchanged_text_is_silent(project, capsys):
    encode()
    assert load_token_cache("train.tokens").header["sources"]  # recorded, and it is the same
    assert load(capsys) == ""
    text = project / "data" / "stories.txt"
    text.write_bytes(text.read_bytes())  # a new mtime (a checkout, a copy), the same text
    assert load(capsys) == ""


def test_missing_text_is_silent(project, capsys):
    # Caches are shipped without their text, or outlive it.
    encode()
    assert load_token_cache("train.tokens").header["sources"]
    (project / "data" / "stories.txt").unlink()
    assert load(capsys) == ""


def test_a_cache_from_before_sources_still_loads(project, capsys):
    encode("--no-compress")
    path = project / "train.tokens"
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(path.read_bytes())
    header, tokens, ends = list(unpacker)
    for key in ("sources", "encode", "header_sha256"):  # what an older encode did not write
        del header[key]
    packer = msgpack.Packer(use_bin_type=True)
    path.write_bytes(gzip.compress(packer.pack(header) + packer.pack(tokens) + packer.pack(ends)))
    (project / "data" / "stories.txt").write_text("other text")  # nothing to compare it with
    assert load(capsys) == ""


def test_a_damaged_header_value_is_corrupt_not_another_tokenizer(project):
    encode("--no-compress")
    data = (project / "train.tokens").read_bytes()
    at = data.index(msgpack.packb("tokenizer_sha256")) + 20  # inside its value
    (project / "train.tokens").write_bytes(data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:])
    with pytest.raises(TokenCacheError, match="token cache is corrupt: its header is damaged; "
                                              "delete it and encode again"):
        TokenDataset.load("train.tokens", Encoder.load("tok/tokenizer.json"))


def test_every_damaged_header_byte_is_caught(project):
    encode("--no-compress")
    path = project / "train.tokens"
    data = path.read_bytes()
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    unpacker.unpack()
    encoder = Encoder.load("tok/tokenizer.json")
    for at in range(unpacker.tell()):
        path.write_bytes(data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:])
        with pytest.raises(TokenCacheError) as caught:
            TokenDataset.load(path, encoder)
        assert "token cache is corrupt" in str(caught.value), (at, str(caught.value))


def test_a_file_added_to_the_corpus_folder_warns(project, capsys):
    # A folder's cache records the files it read; a new one is new text all the same.
    argv = ["encode", "data", "--tokenizer", "tok/tokenizer.json", "--quiet", "-o", "train.tokens"]
    assert main(argv) == 0
    assert load(capsys) == ""
    (project / "data" / ".notes.txt").write_text("hidden: never read")
    assert load(capsys) == ""
    (project / "data" / "more").mkdir()
    (project / "data" / "more" / "new.txt").write_text("a new story about a cat.")
    command = "tinygen-train encode data --tokenizer tok/tokenizer.json -o train.tokens"
    assert load(capsys) == (f"{WARNING}train.tokens was encoded from data before "
                            f"data/more/new.txt was added to it; this run uses the old text "
                            f"(for the new, encode again: {command})\n")
    (project / "data" / "stories.txt").write_text("edited")
    assert "encoded from data/stories.txt before it changed (and 1 more of its files)" \
        in load(capsys)
