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



def test_an_encode_output_ending_in_a_slash_is_a_folder(corpus, tokenizer, tmp_path, capsys):
    """`-o newdir/` wrote a file named newdir; an existing folder was refused already."""
    out = tmp_path / "newdir"
    assert main(["encode", str(corpus), "--tokenizer", str(tokenizer), "-o", f"{out}/",
                 "--quiet"]) == 2
    assert capsys.readouterr().err == (f"tinygen-train: error: -o {out}/ ends in a slash: a "
                                       f"folder; give the token cache's file path, e.g. "
                                       f"{out / 'train.tokens'}\n")
    assert not out.exists()


@pytest.mark.parametrize("inside", ["", "held.txt"])
def test_eval_data_in_the_output_folder_is_refused(corpus, tokenizer, tmp_path, capsys, inside):
    """`--eval-data OUT -o OUT` made OUT, then said it had no files."""
    out = tmp_path / "run"
    held = out / inside if inside else out
    assert main(["train", str(corpus), "--preset", "cpu-tiny", "--tokenizer", str(tokenizer),
                 "-o", str(out), "--eval-data", str(held), "--steps", "1", "--quiet"]) == 2
    place = "is inside" if inside else "is"
    assert capsys.readouterr().err == (f"tinygen-train: error: --eval-data {held} {place} the "
                                       f"run's --output folder {out}, which holds what the run "
                                       f"writes; give held-out text from another folder\n")
    assert not out.exists()


def test_a_batch_past_the_memory_is_refused_before_the_data(corpus, tokenizer, tmp_path,
                                                            monkeypatch, capsys):
    """--batch-size 99999999 warned that it was more rows than the corpus, then the kernel
    killed the run (exit 137) with nothing said."""
    from tinygen_trainer.data import dataset
    from tinygen_trainer.training import memory

    def must_not_run(*args, **kwargs):
        raise AssertionError("the corpus was read before the batch was checked")

    monkeypatch.setattr(memory, "available_memory", lambda: 2**30)
    monkeypatch.setattr(dataset.TokenDataset, "from_path", must_not_run)
    vocab = json.loads(tokenizer.read_text(encoding="utf-8"))["model"]["vocab"]
    assert main(["train", str(corpus), "--preset", "cpu-tiny", "--tokenizer", str(tokenizer),
                 "-o", str(tmp_path / "run"), "--block-size", "64", "--batch-size", "99999999",
                 "--steps", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tinygen-train: error: --batch-size 99999999 does not fit in memory: "
                          "it needs at least ") and err.count("\n") == 1, err
    assert f"(the logits of 99999999 rows x 64 tokens x {len(vocab)} vocabulary x 4 bytes" in err
    assert "and 1.0 GiB is free; no batch above " in err and "--grad-accum" in err


def test_the_batch_memory_bound_refuses_no_batch_that_fits(monkeypatch):
    """The estimate is a lower bound: a batch that it says fits, exactly, is let through, and
    the largest batch named is that one."""
    import torch

    from tinygen_trainer.training import memory

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    # 2 processes, 2 micro-batches: a global row is 2 x 8 x 16 bytes on the host, wherever it
    # trains; a row trained here is 8 x 10 x 4 bytes of logits
    need = 16 * (2 * 8 * 16) + 8 * (8 * 10 * 4)
    monkeypatch.setattr(memory, "available_memory", lambda: need)
    memory.check_batch_memory(16, 2, 8, 10, 2, cpu)
    with pytest.raises(TinygenError, match=r"--batch-size 18 does not fit in memory: .*; no "
                                           r"batch above 16 rows can fit"):
        memory.check_batch_memory(18, 2, 8, 10, 2, cpu)
    # On a GPU the logits are held there and the rows on the host, each limit by itself
    monkeypatch.setattr(memory, "device_memory", lambda device: 8 * (8 * 10 * 4))
    memory.check_batch_memory(16, 2, 8, 10, 2, gpu)
    with pytest.raises(TinygenError, match=r"does not fit in cuda:0 memory: it needs at least "
                                           r"2.8 KiB \(the logits of 9 rows x 8 tokens x 10 "
                                           r"vocabulary x 4 bytes\), and 2.5 KiB is free; no "
                                           r"batch above 16 rows"):
        memory.check_batch_memory(18, 1, 8, 10, 2, gpu)
    monkeypatch.setattr(memory, "available_memory", lambda: None)  # not Linux: not checked
    memory.check_batch_memory(10**9, 1, 8, 10, 1, cpu)
