"""Reading corpora: JSONL records stay whole whatever characters their strings hold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tinygen.errors import TinygenError
from tinygen_trainer.cli import main
from tinygen_trainer.data.sources import read_documents
from tinygen_trainer.tokenizer_training import TokenizerConfig, save_tokenizer, train_tokenizer

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


def test_a_json_file_is_an_array_of_records_or_json_lines(tmp_path):
    """Read as text, its keys and braces were trained on; `datasets`' to_json writes JSON Lines
    under .json, and an exported array is one JSON document."""
    records = [{"title": "Rain", "text": "wet\ngrey"}, {"title": "Sun", "text": "warm"}]
    array, lines = tmp_path / "array.json", tmp_path / "lines.json"
    array.write_text(json.dumps(records, indent=2), encoding="utf-8")
    lines.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    for path in (array, lines):
        assert read_documents(path) == ["wet\ngrey", "warm"]
        [doc, _] = read_documents(path, field="title,text")
        assert "Rain" in doc and "wet\ngrey" in doc
    array.write_text(json.dumps([{"text": "a"}, {"body": "b"}]), encoding="utf-8")
    with pytest.raises(TinygenError, match="array.json: record 2 has no field 'text'"):
        read_documents(array)
    array.write_text('[{"text": "a"},\n oops]', encoding="utf-8")
    with pytest.raises(TinygenError, match=r"array.json: not valid JSON \(.*, line 2\)"):
        read_documents(array)


def test_jsonl_fields_keep_separators(tmp_path):
    path = tmp_path / "posts.jsonl"
    record = {"title": "t\u2028t", "body": "b\u0085b"}
    path.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    [doc] = read_documents(path, field="title,body")
    assert "t\u2028t" in doc and "b\u0085b" in doc


def test_a_field_no_record_has_is_refused_one_that_some_lack_is_not(tmp_path):
    """--field title,summary with no record holding a summary trained on titles alone, and wrote
    the misspelt field into fields.json."""
    path = tmp_path / "posts.jsonl"
    records = [{"title": "Rain", "body": "wet"}, {"title": "Sun"}]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    assert len(read_documents(path, field="title,body")) == 2  # one record leaves body out
    with pytest.raises(TinygenError) as info:
        read_documents(path, field="title,summary")
    assert str(info.value) == (f"{path}: no record has the field 'summary' (--field "
                               f"title,summary); check its spelling")


def test_a_tokens_file_that_is_no_cache_is_not_sent_to_errors_replace(tmp_path):
    """A damaged `*.tokens` file was read as text, and the advice was --errors replace: training
    on its bytes as noise."""
    path = tmp_path / "train.tokens"
    path.write_bytes(b"\x9a\x01\xff\xfe" * 64)
    with pytest.raises(TinygenError) as info:
        read_documents(path)
    assert str(info.value) == (f"{path}: not a tinygen token cache (nor UTF-8 text); make it again "
                               f"with 'tinygen-train encode'")


@pytest.mark.parametrize("command", [
    ["tokenizer", "-o", "tok"],
    ["encode", "--tokenizer", "tokenizer.json", "-o", "c.tokens"],
    ["train", "--preset", "cpu-tiny", "--tokenizer", "tokenizer.json", "-o", "out", "--steps", "1"],
    ["teacher-cache", "--teacher", "teacher", "-o", "cache"],
])
def test_field_over_plain_text_is_refused(tmp_path, monkeypatch, capsys, command):
    """--field picks a CSV column or JSONL key; over a .txt file it was ignored, silently."""
    monkeypatch.chdir(tmp_path)
    Path("notes.txt").write_text("Plain notes, no records.\n" * 20, encoding="utf-8")
    tokenizer = train_tokenizer(["Plain notes, no records."] * 20,
                                TokenizerConfig(vocab_size=300, progress=False))
    save_tokenizer(tokenizer, "tokenizer.json")
    assert main([command[0], "notes.txt", *command[1:], "--field", "title"]) == 2
    assert capsys.readouterr().err == (
        "tinygen-train: error: --field title picks a CSV column or JSONL key, and notes.txt holds "
        "no CSV or JSONL files; drop --field, or give the records (.csv, .jsonl, .json)\n")


def test_field_over_a_folder_with_records_still_reads_them(tmp_path):
    (tmp_path / "posts.jsonl").write_text(json.dumps({"title": "a title"}) + "\n", encoding="utf-8")
    (tmp_path / "README.txt").write_text("about the posts\n", encoding="utf-8")
    assert main(["tokenizer", str(tmp_path), "-o", str(tmp_path.parent / "tok"),
                 "--vocab-size", "300", "--field", "title"]) == 0


def test_a_model_folder_given_as_corpus_says_so(tmp_path):
    """`train run ...` for `train --model run ...`: its config.json was 'line 1 is not valid
    JSON', an export's model.onnx 'not UTF-8 ... pass --errors replace' (which would train on
    the weights' bytes)."""
    for name, weights in (("run", "model.safetensors"), ("export", "model.onnx")):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text('{\n  "n_layer": 2\n}\n', encoding="utf-8")
        (folder / weights).write_bytes(b"\x00\xff" * 8)
        for errors in ("strict", "replace"):
            with pytest.raises(TinygenError) as info:
                read_documents(folder, errors=errors)
            assert str(info.value) == (f"{folder} is a model folder ({weights}), not a corpus; "
                                       f"finetune a model with --model, and give text files, "
                                       f"CSV or JSON(L) as the corpus")
    training = tmp_path / "training"
    (training / "checkpoints" / "step-00000010").mkdir(parents=True)
    with pytest.raises(TinygenError, match=r"training is a model folder \(checkpoints\)"):
        read_documents(training)


def test_a_json_object_over_several_lines_is_not_called_bad_json(tmp_path):
    """A pretty-printed JSON file (a config, one record) read as JSON Lines was 'line 1 is not
    valid JSON' of a valid file."""
    path = tmp_path / "record.json"
    path.write_text('{\n  "text": "hello"\n}\n', encoding="utf-8")
    with pytest.raises(TinygenError) as info:
        read_documents(path)
    assert str(info.value) == (f"{path}: one JSON value over several lines, not records: give an "
                               f"array of records, or JSON Lines (one a line)")
    path.write_text('{"text": "hello"}\n{"text": "cut\n', encoding="utf-8")  # JSON Lines, torn
    with pytest.raises(TinygenError, match="line 2 is not valid JSON"):
        read_documents(path)
