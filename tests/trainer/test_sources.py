"""Reading corpora: JSONL records stay whole whatever characters their strings hold."""

from __future__ import annotations

import json

import pytest

from tinygen.errors import TinygenError
from tinygen_trainer.data.sources import read_documents

# Raw in a JSON string (json.dumps(ensure_ascii=False) writes them so), yet str.splitlines()
# splits on each: U+2028/U+2029 line/paragraph separators, NEL, and the file separators.
SEPARATORS = ["one\u2028two", "three\u0085four", "five\u2029six", "seven\x1cx\x1dy\x1ez", "plain"]


def test_jsonl_records_are_split_on_newlines_only(tmp_path):
    path = tmp_path / "posts.jsonl"
    lines = [json.dumps({"text": t}, ensure_ascii=False) for t in SEPARATORS]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert read_documents(path) == SEPARATORS
    path.write_bytes(("\r\n".join(lines) + "\r\n\r\n").encode())  # Windows line ends
    assert read_documents(path) == SEPARATORS
    path.write_text("\n".join(lines), encoding="utf-8")  # no newline at the end
    assert read_documents(path) == SEPARATORS


def test_jsonl_error_names_the_line_as_editors_count_it(tmp_path):
    path = tmp_path / "posts.jsonl"
    first = json.dumps({"text": "a\u2028b"}, ensure_ascii=False)
    path.write_text(first + "\n{broken\n", encoding="utf-8")
    with pytest.raises(TinygenError, match="line 2 is not valid JSON"):
        read_documents(path)


def test_jsonl_fields_keep_separators(tmp_path):
    path = tmp_path / "posts.jsonl"
    record = {"title": "t\u2028t", "body": "b\u0085b"}
    path.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    [doc] = read_documents(path, field="title,body")
    assert "t\u2028t" in doc and "b\u0085b" in doc


def test_a_tokens_file_that_is_no_cache_is_not_sent_to_errors_replace(tmp_path):
    """A damaged `*.tokens` file was read as text, and the advice was --errors replace: training
    on its bytes as noise."""
    path = tmp_path / "train.tokens"
    path.write_bytes(b"\x9a\x01\xff\xfe" * 64)
    with pytest.raises(TinygenError) as info:
        read_documents(path)
    assert str(info.value) == (f"{path}: not a tinygen token cache (nor UTF-8 text); make it again "
                               f"with 'tinygen-train encode'")
