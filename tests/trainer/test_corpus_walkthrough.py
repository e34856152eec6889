"""Corpora as users have them: other encodings, binary files in the folder, one huge file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tokenizers import processors

from tinygen.errors import TinygenError
from tinygen_trainer.data import Encoder, read_documents
from tinygen_trainer.data import encoder as encoder_module
from tinygen_trainer.tokenizer_training import TokenizerConfig, save_tokenizer, train_tokenizer

TEXT = "Hello café 🙂\nsecond line\n"


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_text_with_a_utf16_or_utf32_byte_order_mark_is_read_as_its_text(tmp_path, codec):
    """Notepad's "Unicode" and Windows PowerShell's `>` write UTF-16 with a BOM: it was "not
    UTF-8 at byte 0 ... pass --errors replace", which trained on its text between NUL bytes."""
    path = tmp_path / "notes.txt"
    bom = {"utf-16-le": b"\xff\xfe", "utf-16-be": b"\xfe\xff"}.get(codec, b"")
    path.write_bytes(bom + TEXT.encode(codec))
    for errors in ("strict", "replace"):
        assert read_documents(path, errors=errors) == [TEXT]


@pytest.mark.parametrize("blob", [b"\x7fELF\x02\x01\x01\x00\x00\x00", b"\x89PNG\r\n\x1a\n\x00\x00",
                                  "no mark".encode("utf-16-le")])
def test_a_binary_file_in_the_corpus_is_refused_even_with_errors_replace(tmp_path, blob):
    """With --errors replace (the advice of the error before), or as valid UTF-8 at all (an ELF
    header), a binary file or UTF-16 without its mark was read as text and trained on."""
    (tmp_path / "notes.txt").write_text(TEXT, encoding="utf-8")
    (tmp_path / "blob.bin").write_bytes(blob)
    nul = blob.index(b"\x00")
    for errors in ("strict", "replace"):
        with pytest.raises(TinygenError) as info:
            read_documents(tmp_path, errors=errors)
        assert str(info.value) == (
            f"{tmp_path / 'blob.bin'}: not text (a NUL byte at byte {nul}): a binary file, or "
            f"UTF-16 with no byte-order mark; leave it out of the corpus, or convert it to UTF-8")


def test_a_folder_of_hidden_files_says_they_are_not_read(tmp_path):
    """"folder has no files" of a folder that has them (dot-files, which are never read)."""
    (tmp_path / ".notes.txt").write_text(TEXT, encoding="utf-8")
    with pytest.raises(TinygenError) as info:
        read_documents(tmp_path)
    assert str(info.value) == (f"{tmp_path}: folder has no files but hidden ones (names beginning "
                               f"with a dot), never read")
    (tmp_path / ".notes.txt").unlink()
    with pytest.raises(TinygenError, match="folder has no files$"):
        read_documents(tmp_path)


@pytest.mark.parametrize("value, kind", [(None, "null"), (42, "a number"), (True, "a boolean"),
                                         ({"en": "hi"}, "an object"), (["a"], "a list")])
def test_a_record_whose_field_is_no_string_says_what_it_is_and_what_to_do(tmp_path, value, kind):
    """It was "field 'text' is not a string": of a null (a common export of a missing value),
    with no word of what to do."""
    path = tmp_path / "posts.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"text": value}) + "\n",
                    encoding="utf-8")
    with pytest.raises(TinygenError) as info:
        read_documents(path)
    assert str(info.value) == (f"{path}: line 2: field 'text' is {kind}, not a string; fix the "
                               f"record, or choose another with --field")


class Spy:
    """A tokenizer that records the longest text it was given to encode."""

    def __init__(self, tokenizer):
        self.tokenizer, self.longest = tokenizer, 0

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)

    def encode_batch_fast(self, texts, **options):
        self.longest = max([self.longest, *map(len, texts)])
        return self.tokenizer.encode_batch_fast(texts, **options)

    encode_batch = encode_batch_fast


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """The byte-level BPE tinygen trains, and the same with a BOS its post-processor adds."""
    folder = tmp_path_factory.mktemp("tok")
    texts = ["The quick brown fox jumps over the lazy dog.\n\nNaïve café 🙂  tabs\tend."] * 20
    plain = train_tokenizer(texts, TokenizerConfig(vocab_size=300, progress=False))
    bos = train_tokenizer(texts, TokenizerConfig(vocab_size=300, progress=False))
    bos.add_special_tokens(["<s>"])
    bos.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", bos.token_to_id("<s>"))])
    return [save_tokenizer(plain, folder / "plain.json"), save_tokenizer(bos, folder / "bos.json")]


def test_a_huge_document_is_encoded_in_pieces_to_the_tokens_of_the_whole(tokenizers, monkeypatch):
    """One text file is one document, which was encoded in one call: tokenizers holds ~200
    bytes a token while it does, so a 40 MB file took 6.5 GB and a 200 MB one would need 30."""
    monkeypatch.setattr(encoder_module, "PIECE_CHARS", 300)
    monkeypatch.setattr(encoder_module, "CUT_CONTEXT", 64)
    rng = np.random.default_rng(0)
    words = ["The", " quick", " fox", "  ", "\n", "\n\n", " café", "🙂", "\t", " dog.", "end"]
    long = "".join(rng.choice(words, 3000))
    assert len(long) > 5000
    docs = [long, "a short one", "x" * 2000, long[:900]]  # the x's have no place to cut
    for path in tokenizers:
        encoder = Encoder.load(path)
        spy = Spy(encoder.tokenizer)
        object.__setattr__(encoder, "tokenizer", spy)
        tokens, ends = encoder.encode(docs, progress=False)
        whole = [spy.encode(d).ids + [encoder.eos_id] for d in docs]
        assert tokens.tolist() == sum(whole, [])
        assert ends.tolist() == np.cumsum([len(w) for w in whole]).tolist()
        assert tokens.dtype == np.uint16
        assert spy.longest == 2000  # the x's; the long text went in pieces of about 300
