"""teacher-cache: damaged shards redone on a rerun; bad options refused naming their flag."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tinygen_trainer.cli import main
from tinygen_trainer.distill import TeacherCache, TeacherCacheError, build_teacher_cache
from tinygen_trainer.distill.teacher import load_corpus, teacher_encoder

TEXT = "Once upon a time there was a little model that wanted to write stories. " * 40


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def parts(tiny_gpt2_dir, corpus, tmp_path_factory):
    encoder = teacher_encoder(tiny_gpt2_dir, [corpus], tmp_path_factory.mktemp("enc"))
    return encoder, load_corpus([corpus], encoder, progress=False)


def build(folder, parts, calls, num_blocks=6):
    """A cache of 6 blocks in 3 shards, scored by a fake teacher that counts its blocks."""
    def score(tokens):
        calls.append(len(tokens))
        ids = np.repeat(tokens[..., None], 4, axis=-1)
        return ids, ids.astype(np.float32)

    encoder, dataset = parts
    return build_teacher_cache(folder, dataset, encoder, "teacher", score, block_size=16, top_k=4,
                               seed=1, num_blocks=num_blocks, blocks_per_shard=2, batch_size=2)


def test_rerun_redoes_truncated_and_damaged_shards(parts, tmp_path):
    calls = []
    folder = tmp_path / "cache"
    whole = build(folder, parts, calls).load()
    first = folder / "shard-00001.msgpack"
    first.write_bytes(first.read_bytes()[:300])  # cut short, as by truncate -s
    second = folder / "shard-00002.msgpack"
    data = bytearray(second.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped bit: the size is right, the checksum is not
    second.write_bytes(bytes(data))
    damaged = TeacherCache.open(folder)
    assert damaged.shards_done() == 1 and not damaged.complete
    with pytest.raises(TeacherCacheError, match="shard-00001.*corrupt.*run the same") as info:
        damaged.load()  # what distill says about it
    assert "\n" not in str(info.value)
    calls.clear()
    redone = build(folder, parts, calls)
    assert sum(calls) == 4  # shards 1 and 2, nothing else
    assert redone.complete
    for name in ("tokens", "ids", "logits"):
        assert np.array_equal(getattr(redone.load(), name), getattr(whole, name)), name


def test_a_cache_json_claiming_more_blocks_is_corrupt_and_a_rerun_repairs_it(parts, tmp_path):
    """cache.json edited to claim 1e12 blocks: distill hung counting the shards, and so did the
    rerun that resized it. Its last shard, whole, holds fewer blocks than the claim puts there."""
    calls = []
    folder = tmp_path / "cache"
    whole = build(folder, parts, calls, num_blocks=5).load()  # shards of 2, 2 and 1 blocks
    manifest = json.loads((folder / "cache.json").read_text())
    (folder / "cache.json").write_text(json.dumps({**manifest, "num_blocks": 10**12}))
    with pytest.raises(TeacherCacheError) as info:
        TeacherCache.open(folder).load()  # what distill does
    assert str(info.value) == (
        f"{folder / 'cache.json'}: teacher cache is corrupt: it counts 2 blocks in "
        f"shard-00002.msgpack (num_blocks 1000000000000, blocks_per_shard 2), which holds 1; "
        f"run the same 'tinygen-train teacher-cache' command again to repair it")
    calls.clear()
    repaired = build(folder, parts, calls, num_blocks=5)
    assert sum(calls) == 1 and repaired.num_blocks == 5  # the short shard, scored again
    assert np.array_equal(repaired.load().logits, whole.logits)
    # All shards full, the claim is an unfinished cache: said so, and counted from the folder.
    (folder / "cache.json").write_text(json.dumps({**manifest, "num_blocks": 10**12,
                                                   "blocks_per_shard": 1}))
    with pytest.raises(TeacherCacheError, match=r"incomplete \(3/1000000000000 shards\)"):
        TeacherCache.open(folder).load()


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "\n" not in err, err
    return err


@pytest.mark.parametrize("extra, message", [
    (["--top-k", "5000"], "--top-k 5000 is more than the teacher's vocabulary"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--max-minutes", "0"], "--max-minutes must be > 0, got 0"),
    (["--max-minutes", "-1"], "--max-minutes must be > 0, got -1"),
    # a block of one token has no next token: no student could train on the cache
    (["--block-size", "1"], "--block-size must be >= 2, got 1"),
])
def test_bad_options_are_refused_before_scoring(tiny_gpt2_dir, corpus, tmp_path, capsys,
                                                extra, message):
    out = tmp_path / "cache"
    assert main(["teacher-cache", str(corpus), "--teacher", str(tiny_gpt2_dir), "-o", str(out),
                 "--block-size", "16", "--quiet", *extra]) == 2
    assert message in one_line_error(capsys)
    assert not out.exists()


def test_teacher_folder_advice_fits_the_command(tiny_gpt2_dir, corpus, tmp_path, capsys):
    no_tokenizer, not_model = tmp_path / "no-tokenizer", tmp_path / "notmodel"
    no_tokenizer.mkdir()
    not_model.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_gpt2_dir / name, no_tokenizer)
    (not_model / "readme.txt").write_text("hi")
    for teacher, message in ((no_tokenizer, "has no tokenizer.json"),
                             (not_model, "not a transformers model folder (no config.json)")):
        assert main(["teacher-cache", str(corpus), "--teacher", str(teacher), "-o",
                     str(tmp_path / "cache"), "--block-size", "16", "--quiet"]) == 2
        err = one_line_error(capsys)
        assert f"--teacher {teacher}: {message}" in err
        assert "--tokenizer" not in err  # teacher-cache has no such option


@pytest.mark.parametrize("tokens", ["0", "-3"])
def test_text_tokens_is_named_by_its_flag(exported_gpt2_dir, tiny_gpt2_dir, tmp_path, capsys,
                                         tokens):
    out, tokenizer = tmp_path / "student", tiny_gpt2_dir / "tokenizer.json"
    assert main(["distill", "--teacher", str(exported_gpt2_dir), "--teacher-texts", "3",
                 "--text-tokens", tokens, "--preset", "cpu-tiny", "--tokenizer", str(tokenizer),
                 "-o", str(out), "--quiet"]) == 2
    assert f"--text-tokens must be >= 1, got {tokens}" in one_line_error(capsys)
    assert not (out / "teacher-texts.jsonl").exists()


def test_an_output_that_is_a_file_is_refused(tiny_gpt2_dir, corpus, tmp_path, capsys):
    """-o FILE was mkdir's traceback, after encoding the corpus."""
    out = tmp_path / "notes.txt"
    out.write_text("mine", encoding="utf-8")
    assert main(["teacher-cache", str(corpus), "--teacher", str(tiny_gpt2_dir), "-o", str(out),
                 "--block-size", "16", "--quiet"]) == 2
    assert one_line_error(capsys) == (f"tinygen-train: error: -o {out} is a file; a teacher cache "
                                      f"is a folder: choose another -o")
    assert out.read_text(encoding="utf-8") == "mine"


def test_an_output_inside_the_corpus_folder_is_refused(tiny_gpt2_dir, corpus, tmp_path, capsys):
    """A cache written into its corpus folder was read back as corpus text by the rerun that
    continues it."""
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(corpus, folder)
    out = folder / "cache"
    assert main(["teacher-cache", str(folder), "--teacher", str(tiny_gpt2_dir), "-o", str(out),
                 "--block-size", "16", "--quiet"]) == 2
    assert "is inside the corpus folder" in one_line_error(capsys)
    assert not out.exists()


def test_an_output_holding_other_files_is_refused(tiny_gpt2_dir, corpus, tmp_path, capsys):
    """-o the teacher's own folder (or any folder of the user's) got cache.json and shards
    among its files; an empty folder, or a cache there, is still taken."""
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_gpt2_dir, teacher)
    before = sorted(p.name for p in teacher.iterdir())
    argv = [str(corpus), "--teacher", str(teacher), "--block-size", "16", "--teacher-blocks", "4",
            "--top-k", "4", "--quiet"]
    assert main(["teacher-cache", *argv, "-o", str(teacher)]) == 2
    assert one_line_error(capsys) == (f"tinygen-train: error: -o {teacher} holds config.json and "
                                      f"more and no teacher cache; choose a new or empty folder")
    assert sorted(p.name for p in teacher.iterdir()) == before
    empty = tmp_path / "cache"
    empty.mkdir()
    for _ in range(2):  # made there, then continued there
        assert main(["teacher-cache", *argv, "-o", str(empty)]) == 0
        assert TeacherCache.open(empty).complete


def test_a_corpus_not_utf8_is_read_with_errors_replace_as_its_message_says(tiny_gpt2_dir,
                                                                           tmp_path, capsys):
    latin = tmp_path / "latin1.txt"
    latin.write_bytes(TEXT.replace("little", "caf\xe9").encode("latin-1"))
    args = ["teacher-cache", str(latin), "--teacher", str(tiny_gpt2_dir), "--block-size", "16",
            "--top-k", "4", "--teacher-blocks", "2", "--quiet"]
    assert main([*args, "-o", str(tmp_path / "strict")]) == 2
    assert "--errors replace" in capsys.readouterr().err
    assert main([*args, "-o", str(tmp_path / "replaced"), "--errors", "replace"]) == 0
    assert TeacherCache.open(tmp_path / "replaced").complete
