"""Corpus reading, the token stream, and the samplers: random windows, line by line, blends."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tinygen.errors import TinygenError
from tinygen_trainer.data import (IGNORE_INDEX, BlendSampler, Encoder, RecordSampler, TokenDataset,
                                  WindowSampler, read_documents)
from tinygen_trainer.tokenizer_training import TokenizerConfig, save_tokenizer, train_tokenizer

EOS = 0


def stream(n: int, name: str = "synthetic") -> TokenDataset:
    """A dataset whose token at position i is i % 60000, so a row shows where it came from."""
    tokens = (np.arange(n) % 60000).astype(np.uint16)
    return TokenDataset(tokens, np.array([n]), EOS, name)


def records(lengths: list[int]) -> TokenDataset:
    """Documents of the given lengths; document k's tokens are all k + 1, then EOS."""
    docs = [np.append(np.full(n - 1, k + 1), EOS) for k, n in enumerate(lengths)]
    return TokenDataset(np.concatenate(docs).astype(np.uint16), np.cumsum(lengths), EOS, "records")


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    texts = ["The quick brown fox jumps over the lazy dog. Naïve café 🙂"] * 20
    tok = train_tokenizer(texts, TokenizerConfig(vocab_size=300, progress=False))
    return Encoder.load(save_tokenizer(tok, tmp_path_factory.mktemp("tok") / "tokenizer.json"))


# -- reading corpora -------------------------------------------------------------

def test_text_file_folder_csv_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("first file\nsecond line\n", encoding="utf-8")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "b.txt").write_text("nested file", encoding="utf-8")
    (tmp_path / ".hidden.txt").write_text("never read", encoding="utf-8")
    assert read_documents(tmp_path / "a.txt") == ["first file\nsecond line\n"]
    assert read_documents(tmp_path / "a.txt", line_by_line=True) == ["first file", "second line"]
    assert read_documents(tmp_path) == ["first file\nsecond line\n", "nested file"]

    csv_path = tmp_path / "posts.csv"
    csv_path.write_text('id,body\n1,"hello, world"\n2,"multi\nline"\n3,\n', encoding="utf-8")
    assert read_documents(csv_path, field="body") == ["hello, world", "multi\nline"]
    with pytest.raises(TinygenError, match=r"no column 'text' \(columns: id, body\).*--field"):
        read_documents(csv_path)

    jsonl = tmp_path / "posts.jsonl"
    jsonl.write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two"}) + "\n",
                     encoding="utf-8")
    assert read_documents(jsonl) == ["one", "two"]
    jsonl.write_text(json.dumps({"text": "one"}) + "\n{broken\n", encoding="utf-8")
    with pytest.raises(TinygenError, match="line 2 is not valid JSON"):
        read_documents(jsonl)


def test_non_utf8_reports_file_and_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"line one\ncaf\xe9 au lait\n")
    with pytest.raises(TinygenError, match=r"latin1.txt: not UTF-8 at byte 12 \(line 2.*--errors"):
        read_documents(path)
    assert read_documents(path, errors="replace") == ["line one\ncaf\ufffd au lait\n"]


def test_missing_and_empty(tmp_path):
    with pytest.raises(TinygenError, match="corpus not found"):
        read_documents(tmp_path / "nope.txt")
    (tmp_path / "blank.txt").write_text("  \n\n", encoding="utf-8")
    assert read_documents(tmp_path / "blank.txt") == []


# -- the token stream ------------------------------------------------------------

def test_documents_joined_with_eos(encoder, capsys, monkeypatch):
    from tinygen_trainer import bars

    monkeypatch.setattr(bars, "on_terminal", lambda file: True)  # the bar is for terminals
    texts = ["The quick fox.", "Naïve café 🙂", "lazy dog"]
    dataset = TokenDataset.from_documents(texts, encoder, progress=True)
    assert "encoding" in capsys.readouterr().err  # the tqdm bar
    assert dataset.num_documents == 3
    assert dataset.tokens[dataset.doc_ends - 1].tolist() == [encoder.eos_id] * 3
    for i, text in enumerate(texts):
        ids = dataset.document(i).tolist()
        assert encoder.tokenizer.decode(ids[:-1]) == text
    with pytest.raises(TinygenError, match="corpus is empty"):
        TokenDataset.from_documents([], encoder)


# -- random windows ----------------------------------------------------------------

def test_windows_cover_every_position_and_are_not_aligned():
    data, block = stream(1000), 32
    sampler = WindowSampler(data, block, seed=0)
    rows = sampler.next_rows(4000).input_ids
    offsets = rows[:, 0]
    # every row is a contiguous slice of the stream
    np.testing.assert_array_equal(rows, offsets[:, None] + np.arange(block))
    covered = np.zeros(1000, dtype=bool)
    for o in offsets:
        covered[o:o + block] = True
    assert covered.all()
    assert np.unique(offsets % block).size == block  # random offsets, not multiples of the block
    assert offsets.max() == 1000 - block  # the last window ends exactly at the end


def test_windows_replay_from_state():
    a = WindowSampler(stream(500), 16, seed=7)
    a.next_rows(45)  # crosses an epoch (500 // 16 = 31 windows)
    state = json.loads(json.dumps(a.state_dict()))
    expected = a.next_rows(20).input_ids
    b = WindowSampler(stream(500), 16, seed=7)
    b.load_state_dict(state)
    np.testing.assert_array_equal(b.next_rows(20).input_ids, expected)
    seed_7 = WindowSampler(stream(500), 16, seed=7).next_rows(20).input_ids
    seed_8 = WindowSampler(stream(500), 16, seed=8).next_rows(20).input_ids
    assert not np.array_equal(seed_7, seed_8)


def test_window_labels_and_recency_weights():
    sampler = WindowSampler(stream(1000), 10, seed=0, recency=3.0)
    rows = sampler.next_rows(2000)
    np.testing.assert_array_equal(rows.labels, rows.input_ids)  # the model shifts them
    assert rows.attention_mask.all()
    first, last = rows.loss_weights[rows.input_ids == 0], rows.loss_weights[rows.input_ids == 999]
    assert np.allclose(first, 0.5) and np.allclose(last, 1.5)  # 1:3, mean 1
    assert abs(rows.loss_weights.mean() - 1.0) < 0.05
    # The largest recency a float holds: it overflowed to nan weights, a loss called divergence.
    huge = WindowSampler(stream(1000), 10, seed=0, recency=1e308).next_rows(2000)
    assert np.isfinite(huge.loss_weights).all()
    assert np.allclose(huge.loss_weights[huge.input_ids == 999], 2.0)


def test_stream_shorter_than_a_block():
    with pytest.raises(TinygenError, match="fewer than block_size 64.*--line-by-line"):
        WindowSampler(stream(10), 64, seed=0)


# -- line by line ----------------------------------------------------------------

def test_line_by_line_pads_short_records(capsys):
    data = records([3, 5, 12])
    sampler = RecordSampler(data, block_size=8, seed=0, pad_id=EOS)
    rows = sampler.next_rows(3)  # one epoch: every record once
    by_doc = {int(r[0]): i for i, r in enumerate(rows.input_ids)}
    assert sorted(by_doc) == [1, 2, 3]
    short = by_doc[1]
    assert rows.input_ids[short].tolist() == [1, 1, EOS] + [EOS] * 5
    # the record's own EOS is learned, the padding is not
    assert rows.labels[short].tolist() == [1, 1, EOS] + [IGNORE_INDEX] * 5
    assert rows.attention_mask[short].tolist() == [True] * 3 + [False] * 5
    assert rows.loss_weights[short].tolist() == [1.0] * 3 + [0.0] * 5
    long = by_doc[3]
    assert rows.input_ids[long].tolist() == [3] * 8 and rows.attention_mask[long].all()
    assert sampler.truncated == 1
    assert ("warning: records: 1 of 3 records are longer than block_size 8; --line-by-line trains "
            "on their first 8 tokens only") in capsys.readouterr().err


def test_a_csv_quote_never_closed_is_an_error_not_one_record(tmp_path):
    path = tmp_path / "posts.csv"
    path.write_text('text,id\n"first,1\nsecond,2\nthird,3\n', encoding="utf-8")
    with pytest.raises(TinygenError, match="posts.csv: bad CSV: a quote opened in the record at "
                                           "line 2 is never closed$"):
        read_documents(path)
    path.write_text('"te\n', encoding="utf-8")  # in the header row too
    with pytest.raises(TinygenError, match="in the record at line 1 is never closed"):
        read_documents(path)
    path.write_text('text\n"a"b\n', encoding="utf-8")  # what the strict reader refuses besides
    with pytest.raises(TinygenError, match="posts.csv: bad CSV at line 2 "):
        read_documents(path)


def test_a_token_cache_is_not_read_as_text(tmp_path, encoder):
    """`encode` or `tokenizer` given a cache, or a cache inside a folder corpus: its gzip bytes,
    read with --errors replace, would make a corpus of noise."""
    text = tmp_path / "corpus" / "a.txt"
    text.parent.mkdir()
    text.write_text("The quick brown fox jumps over the lazy dog.\n", encoding="utf-8")
    cache = TokenDataset.from_path(text, encoder, progress=False).save(tmp_path / "corpus" / "b.tokens",
                                                                        encoder)
    for path in (cache, cache.parent):
        with pytest.raises(TinygenError, match=r"b.tokens: a token cache \(or other gzip file\), not "
                                               r"text; give a cache to `tinygen-train train`"):
            read_documents(path, errors="replace")


def test_line_by_line_refuses_mostly_cut_records(tmp_path, encoder):
    # `encode train.txt` (no --line-by-line) makes the file one document: line by line,
    # training would see its first block and nothing else.
    text = tmp_path / "train.txt"
    text.write_text("The quick brown fox jumps over the lazy dog.\n" * 40, encoding="utf-8")
    whole = TokenDataset.from_path(text, encoder, progress=False)
    cache = whole.save(tmp_path / "train.tokens", encoder)
    longest = whole.num_tokens
    with pytest.raises(TinygenError, match=fr"train.tokens: 1 of 1 records are longer than "
                       fr"block_size 32 \(the longest {longest:,} tokens\), so --line-by-line "
                       fr"would train on their first 32 tokens only; raise --block-size if the "
                       fr"model's window allows, drop --line-by-line, or encode with "
                       fr"'tinygen-train encode --line-by-line' if each line of a text file is a "
                       fr"record$"):
        RecordSampler(TokenDataset.from_path(cache, encoder), block_size=32, seed=0, pad_id=EOS)
    lines = TokenDataset.from_path(text, encoder, line_by_line=True, progress=False)
    lines.save(cache, encoder)
    sampler = RecordSampler(TokenDataset.from_path(cache, encoder), 32, seed=0, pad_id=EOS)
    assert sampler.truncated == 0
    with pytest.raises(TinygenError, match="2 of 3 records are longer"):
        RecordSampler(records([3, 12, 12]), block_size=8, seed=0, pad_id=EOS)
    # Text read line by line here is split already: encoding it so would change nothing.
    with pytest.raises(TinygenError, match=r"tokens only; raise --block-size if the model's "
                                           r"window allows or drop --line-by-line$"):
        RecordSampler(lines, block_size=4, seed=0, pad_id=EOS)


def test_line_by_line_epochs_are_shuffled_permutations():
    sampler = RecordSampler(records([2] * 50), block_size=4, seed=1, pad_id=EOS)
    first = sampler.next_rows(50).input_ids[:, 0]
    second = sampler.next_rows(50).input_ids[:, 0]
    assert sorted(first) == sorted(second) == list(range(1, 51))
    assert first.tolist() != second.tolist()


# -- blends ------------------------------------------------------------------------

def test_blend_ratios():
    a, b = stream(3000, "a"), records([5] * 300)
    sampler = BlendSampler([WindowSampler(a, 5, seed=1), RecordSampler(b, 5, seed=2, pad_id=EOS)],
                           [3.0, 1.0], seed=3)
    rows = sampler.next_rows(8000)
    from_b = np.mean(rows.labels[:, -1] == EOS)  # b's records end in EOS; a's windows never hold 0
    assert abs(from_b - 0.25) < 0.02


def test_blend_replays_from_state():
    def make():
        parts = [WindowSampler(stream(400), 8, seed=1), WindowSampler(stream(900), 8, seed=2)]
        return BlendSampler(parts, [1.0, 2.0], seed=5)

    first = make()
    first.next_rows(37)
    state = json.loads(json.dumps(first.state_dict()))
    expected = first.next_rows(50)
    second = make()
    second.load_state_dict(state)
    np.testing.assert_array_equal(second.next_rows(50).input_ids, expected.input_ids)


def test_blend_rejects_bad_weights():
    s = WindowSampler(stream(100), 8, seed=0)
    with pytest.raises(TinygenError, match="must be > 0"):
        BlendSampler([s, s], [1.0, 0.0], seed=0)
    with pytest.raises(TinygenError, match="one weight per corpus"):
        BlendSampler([s], [1.0, 2.0], seed=0)


def test_a_csv_row_with_more_or_fewer_cells_than_the_header_is_an_error(tmp_path):
    """An unquoted comma in the text cut the text at the comma (the rest went to a nameless
    column), and an unquoted newline split a record in two, the second half dropped: both
    silently. JSONL names a record without its field; CSV names its ragged row."""
    path = tmp_path / "posts.csv"
    path.write_text("title,text\na,hello there\nb,hello, world\n", encoding="utf-8")
    with pytest.raises(TinygenError, match=r"posts.csv: line 3 has 3 cells, the header 2 "
                                           r"\(title, text\); quote cells that hold commas"):
        read_documents(path)
    path.write_text("title,text\na,hello\nworld\n", encoding="utf-8")
    with pytest.raises(TinygenError, match="posts.csv: line 3 has 1 cell, the header 2 "):
        read_documents(path, field="title,text")
    path.write_text('title,text\na,"hello,\nworld"\nb,\n', encoding="utf-8")  # quoted: fine
    assert read_documents(path) == ["hello,\nworld"]
