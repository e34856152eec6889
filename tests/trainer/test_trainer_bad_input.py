"""Mistakes a new user makes, each answered by one line before any long work (or, where it
was silent, refused): found by a sweep of bad input over `tinygen-train`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tinygen.errors import TinygenError
from tinygen_trainer.cli import main
from tinygen_trainer.tokenizer_training import MAX_VOCAB, TokenizerConfig
from tinygen_trainer.training import TrainConfig
from tinygen_trainer.training.config import Phase

from training_corpus import corpus, one_thread, tokenizer  # noqa: F401 (fixtures)


def test_a_vocabulary_past_any_memory_is_refused(corpus, tmp_path, capsys):
    """--vocab-size 99999999999 aborted in tokenizers ('memory allocation of 4535485464592
    bytes failed', exit 134), with no word of the flag."""
    with pytest.raises(TinygenError, match=f"^vocab_size must be at most {MAX_VOCAB} "):
        TokenizerConfig(vocab_size=99_999_999_999)
    # Just past the bound: the old code trained it (reserving gigabytes), so this stays safe.
    assert main(["tokenizer", str(corpus), "-o", str(tmp_path / "tok/"), "--vocab-size",
                 str(MAX_VOCAB + 1)]) == 2
    err = capsys.readouterr().err
    assert err == (f"tinygen-train: error: vocab_size must be at most {MAX_VOCAB} (real "
                   f"vocabularies are 8k to 256k tokens), got {MAX_VOCAB + 1}\n")
    assert not (tmp_path / "tok").exists()
    TokenizerConfig(vocab_size=MAX_VOCAB)  # the bound itself is allowed


def test_teacher_cache_with_a_negative_seed_is_one_line(tiny_gpt2_dir, corpus, tmp_path, capsys):
    """numpy's 'expected non-negative integer' traceback, after the corpus was encoded and the
    teacher loaded."""
    out = tmp_path / "cache"
    assert main(["teacher-cache", str(corpus), "--teacher", str(tiny_gpt2_dir), "-o", str(out),
                 "--block-size", "16", "--seed", "-1", "--quiet"]) == 2
    assert capsys.readouterr().err == "tinygen-train: error: --seed must be >= 0, got -1\n"
    assert not out.exists()


def test_distill_refuses_another_tokenizer_before_the_teacher_scores(tiny_gpt2_dir, corpus,
                                                                      tokenizer, tmp_path, capsys):
    """`distill CORPUS --teacher T --tokenizer OTHER` scored the whole corpus into
    OUTPUT/teacher-cache (hours on a real teacher), and only then did the training refuse the
    cache for its tokenizer."""
    out = tmp_path / "student"
    assert main(["distill", str(corpus), "--teacher", str(tiny_gpt2_dir), "--preset", "cpu-tiny",
                 "--tokenizer", str(tokenizer), "-o", str(out), "--block-size", "16",
                 "--steps", "1", "--quiet"]) == 2
    assert capsys.readouterr().err == (
        f"tinygen-train: error: --teacher {tiny_gpt2_dir}: the teacher's tokenizer differs from "
        f"the student's; logit distillation needs one tokenizer (use sequence-level: "
        f"--teacher-texts N)\n")
    assert not (out / "teacher-cache").exists()  # nothing scored


def _records(path, name, count):
    path.mkdir(parents=True, exist_ok=True)
    (path / name).write_text("".join(json.dumps({"text": f"{name} record {i} " * 4}) + "\n"
                                     for i in range(count)), encoding="utf-8")


def test_eval_fraction_refuses_corpora_that_read_one_file(tokenizer, tmp_path, monkeypatch):
    """Each corpus is encoded, and its share held out, apart: with `data/` and `data/b.jsonl`
    (or one file by two paths) what one held out the other trained on, and the held-out
    perplexity scored text the model had seen, silently."""
    data = tmp_path / "data"
    _records(data, "a.jsonl", 20)
    _records(data / "recent", "b.jsonl", 20)
    monkeypatch.chdir(tmp_path)
    base = {"output_dir": tmp_path / "run", "preset": "cpu-tiny", "tokenizer": tokenizer,
            "eval_fraction": 0.2}
    for options, shared in (
            ({"data": (data, data / "recent/b.jsonl")}, data / "recent/b.jsonl"),
            ({"data": ("data/a.jsonl", data / "a.jsonl")}, data / "a.jsonl"),
            ({"phases": (Phase((data,), 5), Phase((data / "recent",), 5))},
             data / "recent/b.jsonl")):
        with pytest.raises(TinygenError) as info:
            TrainConfig(**base, **options)
        assert str(info.value).startswith("--eval-fraction holds documents out of each corpus "
                                          "apart, and ")
        assert f"both read {shared}, so what one holds out the other trains on" in str(info.value)
    # Corpora that share no file, the same corpus twice (encoded once), or no --eval-fraction
    TrainConfig(**base, data=(data / "a.jsonl", data / "recent"))
    TrainConfig(**base, data=(data, data))
    TrainConfig(**{**base, "eval_fraction": None}, data=(data, data / "recent/b.jsonl"))


def test_a_corpus_shorter_than_a_block_is_one_line(tokenizer, tmp_path, capsys):
    """A warning to lower --batch-size came first (counting '1 blocks' in a corpus holding
    none), then the error saying to lower --block-size: two lines, the first misleading."""
    short = tmp_path / "short.txt"
    short.write_text("the cat sat.", encoding="utf-8")
    assert main(["train", str(short), "--preset", "cpu-tiny", "--tokenizer", str(tokenizer),
                 "-o", str(tmp_path / "run"), "--block-size", "64", "--batch-size", "2",
                 "--steps", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tinygen-train: error: {short}: ") and err.count("\n") == 1
    assert "fewer than block_size 64" in err


def test_the_batch_warning_counts_one_block_as_one(tokenizer, tmp_path, capsys):
    from tinygen_trainer.training.setup import build_encoder, build_phases

    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat. " * 3, encoding="utf-8")
    config = TrainConfig(output_dir=tmp_path / "run", data=(text,), preset="cpu-tiny",
                         tokenizer=tokenizer, block_size=16, batch_size=4, progress=False)
    encoder, _ = build_encoder(config)
    build_phases(config, encoder, 16, encoder.eos_id)
    assert "(1 block of 16 tokens): each step repeats it" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["encode", "tokenizer"])
def test_a_blank_field_is_refused_not_read_as_text(command, tokenizer, tmp_path, capsys):
    """`--field ''` (an unset shell variable, say) read the 'text' key, silently."""
    records = tmp_path / "records.jsonl"
    records.write_text('{"text": "the cat sat on the mat."}\n', encoding="utf-8")
    extra = {"encode": ["--tokenizer", str(tokenizer), "-o", str(tmp_path / "out.tokens"),
                        "--quiet"],
             "tokenizer": ["-o", str(tmp_path / "tok/")]}[command]
    assert main([command, str(records), "--field", "", *extra]) == 2
    assert capsys.readouterr().err == ("tinygen-train: error: --field '' names no CSV column or "
                                       "JSONL key; give one (several: title,body), or drop "
                                       "--field for 'text'\n")


@pytest.fixture
def read_only(tmp_path, monkeypatch):
    """A folder nothing can be written into. Root writes into a 0555 folder all the same, so
    there os.access says of it what it says to anyone else."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, *args, **kwargs: (
            False if Path(path) == folder and mode & os.W_OK else access(path, mode, *args,
                                                                          **kwargs)))
    yield folder
    folder.chmod(0o755)


@pytest.mark.parametrize("command", ["encode", "tokenizer", "teacher-cache", "distill"])
def test_an_unwritable_output_is_refused_before_the_work(command, read_only, corpus, tokenizer,
                                                          tiny_gpt2_dir, monkeypatch, capsys):
    """The corpus was encoded (or a tokenizer trained, or a teacher loaded) first, for the
    write at the end to fail: 'cannot write ...: Read-only file system' after hours."""
    from tinygen_trainer.data import dataset
    from tinygen_trainer.distill import teacher

    def must_not_run(*args, **kwargs):
        raise AssertionError("the work began before the output was checked")

    monkeypatch.setattr(dataset.TokenDataset, "from_documents", must_not_run)
    monkeypatch.setattr(teacher, "load_corpus", must_not_run)
    out = {"encode": read_only / "train.tokens", "tokenizer": read_only / "tok/tokenizer.json",
           "teacher-cache": read_only / "cache", "distill": read_only / "student/teacher-cache"}
    args = {"encode": ["--tokenizer", str(tokenizer), "-o", str(out["encode"]), "--quiet"],
            "tokenizer": ["-o", str(read_only / "tok/")],
            "teacher-cache": ["--teacher", str(tiny_gpt2_dir), "-o", str(out["teacher-cache"]),
                              "--block-size", "16", "--quiet"],
            "distill": ["--teacher", str(tiny_gpt2_dir), "--preset", "cpu-tiny", "--tokenizer",
                        str(tiny_gpt2_dir / "tokenizer.json"), "-o", str(read_only / "student"),
                        "--block-size", "16", "--quiet"]}[command]
    if command == "tokenizer":
        from tinygen_trainer.commands import tokenizer as tokenizer_command

        monkeypatch.setattr(tokenizer_command, "read_corpus", must_not_run)
    assert main([command, str(corpus), *args]) == 2
    assert capsys.readouterr().err == (f"tinygen-train: error: cannot write {out[command]}: "
                                       f"{read_only} is not writable (a read-only file system, "
                                       f"or no permission); write it elsewhere\n")

