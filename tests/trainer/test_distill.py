"""Distillation: the teacher cache (resume, corruption, settings) and students learning from it."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from tinygen.errors import TinygenError
from tinygen_trainer.cli import main
from tinygen_trainer.distill import (DistillConfig, DistillTrainer, TeacherCache,
                                     TeacherCacheError, build_teacher_cache, mean_topk_kl)
from tinygen_trainer.distill.teacher import load_corpus, load_teacher, teacher_encoder
from tinygen_trainer.distill.teacher_cache import plan_blocks, teacher_fingerprint, torch_scorer
from tinygen_trainer.training import read_metrics

from training_corpus import corpus, one_thread, tokenizer  # noqa: F401 (fixtures)

BLOCK, TOP_K = 32, 8
# Text in the tiny teachers' domain (their tokenizer is trained on much the same, tests/conftest.py).
TEXT = ("Once upon a time there was a little model that wanted to write stories. "
        "It read every book in the library, from the first page to the last. "
        "The quick brown fox jumps over the lazy dog. To be, or not to be, that is the question. ")


@pytest.fixture(scope="module")
def teacher_corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher-corpus") / "corpus.txt"
    path.write_text(TEXT * 60, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def teacher_parts(tiny_gpt2_dir, teacher_corpus, tmp_path_factory):
    encoder = teacher_encoder(tiny_gpt2_dir, [teacher_corpus], tmp_path_factory.mktemp("enc"))
    dataset = load_corpus([teacher_corpus], encoder, progress=False)
    scorer = torch_scorer(load_teacher(tiny_gpt2_dir), TOP_K)
    return encoder, dataset, scorer, teacher_fingerprint(tiny_gpt2_dir)


def build(folder, parts, score=None, **options):
    encoder, dataset, scorer, fingerprint = parts
    settings = {"block_size": BLOCK, "top_k": TOP_K, "seed": 3, "num_blocks": 24,
                "blocks_per_shard": 5, "batch_size": 2, **options}
    return build_teacher_cache(folder, dataset, encoder, fingerprint, score or scorer, **settings)


@pytest.fixture(scope="module")
def cache_dir(teacher_parts, tmp_path_factory):
    return build(tmp_path_factory.mktemp("cache") / "cache", teacher_parts).folder


# -- the cache ---------------------------------------------------------------------

def test_cache_holds_the_teachers_top_k(cache_dir, teacher_parts, tiny_gpt2_dir):
    import torch

    blocks = TeacherCache.open(cache_dir).load()
    assert blocks.tokens.shape == (24, BLOCK) and blocks.ids.shape == (24, BLOCK, TOP_K)
    # the stored logits are the teacher's largest, in order, to float16 precision
    teacher = load_teacher(tiny_gpt2_dir)
    with torch.inference_mode():
        full = teacher(input_ids=torch.from_numpy(blocks.tokens[:2].astype(np.int64))).logits
    expected = full.topk(TOP_K, dim=-1)
    assert np.array_equal(blocks.ids[:2], expected.indices.numpy())
    np.testing.assert_allclose(blocks.logits[:2], expected.values.numpy(), rtol=2e-3, atol=2e-3)
    # blocks are distinct, non-overlapping windows of the corpus, in the seeded plan's order
    dataset = teacher_parts[1]
    offsets = plan_blocks(dataset, BLOCK, seed=3, num_blocks=24)
    assert len(set(offsets.tolist())) == 24 and np.all(offsets % BLOCK == 0)
    assert np.array_equal(blocks.tokens, dataset.tokens[offsets[:, None] + np.arange(BLOCK)])


def test_killed_cache_resumes_to_the_same_content(cache_dir, teacher_parts, tmp_path):
    calls = []
    scorer = teacher_parts[2]

    def dies_after_two_shards(tokens):
        if len(calls) == 5:  # batch_size 2, 5 blocks per shard: 3 calls a shard
            raise KeyboardInterrupt
        calls.append(len(tokens))
        return scorer(tokens)

    folder = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        build(folder, teacher_parts, score=dies_after_two_shards)
    assert TeacherCache.open(folder).shards_done() == 1
    calls.clear()
    resumed = build(folder, teacher_parts, score=lambda t: (calls.append(len(t)), scorer(t))[1])
    assert resumed.complete and sum(calls) == 24 - 5  # only the missing blocks were scored
    again, whole = resumed.load(), TeacherCache.open(cache_dir).load()
    for name in ("tokens", "ids", "logits"):
        assert np.array_equal(getattr(again, name), getattr(whole, name)), name


def test_max_minutes_splits_the_pass(teacher_parts, tmp_path):
    stopped = build(tmp_path / "cache", teacher_parts, max_minutes=0)
    assert not stopped.complete
    with pytest.raises(TeacherCacheError, match="incomplete .0/5 shards.*run the same"):
        stopped.load()
    assert build(tmp_path / "cache", teacher_parts).complete


def test_corrupt_shard_and_other_settings_are_refused(cache_dir, teacher_parts, tmp_path):
    import shutil

    copy = tmp_path / "cache"
    shutil.copytree(cache_dir, copy)
    shard = copy / "shard-00002.msgpack"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(TeacherCacheError, match="shard-00002.*corrupt.*checksum"):
        TeacherCache.open(copy).load()
    with pytest.raises(TeacherCacheError, match="other settings .top_k"):
        build(copy, teacher_parts, top_k=4)


# -- students ----------------------------------------------------------------------

def student_config(tmp_path, cache, tokenizer_path, **options) -> DistillConfig:
    base = {"output_dir": tmp_path / "student", "teacher_cache": cache, "preset": "cpu-tiny",
            "tokenizer": tokenizer_path, "steps": 40, "batch_size": 8, "warmup_steps": 4,
            "log_every": 1, "checkpoint_every": 0, "progress": False, "seed": 5}
    return DistillConfig(**{**base, **options})


def test_distilled_student_moves_toward_the_teacher(cache_dir, tiny_gpt2_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    blocks = TeacherCache.open(cache_dir).load()
    kl = {}
    for name, weight in (("distilled", 1.0), ("plain", 0.0)):  # same rows, same init
        config = student_config(tmp_path / name, cache_dir, tiny_gpt2_dir / "tokenizer.json",
                                learning_rate=5e-3, kd_weight=weight)
        trainer = DistillTrainer.from_config(config)
        kl["before"] = mean_topk_kl(trainer.model, blocks)
        trainer.model.train()
        out = trainer.fit()
        kl[name] = mean_topk_kl(AutoModelForCausalLM.from_pretrained(out), blocks)
        losses = [m["loss"] for m in read_metrics(out)]
        assert np.mean(losses[-5:]) < np.mean(losses[:5]), name
    # the teacher's logits teach what the text alone does not
    assert kl["distilled"] < 0.75 * kl["before"], kl
    assert kl["distilled"] < 0.85 * kl["plain"], kl


def test_killed_distillation_resumes_exactly(cache_dir, tiny_gpt2_dir, tmp_path):
    class Interrupted(Exception):
        pass

    class DiesAtStep4(DistillTrainer):
        def on_step_end(self, phase, lr, loss):
            super().on_step_end(phase, lr, loss)
            if self.step == 4:
                raise Interrupted

    tok = tiny_gpt2_dir / "tokenizer.json"
    whole = DistillTrainer.from_config(student_config(tmp_path / "a", cache_dir, tok, steps=6,
                                                      checkpoint_every=2)).fit()
    config = student_config(tmp_path / "b", cache_dir, tok, steps=6, checkpoint_every=2)
    with pytest.raises(Interrupted):
        DiesAtStep4.from_config(config).fit()
    import dataclasses

    resumed = DistillTrainer.from_config(dataclasses.replace(config, resume=True)).fit()
    assert [m["loss"] for m in read_metrics(resumed)] == [m["loss"] for m in read_metrics(whole)]


def test_held_out_text_scores_the_students_cross_entropy(cache_dir, tiny_gpt2_dir, tmp_path):
    """The teacher's logits exist for the cache only: held-out text scores the plain
    cross-entropy, as in training, so students distilled or not compare on it."""
    held = tmp_path / "held.txt"
    held.write_text(TEXT * 3, encoding="utf-8")
    tok = tiny_gpt2_dir / "tokenizer.json"
    config = student_config(tmp_path, cache_dir, tok, steps=4, eval_data=held, eval_every=2)
    out = DistillTrainer.from_config(config).fit()
    evals = [m for m in read_metrics(out) if "eval_loss" in m]
    assert [m["step"] for m in evals] == [2, 4]
    result = json.loads((out / "eval_results.json").read_text())
    assert result["eval_loss"] == evals[-1]["eval_loss"]
    with pytest.raises(TinygenError, match=r"distillation trains on every block of its teacher "
                                           r"cache, so --eval-fraction cannot hold documents "
                                           r"out; give held-out text with --eval-data"):
        student_config(tmp_path, cache_dir, tok, eval_fraction=0.1)


def test_student_with_another_tokenizer_is_refused(cache_dir, tokenizer, tmp_path):
    with pytest.raises(TinygenError, match="tokenizer differs.*sequence-level"):
        DistillTrainer.from_config(student_config(tmp_path, cache_dir, tokenizer))


def test_bad_options_are_one_line_errors(cache_dir, tiny_gpt2_dir, tmp_path):
    tok = tiny_gpt2_dir / "tokenizer.json"
    with pytest.raises(TinygenError, match="kd_weight must be in"):
        student_config(tmp_path, cache_dir, tok, kd_weight=1.5)
    with pytest.raises(TinygenError, match="block-size 64 differs from the teacher cache"):
        DistillTrainer.from_config(student_config(tmp_path, cache_dir, tok, block_size=64))
    with pytest.raises(TinygenError, match="not a teacher cache"):
        DistillTrainer.from_config(student_config(tmp_path, tmp_path, tok))


# -- the CLI -----------------------------------------------------------------------

def test_cli_cache_then_distill(tiny_gpt2_dir, teacher_corpus, tmp_path, capsys):
    cache, out = tmp_path / "cache", tmp_path / "student"
    assert main(["teacher-cache", str(teacher_corpus), "--teacher", str(tiny_gpt2_dir), "-o",
                 str(cache), "--block-size", "32", "--top-k", "4", "--teacher-blocks", "8",
                 "--quiet"]) == 0
    assert json.loads((cache / "cache.json").read_text())["num_blocks"] == 8
    assert main(["distill", "--teacher-cache", str(cache), "--preset", "cpu-tiny", "--tokenizer",
                 str(tiny_gpt2_dir / "tokenizer.json"), "-o", str(out), "--steps", "3",
                 "--batch-size", "2", "--warmup-steps", "1", "--quiet"]) == 0
    assert (out / "config.json").is_file()
    assert len(read_metrics(out)) >= 1
    code = main(["distill", "--teacher-cache", str(cache), str(teacher_corpus), "--preset",
                 "cpu-tiny", "--tokenizer", str(tiny_gpt2_dir / "tokenizer.json"), "-o",
                 str(tmp_path / "x"), "--quiet"])
    assert code == 2 and "drop the corpus" in capsys.readouterr().err


def test_sequence_level_distillation(exported_gpt2_dir, tokenizer, tmp_path):
    out = tmp_path / "student"
    args = ["distill", "--teacher", str(exported_gpt2_dir), "--teacher-texts", "6",
            "--text-tokens", "12", "--preset", "cpu-tiny", "--tokenizer", str(tokenizer),
            "-o", str(out), "--steps", "2", "--batch-size", "2", "--block-size", "8",
            "--warmup-steps", "1", "--quiet", "--seed", "11"]
    assert main(args) == 0
    texts_file = out / "teacher-texts.jsonl"
    records = [json.loads(line) for line in texts_file.read_text().splitlines()]
    assert [r["seed"] for r in records] == list(range(11, 17))
    assert all(r["text"] for r in records)
    assert (out / "config.json").is_file()
    # a torn file (killed mid-write) is finished to the same texts: every text is seeded
    whole = texts_file.read_bytes()
    texts_file.write_bytes(whole[:whole.index(b"\n", len(whole) // 3) + 5])
    from tinygen_trainer.distill import TextsRequest, teacher_texts

    teacher_texts(TextsRequest(exported_gpt2_dir, texts_file, 6, max_new_tokens=12, seed=11),
                  progress=False)
    assert texts_file.read_bytes() == whole
    # A rerun the run's checks refuse must not touch the texts its checkpoints trained on
    # (more texts written, then the resume refused the file as changed).
    more = [a if a != "6" else "7" for a in args]
    assert main(more) == 2 and main([*more, "--resume"]) == 2
    assert texts_file.read_bytes() == whole


def test_cache_grows_and_shrinks_keeping_whole_shards(cache_dir, teacher_parts, tmp_path):
    import shutil

    folder = tmp_path / "cache"
    shutil.copytree(cache_dir, folder)  # 24 blocks: shards of 5, 5, 5, 5, 4
    calls = []
    scorer = teacher_parts[2]
    counting = lambda t: (calls.append(len(t)), scorer(t))[1]  # noqa: E731
    grown = build(folder, teacher_parts, score=counting, num_blocks=32)
    assert grown.num_blocks == 32 and sum(calls) == 32 - 20  # the short last shard is redone
    shrunk = build(folder, teacher_parts, score=counting, num_blocks=12)
    assert shrunk.complete and len(shrunk.load()) == 12 and sum(calls) == 12 + 2
    whole = TeacherCache.open(cache_dir).load()
    assert np.array_equal(shrunk.load().ids, whole.ids[:12])


def test_student_embeddings_start_from_the_teachers(cache_dir, tiny_gpt2_dir, tmp_path):
    import torch

    from tinygen_trainer.distill.trainer import projected_embeddings

    teacher = load_teacher(tiny_gpt2_dir).get_input_embeddings().weight.detach()
    # same width (64): the projection is a rotation, so every dot product between tokens stays
    table = projected_embeddings(tiny_gpt2_dir, teacher.shape[0], 64)
    torch.testing.assert_close(table @ table.T, teacher @ teacher.T, atol=1e-3, rtol=1e-3)
    config = student_config(tmp_path, cache_dir, tiny_gpt2_dir / "tokenizer.json",
                            teacher_embeddings=tiny_gpt2_dir, steps=2)
    trainer = DistillTrainer.from_config(config)
    torch.testing.assert_close(trainer.model.get_input_embeddings().weight.detach(), table)
    assert trainer.fit().is_dir()
    with pytest.raises(TinygenError, match="wider than the teacher"):
        projected_embeddings(tiny_gpt2_dir, teacher.shape[0], 128)


def test_teacher_embeddings_with_another_tokenizer_are_refused(cache_dir, tiny_gpt2_dir, tmp_path):
    """A teacher whose tokenizer has the student's size but other ids passed the row count,
    and gave tokens other tokens' embeddings."""
    import shutil

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_gpt2_dir, teacher)
    data = json.loads((teacher / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    a, b = "a", "b"  # two ordinary tokens trade ids: same size, other tokenizer
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (teacher / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    config = student_config(tmp_path, cache_dir, tiny_gpt2_dir / "tokenizer.json",
                            teacher_embeddings=teacher, steps=2)
    with pytest.raises(TinygenError, match="its tokenizer differs from the student's "
                                           r"\(2 of \d+ ids are other tokens\)") as info:
        DistillTrainer.from_config(config)
    assert "\n" not in str(info.value)


# -- corrupt caches, ignored options, options checked before the teacher runs ------------

def test_corrupt_manifest_and_shard_are_one_line_errors(cache_dir, tmp_path):
    import shutil

    import msgpack

    copy = tmp_path / "cache"
    shutil.copytree(cache_dir, copy)
    for decoded in ([1, 2, 3], "shard", 7):  # valid msgpack, but not a map
        (copy / "shard-00001.msgpack").write_bytes(msgpack.packb(decoded))
        with pytest.raises(TeacherCacheError, match="shard-00001.*corrupt: it is not this cache"):
            TeacherCache.open(copy).load()
    manifest = json.loads((copy / "cache.json").read_text())
    broken = [({k: v for k, v in manifest.items() if k != "blocks_per_shard"}, "blocks_per_shard"),
              ({k: v for k, v in manifest.items() if k != "num_blocks"}, "num_blocks"),
              ({**manifest, "top_k": "8"}, "top_k"), ({**manifest, "block_size": 0}, "block_size"),
              ({**manifest, "blocks_per_shard": True}, "blocks_per_shard"),
              ({**manifest, "ids_dtype": "<f8"}, "ids_dtype"),
              ({**manifest, "format_version": "1"}, "format_version"),
              ([manifest], "not a JSON object"), ("cache", "not a JSON object")]
    for content, why in broken:
        (copy / "cache.json").write_text(json.dumps(content))
        with pytest.raises(TeacherCacheError, match=f"cache.json: corrupt .*{why}.*delete") as info:
            TeacherCache.open(copy)
        assert "\n" not in str(info.value)


def test_options_distillation_would_ignore_are_refused(cache_dir, tiny_gpt2_dir, tmp_path, capsys):
    from tinygen_trainer.training import DataSource

    tok = tiny_gpt2_dir / "tokenizer.json"
    with pytest.raises(TinygenError, match="drop --recency"):
        student_config(tmp_path, cache_dir, tok, recency=2.0)
    with pytest.raises(TinygenError, match="drop --loss-weights"):
        student_config(tmp_path, cache_dir, tok, data=(DataSource(cache_dir, loss_weight=0.5),))
    base = ["distill", "--teacher-cache", str(cache_dir), "--preset", "cpu-tiny", "--tokenizer",
            str(tok), "-o", str(tmp_path / "student"), "--quiet"]
    for extra, flag in ((["--recency", "2"], "--recency"),
                        (["--loss-weights", "0.5"], "--loss-weights"), (["--weights", "2"], "--weights")):
        assert main(base + extra) == 2
        assert f"drop {flag}" in capsys.readouterr().err
    assert not (tmp_path / "student").exists()


@pytest.fixture
def no_teacher(monkeypatch):
    """Fails the test if the teacher scores or writes anything."""
    from tinygen_trainer.distill import sequences, teacher

    def must_not_run(*args, **kwargs):
        raise AssertionError("the teacher ran before the options were checked")

    monkeypatch.setattr(teacher, "cache_teacher", must_not_run)
    monkeypatch.setattr(sequences, "teacher_texts", must_not_run)


@pytest.mark.parametrize("extra, message", [
    (["--kd-weight", "1.5"], "--kd-weight must be in"),
    (["--temperature", "0"], "temperature must be > 0"),
    (["--steps", "0"], "steps must be an integer >= 1"),
    (["--loss-weights", "0.5"], "drop --loss-weights"),
    (["--recency", "2"], "drop --recency"),
    (["--no-tokenizer"], "a preset needs --tokenizer"),
])
def test_one_step_distill_checks_options_before_the_teacher_runs(no_teacher, tmp_path, capsys,
                                                                  extra, message):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    tok = [] if extra == ["--no-tokenizer"] else ["--tokenizer", str(tmp_path / "tokenizer.json")]
    extra = [] if extra == ["--no-tokenizer"] else extra
    args = ["distill", str(corpus), "--teacher", str(tmp_path / "teacher"), "--preset", "cpu-tiny",
            *tok, "-o", str(tmp_path / "student"), "--quiet", *extra]
    assert main(args) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--steps", "0"], "steps must be an integer >= 1"),
    (["--no-tokenizer"], "a preset needs --tokenizer"),
    (["--loss-weights", "0.5"], "--loss-weights needs one value per corpus (0), got 1"),
])
def test_sequence_distill_checks_options_before_the_teacher_writes(no_teacher, tmp_path, capsys,
                                                                    extra, message):
    tok = [] if extra == ["--no-tokenizer"] else ["--tokenizer", str(tmp_path / "tokenizer.json")]
    extra = [] if extra == ["--no-tokenizer"] else extra
    args = ["distill", "--teacher", str(tmp_path / "teacher"), "--teacher-texts", "4", "--preset",
            "cpu-tiny", *tok, "-o", str(tmp_path / "student"), "--quiet", *extra]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_sequence_distill_prompts_not_utf8_is_one_line(no_teacher, tmp_path, capsys):
    """A prompts file that is not UTF-8 was a traceback."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"Once\n\xff\xfe upon\n")
    args = ["distill", "--teacher", str(tmp_path / "teacher"), "--teacher-texts", "4", "--prompts",
            str(prompts), "--preset", "cpu-tiny", "--tokenizer", str(tmp_path / "tokenizer.json"),
            "-o", str(tmp_path / "student"), "--quiet"]
    assert main(args) == 2
    assert capsys.readouterr().err == (f"tinygen-train: error: --prompts {prompts}: not UTF-8 at "
                                       f"byte 5; give a text file of prompts, one per line, in "
                                       f"UTF-8\n")


def test_a_missing_text_teacher_is_not_told_to_export_itself(tmp_path):
    from tinygen_trainer.distill import TextsRequest, teacher_texts

    missing = tmp_path / "no-such-teacher"
    with pytest.raises(TinygenError, match=f"^--teacher {missing}: folder not found$"):
        teacher_texts(TextsRequest(missing, tmp_path / "texts.jsonl", 2), progress=False)


def test_one_step_distill_scores_then_trains(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from tinygen_trainer.distill import sequences, teacher, trainer
    from tinygen_trainer.training import DataSource, loop

    calls = []
    monkeypatch.setattr(teacher, "cache_teacher",
                        lambda request: calls.append(request) or SimpleNamespace(complete=True))
    monkeypatch.setattr(trainer, "distill",
                        lambda config: calls.append(config) or config.output_dir)
    corpus, out, tok = tmp_path / "corpus.jsonl", tmp_path / "student", tmp_path / "tokenizer.json"
    corpus.touch()  # records: --field over text files alone is refused
    assert main(["distill", str(corpus), "--teacher", str(tmp_path / "teacher"), "--preset",
                 "cpu-tiny", "--tokenizer", str(tok), "-o", str(out), "--quiet", "--field", "body",
                 "--kd-weight", "0.5"]) == 0
    request, config = calls
    assert request.corpora == (corpus,) and request.output == out / "teacher-cache"
    assert request.field == "body" and request.block_size == 256
    assert config.teacher_cache == out / "teacher-cache" and config.kd_weight == 0.5
    assert config.data == (DataSource(out / "teacher-cache", field="body"),)
    # sequence-level: the texts file joins the corpora the student trains on
    calls.clear()
    monkeypatch.setattr(sequences, "teacher_texts",
                        lambda request, progress: calls.append(request) or request.output)
    monkeypatch.setattr(loop, "train", lambda config: calls.append(config) or config.output_dir)
    assert main(["distill", str(corpus), "--teacher", str(tmp_path / "teacher"), "--teacher-texts",
                 "4", "--preset", "cpu-tiny", "--tokenizer", str(tok), "-o", str(out), "--quiet",
                 "--weights", "3"]) == 0
    request, config = calls
    assert request.count == 4 and request.output == out / "teacher-texts.jsonl"
    assert config.data == (DataSource(corpus, weight=3.0), DataSource(request.output))


def test_a_run_trained_on_its_cache_keeps_the_cache_as_it_is(tiny_gpt2_dir, teacher_corpus,
                                                              tmp_path, capsys):
    """A resume with another --teacher-blocks (or none: the whole corpus), or the command again
    without --resume, scored more blocks into the run's cache (hours, on a real teacher) before
    the refusal, which then named cache.json as 'changed' and left the run to be rescored."""
    out = tmp_path / "student"
    cache = out / "teacher-cache"
    base = ["distill", str(teacher_corpus), "--teacher", str(tiny_gpt2_dir), "--preset",
            "cpu-tiny", "--tokenizer", str(tiny_gpt2_dir / "tokenizer.json"), "-o", str(out),
            "--block-size", str(BLOCK), "--top-k", str(TOP_K), "--batch-size", "2",
            "--checkpoint-every", "1", "--quiet"]
    assert main([*base, "--steps", "2", "--teacher-blocks", "6"]) == 0
    before = {p.name: p.read_bytes() for p in cache.iterdir()}
    capsys.readouterr()
    for extra, message in (
            (["--teacher-blocks", "12", "--resume"], f"{cache} holds the 6 blocks a run trained "
                                                     f"on; resume it with --teacher-blocks 6"),
            (["--resume"], f"{cache} holds the 6 blocks a run trained on"),
            (["--teacher-blocks", "6"], f"{out} already has checkpoints; pass --resume")):
        assert main([*base, "--steps", "3", *extra]) == 2
        assert capsys.readouterr().err.startswith(f"tinygen-train: error: {message}")
        assert {p.name: p.read_bytes() for p in cache.iterdir()} == before  # nothing rescored
    assert main([*base, "--steps", "3", "--teacher-blocks", "6", "--resume"]) == 0
    assert [m["step"] for m in read_metrics(out) if "loss" in m][-1] == 3


@pytest.mark.parametrize("kind, extra, message", [
    ("texts", ["--kd-weight", "0.5"], "--kd-weight is for logit distillation"),
    ("texts", ["--teacher-cache", "cache"], "--teacher-cache is for logit distillation"),
    ("texts", ["--top-k", "8"], "--top-k is for logit distillation"),
    ("logits", ["--prompts", "prompts.txt"], "--prompts is for sequence-level distillation"),
    ("logits", ["--text-tokens", "64"], "--text-tokens is for sequence-level distillation"),
    ("cache", ["--field", "body"], "drop --field"),
    # options that shape a cache built here: a built cache kept its own, silently
    ("cache", ["--top-k", "4"], "so --top-k (for a cache built here) would be ignored; drop --top-k"),
    ("cache", ["--teacher-blocks", "4"], "drop --teacher-blocks"),
    ("cache", ["--teacher", "teacher"], "drop --teacher"),
])
def test_options_of_the_other_kind_of_distillation_are_refused(no_teacher, tmp_path, capsys,
                                                                kind, extra, message):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    source = {"texts": ["--teacher", str(tmp_path / "teacher"), "--teacher-texts", "4"],
              "logits": [str(corpus), "--teacher", str(tmp_path / "teacher")],
              "cache": ["--teacher-cache", str(tmp_path / "cache")]}[kind]
    args = ["distill", *source, "--preset", "cpu-tiny", "--tokenizer",
            str(tmp_path / "tokenizer.json"), "-o", str(tmp_path / "student"), "--quiet", *extra]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "student").exists()


def test_texts_are_continued_only_with_the_settings_that_wrote_them(exported_gpt2_dir, tmp_path):
    """Killed while writing texts, then rerun with other --text-tokens (or prompts, or seed):
    the file went on with texts of the new settings, one corpus of two kinds."""
    from tinygen_trainer.distill import TextsRequest, teacher_texts

    path = tmp_path / "texts.jsonl"
    request = TextsRequest(exported_gpt2_dir, path, 4, ("Once",), max_new_tokens=8, seed=3)
    teacher_texts(request, progress=False)
    whole = path.read_bytes()
    path.write_bytes(whole[:whole.index(b"\n") + 1])  # one text written when it was killed
    for changed, flag in [(dict(max_new_tokens=9), "--text-tokens"), (dict(seed=4), "--seed"),
                          (dict(prompts=("Twice",)), "--prompts")]:
        with pytest.raises(TinygenError) as info:
            teacher_texts(dataclasses.replace(request, **changed), progress=False)
        assert str(info.value) == (f"{path} holds 1 text written with another {flag}; give the "
                                   f"same, or write the texts into another --output")
    teacher_texts(dataclasses.replace(request, count=4, batch_size=3), progress=False)
    assert path.read_bytes() == whole  # the batch size is no setting of the texts
    path.unlink()  # a new file takes new settings
    teacher_texts(dataclasses.replace(request, max_new_tokens=9), progress=False)


def test_teacher_prompts_go_round_per_text_whatever_the_batch(exported_gpt2_dir, tmp_path):
    """--prompts A,B,C with 6 texts gives A,B,C,A,B,C; a text's prompt and seed are its index's."""
    from tinygen_trainer.distill import TextsRequest, teacher_texts

    prompts = ("Once upon", "The quick", "To be")
    files = []
    for batch_size in (4, 1):
        path = tmp_path / f"texts-{batch_size}.jsonl"
        teacher_texts(TextsRequest(exported_gpt2_dir, path, 6, prompts, max_new_tokens=6, seed=3,
                                   batch_size=batch_size), progress=False)
        files.append([json.loads(line) for line in path.read_text().splitlines()])
    records = files[0]
    assert [r["seed"] for r in records] == list(range(3, 9))
    assert all(r["text"].startswith(prompts[i % 3]) for i, r in enumerate(records))
    assert files[0] == files[1]
