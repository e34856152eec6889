"""Held-out evaluation: when it is reported, what it measures, which documents it keeps out of
training, that a resume scores the same rows, and bad input as one line."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from tinygen.errors import TinygenError
from tinygen_trainer.cli import main
from tinygen_trainer.data.dataset import IGNORE_INDEX, TokenDataset
from tinygen_trainer.data.encoder import Encoder
from tinygen_trainer.data.holdout import EvalRows, hold_out
from tinygen_trainer.training import TrainConfig, Trainer, read_metrics, train

from training_corpus import SENTENCES, corpus, one_thread, tokenizer  # noqa: F401 (fixtures)

BLOCK = 32


def tiny(tmp_path, corpus, tokenizer_path, **options) -> TrainConfig:
    base = {"output_dir": tmp_path / "out", "data": (corpus,), "preset": "cpu-tiny",
            "tokenizer": tokenizer_path, "steps": 4, "block_size": BLOCK, "batch_size": 4,
            "warmup_steps": 1, "log_every": 1, "checkpoint_every": 0, "progress": False}
    return TrainConfig(**{**base, **options})


def evals(out) -> list[dict]:
    return [m for m in read_metrics(out) if "eval_loss" in m]


def train_losses(out) -> list[float]:
    return [m["loss"] for m in read_metrics(out) if "loss" in m]


@pytest.fixture(scope="module")
def held(tmp_path_factory):
    """Held-out text: the corpus's sentences in another order, 624 tokens: 19 rows of 32 and a
    last one for the remainder."""
    rng = np.random.default_rng(7)
    path = tmp_path_factory.mktemp("held") / "held.txt"
    path.write_text(" ".join(rng.choice(SENTENCES, size=60)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """40 JSONL documents, each tagged <doc NNN> so a training row shows whose text it holds."""
    rng = np.random.default_rng(3)
    path = tmp_path_factory.mktemp("records") / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": f"<doc {i:03d}> " + " ".join(
        rng.choice(SENTENCES, size=3))}) + "\n" for i in range(40)), encoding="utf-8")
    return path


def encoder_for(tokenizer_path) -> Encoder:
    return Encoder.load(tokenizer_path)


# -- when and where it is reported ----------------------------------------------------

def test_eval_is_reported_every_n_steps_and_at_the_end(tmp_path, corpus, tokenizer, held, capsys):
    out = train(tiny(tmp_path, corpus, tokenizer, steps=5, eval_data=held, eval_every=2,
                     progress=True, tensorboard_dir=tmp_path / "tb"))
    rows = evals(out)
    assert [r["step"] for r in rows] == [2, 4, 5]  # every 2 steps, and the last step
    for r in rows:
        assert set(r) == {"step", "eval_loss", "eval_perplexity", "eval_tokens"}
        assert r["eval_perplexity"] == pytest.approx(math.exp(r["eval_loss"]))
    assert rows[-1]["eval_loss"] < rows[0]["eval_loss"]  # it learns the sentences
    assert len(train_losses(out)) == 5  # the training rows are as they were
    # ... beside the trained model, its last figures
    result = json.loads((out / "eval_results.json").read_text())
    assert {k: result[k] for k in rows[-1]} == rows[-1]
    assert result["eval_source"] == f"--eval-data {held}"
    # ... in the progress output
    err = capsys.readouterr().err
    assert re.search(r"held out: 20 rows \(605 tokens\) of --eval-data .*held.txt, 5 batches "
                     r"an evaluation", err), err
    for r in rows:
        assert f"step {r['step']}: held-out loss {r['eval_loss']:.4f}, perplexity " in err
    # ... and in TensorBoard
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("eval/loss")] == [2, 4, 5]
    assert [e.value for e in events.Scalars("eval/perplexity")] == \
        pytest.approx([r["eval_perplexity"] for r in rows], rel=1e-6)
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4, 5]


def test_without_eval_every_it_runs_once_at_the_end(tmp_path, corpus, tokenizer, held):
    out = train(tiny(tmp_path, corpus, tokenizer, steps=3, eval_data=held))
    assert [r["step"] for r in evals(out)] == [3]


def test_evaluation_does_not_change_training(tmp_path, corpus, tokenizer, held, tiny_gpt2_dir):
    """Finetuning tiny GPT-2 keeps its dropout 0.1: an evaluation that drew random numbers, or
    left the model in eval mode, would change the losses after it."""
    options = dict(preset=None, model=tiny_gpt2_dir, tokenizer=None, learning_rate=1e-3, steps=4)
    plain = train(tiny(tmp_path / "a", corpus, tokenizer, **options))
    scored = train(tiny(tmp_path / "b", corpus, tokenizer, eval_data=held, eval_every=1,
                        **options))
    assert train_losses(scored) == train_losses(plain)
    a, b = load_file(plain / "model.safetensors"), load_file(scored / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


# -- what it measures ----------------------------------------------------------------

def independent_loss(model_dir, token_rows: list[list[int]]) -> tuple[float, int]:
    """Mean next-token cross-entropy of the saved model over `token_rows`, each row scored on
    its own, every token after the first predicted."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for row in token_rows:
            ids = torch.tensor([row])
            logits = model(input_ids=ids).logits[0, :-1].double()
            total += float(F.cross_entropy(logits, ids[0, 1:], reduction="sum"))
            count += len(row) - 1
    return total / count, count


def test_windows_loss_equals_the_models_loss_on_those_rows(tmp_path, corpus, tokenizer, held):
    out = train(tiny(tmp_path, corpus, tokenizer, eval_data=held))
    encoder = encoder_for(tokenizer)
    stream = [*encoder.tokenizer.encode(held.read_text()).ids, encoder.eos_id]
    n = len(stream)
    full = n // BLOCK
    assert n % BLOCK, "the fixture is meant to leave a remainder"
    rows = [stream[i * BLOCK:(i + 1) * BLOCK] for i in range(full)]
    # every token of the stream not first in a row, the remainder scored after its context
    expected, count = independent_loss(out, rows)
    tail_total, tail_count = 0.0, 0
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        ids = torch.tensor([stream[n - BLOCK:]])
        per_token = F.cross_entropy(model(input_ids=ids).logits[0, :-1].double(), ids[0, 1:],
                                    reduction="none")
        fresh = n - full * BLOCK  # the targets no full row predicted
        tail_total, tail_count = float(per_token[-fresh:].sum()), fresh
    expected = (expected * count + tail_total) / (count + tail_count)
    result = json.loads((out / "eval_results.json").read_text())
    assert result["eval_tokens"] == count + tail_count == n - full
    assert result["eval_loss"] == pytest.approx(expected, rel=1e-5)


def test_line_by_line_loss_is_each_records_loss(tmp_path, tokenizer):
    lines = tmp_path / "train.txt"
    lines.write_text("\n".join(SENTENCES * 4), encoding="utf-8")
    held = tmp_path / "held.txt"
    held.write_text("the cat ran in the park.\na bird sat on the roof by the fire.\nthe sun.\n",
                    encoding="utf-8")
    # batch 4 over 3 records: the last batch is filled with rows that predict nothing
    out = train(tiny(tmp_path, lines, tokenizer, data=(lines,), line_by_line=True, block_size=16,
                     eval_data=held))
    encoder = encoder_for(tokenizer)
    rows = [[*encoder.tokenizer.encode(line).ids, encoder.eos_id]
            for line in held.read_text().splitlines()]
    expected, count = independent_loss(out, rows)
    result = json.loads((out / "eval_results.json").read_text())
    assert result["eval_tokens"] == count
    assert result["eval_loss"] == pytest.approx(expected, rel=1e-5)


def test_eval_rows_predict_what_they_count(tokenizer, held):
    encoder = encoder_for(tokenizer)
    dataset = TokenDataset.from_path(held, encoder, progress=False)
    for line_by_line in (False, True):
        rows = EvalRows(dataset, 8 if line_by_line else BLOCK, line_by_line, pad_id=0)
        index = np.arange(len(rows))
        cut = rows.rows(index)
        assert cut.input_ids.shape == (len(rows), rows.block_size)
        assert rows.targets(index) == int((cut.labels[:, 1:] != IGNORE_INDEX).sum())
    windows = EvalRows(dataset, BLOCK, False, pad_id=0)
    targets = windows.rows(np.arange(len(windows))).labels
    # each token of the stream is a label once, or, first in a full row, never
    seen = np.concatenate([row[row != IGNORE_INDEX] for row in targets])
    assert len(seen) == dataset.num_tokens


def test_held_out_records_cut_to_the_block_are_counted_in_a_warning(tokenizer, records, capsys):
    dataset = TokenDataset.from_path(records, encoder_for(tokenizer), progress=False)
    lengths = np.diff(dataset.doc_ends, prepend=0)
    block = int(np.sort(lengths)[len(lengths) // 2])  # some records are longer, not all
    longer = int(np.sum(lengths > block))
    assert 0 < longer < len(lengths)
    EvalRows(dataset, block, True, pad_id=0)
    assert capsys.readouterr().err == (
        f"tinygen-train: warning: {dataset.name}: {longer:,} of {len(lengths):,} records are longer "
        f"than block_size {block}; the held-out loss scores their first {block} tokens only\n")
    EvalRows(dataset, int(lengths.max()), True, pad_id=0)
    EvalRows(dataset, block, False, pad_id=0)  # windows cover every token: nothing to say
    assert capsys.readouterr().err == ""


def test_eval_batches_bounds_an_evaluation(tmp_path, corpus, tokenizer, held):
    out = train(tiny(tmp_path, corpus, tokenizer, steps=2, eval_data=held, eval_batches=2))
    whole = train(tiny(tmp_path / "all", corpus, tokenizer, steps=2, eval_data=held))
    some, every = evals(out)[-1], evals(whole)[-1]
    assert some["eval_tokens"] == 8 * (BLOCK - 1)  # 2 batches of 4 full rows
    assert every["eval_tokens"] > some["eval_tokens"]


# -- --eval-fraction: documents held out of training ---------------------------------

class RecordingRows(Trainer):
    """Keeps every training row it is fed, as token ids."""

    def host_batch(self, rows):
        self.fed = getattr(self, "fed", [])
        self.fed.extend(rows.input_ids.tolist())
        return super().host_batch(rows)


def tags(encoder, rows) -> set[str]:
    return set(re.findall(r"<doc (\d{3})>", "\n".join(encoder.tokenizer.decode(r) for r in rows)))


def test_fraction_holds_whole_documents_out_of_training(tmp_path, records, tokenizer):
    config = tiny(tmp_path, records, tokenizer, data=(records,), eval_fraction=0.25,
                  block_size=16, steps=30, batch_size=8)
    trainer = RecordingRows.from_config(config)
    encoder = trainer.encoder
    held = tags(encoder, [trainer.evaluation.rows.dataset.tokens.tolist()])
    assert len(held) == 10  # a quarter of 40 documents
    trainer.fit()
    trained = tags(encoder, trainer.fed)
    assert len(trained) > 20  # the check sees documents ...
    assert not trained & held  # ... and no held-out one was trained on
    assert trainer.evaluation.rows.dataset.num_documents == 10
    assert evals(config.output_dir)[-1]["step"] == 30

    # the same documents whatever the seed: runs that differ in seed score the same text
    other = Trainer.from_config(dataclasses.replace(config, seed=9,
                                                    output_dir=tmp_path / "seed9"))
    assert other.evaluation.fingerprint() == trainer.evaluation.fingerprint()


def test_hold_out_splits_a_corpus_by_documents(tokenizer, records):
    encoder = encoder_for(tokenizer)
    dataset = TokenDataset.from_path(records, encoder, progress=False)
    kept, held = hold_out(dataset, 0.1, index=0)
    assert (kept.num_documents, held.num_documents) == (36, 4)
    assert kept.num_tokens + held.num_tokens == dataset.num_tokens
    docs = {tuple(dataset.document(i)) for i in range(40)}
    split = [tuple(kept.document(i)) for i in range(36)] + \
        [tuple(held.document(i)) for i in range(4)]
    assert set(split) == docs  # every document in one part, whole
    again, _ = hold_out(dataset, 0.1, index=0)
    assert np.array_equal(again.tokens, kept.tokens)  # a fixed draw
    assert not np.array_equal(hold_out(dataset, 0.1, index=1)[1].tokens, held.tokens)


def test_a_resume_scores_the_same_held_out_rows(tmp_path, records, tokenizer, held):
    config = tiny(tmp_path, records, tokenizer, data=(records,), eval_fraction=0.25, block_size=16,
                  steps=4, eval_every=2, checkpoint_every=2)
    straight = train(config)
    state = json.loads((straight / "checkpoints" / "step-00000002" / "state.json").read_text())
    assert len(state["held_out_sha256"]) == 64

    # as if killed after the checkpoint of step 2
    out = tmp_path / "resumed"
    shutil.copytree(straight / "checkpoints", out / "checkpoints")
    shutil.rmtree(out / "checkpoints" / "step-00000004")
    shutil.copy(straight / "metrics.jsonl", out)
    resumed = dataclasses.replace(config, output_dir=out, resume=True)
    train(resumed)
    assert evals(out) == evals(straight)  # the same rows, the same weights: the same figures
    assert train_losses(out) == train_losses(straight)

    # another share would hold out other documents, and train on others
    with pytest.raises(TinygenError, match=r"trained with eval_fraction=0.25, this run has 0.5"):
        train(dataclasses.replace(resumed, eval_fraction=0.5, steps=6))
    with pytest.raises(TinygenError, match=r"trained with eval_data=the default"):
        train(dataclasses.replace(resumed, eval_fraction=None, eval_data=held, steps=6))
    # what the options made of the corpus is checked too (say, another draw of documents)
    checkpoint = out / "checkpoints" / "step-00000004"
    state = json.loads((checkpoint / "state.json").read_text())
    (checkpoint / "state.json").write_text(json.dumps({**state, "held_out_sha256": "0" * 64}))
    with pytest.raises(TinygenError, match=r"cannot resume .*step-00000004: its run held out "
                                           r"other text than this one would") as info:
        train(dataclasses.replace(resumed, steps=6))
    assert "\n" not in str(info.value)


# -- distributed: each process scores its share (see also test_torchrun.py) ------------------

def test_each_process_scores_its_share(tmp_path, corpus, tokenizer, held, monkeypatch):
    """Two processes as one sees them: halves of every batch, the sums added (all_sum)."""
    from tinygen_trainer.training.device import Backend
    from tinygen_trainer.training.evaluation import Evaluation
    from tinygen_trainer.training.feed import Feed

    trainer = Trainer.from_config(tiny(tmp_path, corpus, tokenizer, eval_data=held))
    whole = trainer.run_evaluation()
    halves = []
    for part in (0, 1):
        backend = Backend()
        backend.feed = lambda sampler, make, batch, accum, part=part: Feed(
            sampler, make, batch, accum, backend.to_device, part, 2)
        backend.all_sum = lambda value: halves.append(float(value)) or value
        trainer.evaluation.run(trainer.model, backend, 0)
    assert sum(halves) / whole.tokens == pytest.approx(whole.loss, rel=1e-6)
    assert isinstance(trainer.evaluation, Evaluation)


# -- bad input: one line ------------------------------------------------------------

@pytest.mark.parametrize("options, message", [
    ({"eval_fraction": 0.0}, "eval_fraction must be between 0 and 1 (a share of the documents, "
                             "e.g. 0.1), got 0.0"),
    ({"eval_fraction": 1}, "eval_fraction must be between 0 and 1"),
    ({"eval_fraction": -0.2}, "eval_fraction must be between 0 and 1"),
    ({"eval_fraction": 0.1, "eval_data": "held.txt"},
     "give held-out text either as --eval-data or as --eval-fraction, not both"),
    ({"eval_every": 5}, "--eval-every 5 needs held-out text: give --eval-data PATH or "
                        "--eval-fraction F"),
    ({"eval_batches": 2}, "--eval-batches 2 needs held-out text"),
    ({"eval_data": "held.txt", "eval_every": -1}, "eval_every must be an integer >= 0, got -1"),
    ({"eval_data": "held.txt", "eval_batches": 0}, "eval_batches must be an integer >= 1, got 0"),
    ({"eval_data": "CORPUS"}, "--eval-data CORPUS is also a training corpus, so its text is not "
                              "held out; give other text, or hold out part of the corpora with "
                              "--eval-fraction"),
])
def test_bad_options_are_one_line(tmp_path, corpus, tokenizer, options, message):
    if options.get("eval_data") == "CORPUS":
        options, message = {"eval_data": corpus}, message.replace("CORPUS", str(corpus))
    with pytest.raises(TinygenError) as info:
        tiny(tmp_path, corpus, tokenizer, **options)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_bad_held_out_text_is_one_line_before_training(tmp_path, corpus, records, tokenizer):
    def fails(match, **options):
        with pytest.raises(TinygenError, match=match) as info:
            Trainer.from_config(tiny(tmp_path, corpus, tokenizer, **options))
        assert "\n" not in str(info.value)
        assert not (tmp_path / "out").exists()  # nothing trained, nothing left

    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n", encoding="utf-8")
    fails(r"empty.txt: corpus is empty", eval_data=empty)
    short = tmp_path / "short.txt"
    short.write_text("the cat sat.", encoding="utf-8")
    fails(r"short.txt: \d+ tokens, fewer than one row of block_size 32; hold out more text or "
          r"use a smaller --block-size", eval_data=short)
    fails(r"corpus not found: .*missing.txt", eval_data=tmp_path / "missing.txt")
    # a text file is one document: there is nothing to split off
    fails(r"stories.txt: --eval-fraction 0.1 of its 1 document holds out 1, leaving none to "
          r"train on \(a text file is one document: split it into files, or use --line-by-line "
          r"for one document per line\); lower it, or give held-out text with --eval-data",
          eval_fraction=0.1)
    fails(r"docs.jsonl: --eval-fraction 0.99 of its 40 documents holds out 40, leaving none",
          data=(records,), eval_fraction=0.99)
    # what is left must still fill a row
    fails(r"docs.jsonl \(less 39 held-out documents\): \d+ tokens, fewer than block_size 64",
          data=(records,), eval_fraction=0.97, block_size=64)


def test_held_out_text_that_is_a_training_corpus_under_another_name_is_refused(
        tmp_path, corpus, records, tokenizer, held):
    """The corpus's token cache trained on with the corpus itself as --eval-data (or a copy of
    it) was scored as held-out text: the path differs, the text is the one trained on."""
    encoder = Encoder.load(tokenizer)
    cache = TokenDataset.from_path(corpus, encoder, progress=False).save(
        tmp_path / "train.tokens", encoder)
    copy = tmp_path / "copy.txt"
    shutil.copy(corpus, copy)
    for data, eval_data, trained in (((cache,), corpus, cache), ((corpus,), cache, corpus),
                                     ((records, corpus), copy, corpus)):
        with pytest.raises(TinygenError) as info:
            Trainer.from_config(tiny(tmp_path, corpus, tokenizer, data=data, eval_data=eval_data))
        assert str(info.value) == (
            f"--eval-data {eval_data} holds the same text as the training corpus {trained}, so "
            f"it is not held out; give other text, or hold out part of the corpora with "
            f"--eval-fraction")
        assert not (tmp_path / "out").exists()
    # other text beside the cache still evaluates
    Trainer.from_config(tiny(tmp_path, corpus, tokenizer, data=(cache,), eval_data=held))


def test_held_out_text_read_by_a_training_folder_is_refused(tmp_path, corpus, tokenizer, held):
    """`train data --eval-data data/holdout.txt` (or a held-out folder holding the corpus)
    trained on the held-out text and scored it as held out."""
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(corpus, folder / "train.txt")
    shutil.copy(held, folder / "holdout.txt")
    for data, eval_data, shared in (((folder,), folder / "holdout.txt", "holdout.txt"),
                                    ((folder / "train.txt",), folder, "train.txt")):
        with pytest.raises(TinygenError) as info:
            tiny(tmp_path, corpus, tokenizer, data=data, eval_data=eval_data)
        assert str(info.value) == (
            f"--eval-data {eval_data} and the training corpora both read "
            f"{(folder / shared).resolve()}, so its text is not held out; give other text, or "
            f"hold out part of the corpora with --eval-fraction")
    tiny(tmp_path, corpus, tokenizer, data=(folder / "train.txt",), eval_data=held)  # apart: fine


def test_cli_flags_and_final_line(tmp_path, corpus, tokenizer, held, capsys):
    base = ["train", str(corpus), "--preset", "cpu-tiny", "--tokenizer", str(tokenizer),
            "--block-size", "32", "--batch-size", "4", "--steps", "2", "--checkpoint-every", "0",
            "--quiet"]
    out = tmp_path / "out"
    assert main([*base, "-o", str(out), "--eval-data", str(held), "--eval-every", "1"]) == 0
    err = capsys.readouterr().err
    result = json.loads((out / "eval_results.json").read_text())
    assert (f"saved the model to {out} (held-out perplexity {result['eval_perplexity']:.2f}, "
            f"loss {result['eval_loss']:.4f}); next: tinygen-train export") in err
    assert [r["step"] for r in evals(out)] == [1, 2]
    assert json.loads((out / "train_config.json").read_text())["eval_data"]["path"] == str(held)

    assert main([*base, "-o", str(tmp_path / "b"), "--eval-every", "3"]) == 2
    err = capsys.readouterr().err
    assert err == ("tinygen-train: error: --eval-every 3 needs held-out text: give --eval-data "
                   "PATH or --eval-fraction F\n")
    with pytest.raises(SystemExit) as info:
        main([*base, "-o", str(tmp_path / "c"), "--eval-data", str(held), "--eval-fraction", "0.1"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "not allowed with" in err
