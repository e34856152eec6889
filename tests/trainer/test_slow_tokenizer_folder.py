"""A model folder with a slow tokenizer only (vocab.json + merges.txt, as GPT-2 was published):
finetuning and distillation build its tokenizer as export does, instead of asking for --tokenizer."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from tokenizers import Tokenizer

from tinygen.errors import TinygenError
from tinygen_trainer.cli import main
from tinygen_trainer.export.assets import write_tokenizer
from tinygen_trainer.training import TrainConfig, read_metrics, train

from training_corpus import one_thread  # noqa: F401 (fixture)

# Text in the tiny model's domain (its tokenizer is trained on much the same, tests/conftest.py),
# with the end-of-text token inside: a tokenizer without the special tokens splits it in pieces.
TEXT = ("Once upon a time there was a little model that wanted to write stories.<|endoftext|>"
        "The quick brown fox jumps over the lazy dog. To be, or not to be, that is the question. ")


@pytest.fixture(scope="module")
def slow_gpt2_dir(tiny_gpt2_dir, tmp_path_factory):
    """The tiny GPT-2 with what GPT2Tokenizer.save_pretrained writes (vocab.json, merges.txt,
    tokenizer_config.json, special_tokens_map.json) and no tokenizer.json."""
    from transformers import GPT2Tokenizer

    folder = tmp_path_factory.mktemp("slow") / "gpt2"
    shutil.copytree(tiny_gpt2_dir, folder,
                    ignore=shutil.ignore_patterns("tokenizer*", "special_tokens_map.json"))
    vocab, merges = Tokenizer.from_file(str(tiny_gpt2_dir / "tokenizer.json")).model.save(str(folder))
    GPT2Tokenizer(vocab, merges).save_pretrained(folder)
    assert not (folder / "tokenizer.json").exists()
    return folder


@pytest.fixture(scope="module")
def exported_tokenizer(slow_gpt2_dir, tmp_path_factory):
    """The tokenizer.json `tinygen-train export` writes for the folder."""
    return Tokenizer.from_file(str(write_tokenizer(slow_gpt2_dir, tmp_path_factory.mktemp("tok"))))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(TEXT * 40, encoding="utf-8")
    return path


def _added(tokenizer: Tokenizer) -> dict:
    return {i: (t.content, t.special) for i, t in tokenizer.get_added_tokens_decoder().items()}


def test_finetuning_builds_the_tokenizer_export_builds(slow_gpt2_dir, exported_tokenizer, corpus,
                                                      tmp_path):
    out = train(TrainConfig(output_dir=tmp_path / "out", data=(corpus,), model=slow_gpt2_dir,
                            block_size=32, steps=2, batch_size=2, log_every=1,
                            checkpoint_every=0, progress=False))
    assert all(np.isfinite(m["loss"]) for m in read_metrics(out) if "loss" in m)
    assert (out / "model.safetensors").is_file()
    ours = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert ours.encode(TEXT).ids == exported_tokenizer.encode(TEXT).ids
    assert exported_tokenizer.token_to_id("<|endoftext|>") in exported_tokenizer.encode(TEXT).ids
    assert _added(ours) == _added(exported_tokenizer)
    # The end of text is the one config.json names (as in the export's manifest).
    side = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    eos = json.loads((slow_gpt2_dir / "config.json").read_text(encoding="utf-8"))["eos_token_id"]
    assert ours.token_to_id(side["eos_token"]) == eos


def test_distillation_reads_a_slow_teacher_and_student(slow_gpt2_dir, corpus, tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "student"
    assert main(["teacher-cache", str(corpus), "--teacher", str(slow_gpt2_dir), "-o", str(cache),
                 "--block-size", "32", "--top-k", "4", "--teacher-blocks", "4", "--quiet"]) == 0
    # The student shares the teacher's folder, so its tokenizer: the cache's fingerprint matches.
    assert main(["distill", "--teacher-cache", str(cache), "--model", str(slow_gpt2_dir),
                 "-o", str(out), "--steps", "2", "--batch-size", "2", "--quiet"]) == 0
    assert (out / "model.safetensors").is_file()


@pytest.fixture
def swapped_tokenizer(exported_tokenizer, tmp_path):
    """The folder's tokenizer with two ordinary tokens' ids traded: same size, other ids."""
    data = json.loads(exported_tokenizer.to_str())
    vocab = data["model"]["vocab"]
    vocab["a"], vocab["b"] = vocab["b"], vocab["a"]
    path = tmp_path / "swapped" / "tokenizer.json"
    path.parent.mkdir()
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_another_tokenizer_is_checked_against_the_built_one(slow_gpt2_dir, swapped_tokenizer,
                                                            corpus, tmp_path):
    with pytest.raises(TinygenError, match=r"gives 2 of .*tokens other ids"):
        train(TrainConfig(output_dir=tmp_path / "out", data=(corpus,), model=slow_gpt2_dir,
                          tokenizer=swapped_tokenizer, block_size=32, steps=1, progress=False))


def test_teacher_embeddings_are_checked_against_the_built_tokenizer(slow_gpt2_dir,
                                                                    swapped_tokenizer):
    from tinygen_trainer.distill.trainer import projected_embeddings

    vocab = Tokenizer.from_file(str(swapped_tokenizer)).get_vocab(with_added_tokens=True)
    with pytest.raises(TinygenError, match=r"its tokenizer differs from the student's \(2 of"):
        projected_embeddings(slow_gpt2_dir, len(vocab), 64, vocab)
