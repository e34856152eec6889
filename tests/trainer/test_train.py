"""Training: loss falls, exact resume, atomic checkpoints, blends and phases, bad input, the CLI."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

from tinygen.errors import TinygenError
from tinygen.replacements import EncodeRule, Replacements
from tinygen_trainer.cli import main
from tinygen_trainer.tokenizer_training import TokenizerConfig, save_tokenizer, train_tokenizer
from tinygen_trainer.training import DataSource, Phase, TrainConfig, Trainer, read_metrics, train
from tinygen_trainer.training.device import select_backend

from training_corpus import (SENTENCES, Interrupted, corpus, dies_after,  # noqa: E402,F401
                             one_thread, tokenizer)  # (fixtures)


def tiny(tmp_path, corpus, tokenizer_path, **options) -> TrainConfig:
    """A few steps of the cpu-tiny preset; `options` override any field."""
    base = {"output_dir": tmp_path / "out", "data": (corpus,), "preset": "cpu-tiny",
            "tokenizer": tokenizer_path, "steps": 6, "block_size": 32, "batch_size": 4,
            "warmup_steps": 2, "log_every": 1, "checkpoint_every": 0, "progress": False}
    return TrainConfig(**{**base, **options})


def losses(out) -> list[float]:
    return [m["loss"] for m in read_metrics(out)]


# -- learning ----------------------------------------------------------------------

def test_loss_falls_from_scratch(tmp_path, corpus, tokenizer):
    out = train(tiny(tmp_path, corpus, tokenizer, steps=40, batch_size=8, warmup_steps=4))
    values = losses(out)
    assert len(values) == 40
    assert np.mean(values[-5:]) < np.mean(values[:5]) - 1.5, values
    # the output is a transformers model folder, ready for export
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.n_layer == 2 and model.config.n_embd == 64
    assert AutoTokenizer.from_pretrained(out).eos_token == "<|endoftext|>"
    assert json.loads((out / "train_config.json").read_text())["preset"] == "cpu-tiny"


def test_finetune_llama_with_padding(tmp_path, tiny_llama_dir):
    lines = tmp_path / "lines.txt"
    lines.write_text("\n".join(SENTENCES * 5), encoding="utf-8")
    out = train(TrainConfig(output_dir=tmp_path / "out", data=(lines,), model=tiny_llama_dir,
                            line_by_line=True, block_size=24, steps=4, batch_size=4, log_every=1,
                            checkpoint_every=0, progress=False))
    assert all(np.isfinite(losses(out)))
    assert (out / "model.safetensors").is_file()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_padded_rows_score_as_with_an_attention_mask(tmp_path, tiny_gpt2_dir, tiny_llama_dir,
                                                     family):
    """Line-by-line rows are padded after their text, so the model needs no mask (causal
    attention keeps the text from the padding, whose predictions have no labels): the loss
    is the masked one, to float rounding."""
    from tinygen_trainer.training.loss import causal_lm_loss

    lines = tmp_path / "lines.txt"
    lines.write_text("\n".join(" ".join(SENTENCES[i:i + 1 + i % 3]) for i in range(12)),
                     encoding="utf-8")
    model = {"gpt2": tiny_gpt2_dir, "llama": tiny_llama_dir}[family]
    trainer = Trainer.from_config(TrainConfig(
        output_dir=tmp_path / "out", data=(lines,), model=model, line_by_line=True,
        block_size=24, steps=1, batch_size=6, checkpoint_every=0, progress=False))
    trainer.model.eval()  # no dropout: the two forwards see the same weights alike
    rows = trainer.phases[0].sampler.next_rows(6)
    assert not rows.attention_mask.all()  # padded rows, or the test shows nothing
    with torch.no_grad():
        unmasked = trainer.batch_loss(trainer.host_batch(rows))
        masked = causal_lm_loss(
            trainer.model(input_ids=torch.from_numpy(rows.input_ids),
                          attention_mask=torch.from_numpy(rows.attention_mask.astype(np.int64)),
                          use_cache=False).logits,
            torch.from_numpy(rows.labels))
    assert unmasked.item() == pytest.approx(masked.item(), rel=1e-5)


def test_finetune_adds_replacement_tokens(tmp_path, tiny_gpt2_dir):
    corpus = tmp_path / "links.txt"
    corpus.write_text("see https://a.example/x or http://b.example/y. " * 30, encoding="utf-8")
    rules = Replacements(encode=(EncodeRule(r"https?://\S+", "<|url|>", regex=True),),
                         decode={"<|url|>": "<url>"})
    rules.save(tmp_path / "replacements.json")
    out = train(TrainConfig(output_dir=tmp_path / "out", data=(corpus,), model=tiny_gpt2_dir,
                            replacements=tmp_path / "replacements.json", block_size=32, steps=2,
                            batch_size=2, checkpoint_every=0, progress=False))
    # the tokenizer had no <|url|>: it became id 320 and the embedding grew to hold it
    assert Tokenizer.from_file(str(out / "tokenizer.json")).token_to_id("<|url|>") == 320
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 321
    assert Replacements.load(out / "replacements.json") == rules


def test_bf16_autocast_on_cpu(tmp_path, corpus, tokenizer):
    out = train(tiny(tmp_path, corpus, tokenizer, steps=2, precision="bf16", device="cpu"))
    assert all(np.isfinite(losses(out)))


# -- exact resume ------------------------------------------------------------------

def test_finetuning_with_another_tokenizer_is_refused(tmp_path, corpus, tokenizer, tiny_gpt2_dir):
    """The fixture tokenizer (trained on the corpus) numbers tokens otherwise than the model's."""
    with pytest.raises(TinygenError, match=r"gives \d+ of .*tokens other ids .*finetune with the "
                                           r"model's own tokenizer"):
        train(TrainConfig(output_dir=tmp_path / "out", data=(corpus,), model=tiny_gpt2_dir,
                          tokenizer=tokenizer, block_size=16, steps=1, progress=False))
    # the model's own tokenizer, saved elsewhere (here without its pretty-printing), is fine
    (tmp_path / "copy.json").write_text(Tokenizer.from_file(str(tiny_gpt2_dir / "tokenizer.json")).to_str())
    train(TrainConfig(output_dir=tmp_path / "ok", data=(corpus,), model=tiny_gpt2_dir,
                      tokenizer=tmp_path / "copy.json", block_size=16, steps=1, batch_size=2,
                      checkpoint_every=0, progress=False))


@pytest.mark.parametrize("source", ["preset", "finetune"])
def test_resume_gives_the_same_losses(tmp_path, corpus, tokenizer, tiny_gpt2_dir, source):
    # finetuning tiny GPT-2 keeps its default dropout 0.1: the RNG state must come back too
    options = dict(steps=6, checkpoint_every=3, grad_accum=2)
    if source == "finetune":
        options.update(preset=None, model=tiny_gpt2_dir, tokenizer=None, learning_rate=1e-3)
    straight = train(tiny(tmp_path / "a", corpus, tokenizer, **options))

    config = tiny(tmp_path / "b", corpus, tokenizer, **options)
    with pytest.raises(Interrupted):
        dies_after(5).from_config(config).fit()
    out = config.output_dir
    assert [m["step"] for m in read_metrics(out)] == [1, 2, 3, 4, 5]
    # a kill while writing step 6 leaves a temp folder; a broken folder has no state.json
    (out / "checkpoints" / ".tmp-step-00000006-x1").mkdir()
    (out / "checkpoints" / ".tmp-step-00000006-x1" / "model.safetensors").write_bytes(b"partial")
    (out / "checkpoints" / "step-00000005").mkdir()
    (out / "checkpoints" / "step-00000005" / "config.json").write_text("{}")

    with pytest.raises(TinygenError, match="already has checkpoints; pass --resume"):
        train(config)
    resumed = train(dataclasses.replace(config, resume=True))

    assert [m["step"] for m in read_metrics(resumed)] == list(range(1, 7))
    assert losses(resumed) == losses(straight)  # exactly, step for step
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["step-00000003", "step-00000005", "step-00000006"]  # temp folder cleaned up


def test_keeps_the_last_k_checkpoints(tmp_path, corpus, tokenizer):
    out = train(tiny(tmp_path, corpus, tokenizer, steps=4, checkpoint_every=1, keep_checkpoints=2))
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["step-00000003", "step-00000004"]
    state = json.loads((out / "checkpoints" / "step-00000004" / "state.json").read_text())
    assert state["step"] == 4 and set(state["rng"]) == {"python", "numpy", "torch", "device"}
    # a checkpoint is itself a loadable model folder
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out / "checkpoints" / "step-00000004")
    # the weights as readable as the rest (safetensors writes them 0600: private to one account)
    from tinygen.atomic import new_file_mode

    for folder in (out, out / "checkpoints" / "step-00000004"):
        assert oct((folder / "model.safetensors").stat().st_mode & 0o777) == oct(new_file_mode())
        assert (folder / "model.safetensors").stat().st_mode & 0o777 == \
            (folder / "config.json").stat().st_mode & 0o777


def test_resume_refuses_changed_options(tmp_path, corpus, tokenizer):
    config = tiny(tmp_path, corpus, tokenizer, steps=2, checkpoint_every=2)
    train(config)
    with pytest.raises(TinygenError, match="trained with batch_size=4, this run has 8"):
        train(dataclasses.replace(config, resume=True, batch_size=8))
    with pytest.raises(TinygenError, match="trained with block_size=32, this run has the default"):
        train(dataclasses.replace(config, resume=True, block_size=None))
    # more steps is a valid change: the run continues from step 2
    longer = train(dataclasses.replace(config, resume=True, steps=3))
    assert [m["step"] for m in read_metrics(longer)] == [1, 2, 3]


def test_resume_without_a_checkpoint_says_it_starts_fresh(tmp_path, corpus, tokenizer, capsys):
    config = tiny(tmp_path, corpus, tokenizer, steps=1, resume=True)
    train(config)
    assert (f"note: --resume: {config.output_dir} has no checkpoint yet; training starts at step 0"
            in capsys.readouterr().err)


def test_a_new_run_refuses_a_folder_holding_something_else(tmp_path, corpus, tokenizer):
    def run(out, **options):
        return train(tiny(tmp_path, corpus, tokenizer, output_dir=out, steps=1, **options))

    done = run(tmp_path / "done")
    weights = (done / "model.safetensors").read_bytes()
    with pytest.raises(TinygenError, match="already holds a trained model; choose another --output"):
        run(done, seed=5)
    assert (done / "model.safetensors").read_bytes() == weights
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("mine")
    with pytest.raises(TinygenError, match=r"holds notes.txt, which is not a training run's"):
        run(data)
    assert [p.name for p in data.iterdir()] == ["notes.txt"]
    # what a run killed before its first checkpoint leaves is no obstacle
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0}\n')
    run(killed)


def test_resume_refuses_a_changed_corpus_and_notes_changed_optimisation(tmp_path, corpus, tokenizer,
                                                                         capsys):
    text = tmp_path / "corpus.txt"
    shutil.copy(corpus, text)
    config = tiny(tmp_path, text, tokenizer, data=(text,), steps=2, checkpoint_every=1)
    train(config)
    shutil.rmtree(config.output_dir / "checkpoints" / "step-00000002")
    capsys.readouterr()
    longer = dataclasses.replace(config, resume=True, steps=3, learning_rate=0.05)
    train(longer)
    err = capsys.readouterr().err
    assert "note: resuming with learning_rate=0.05 where the checkpoint's run had the default" in err
    # more steps continues the run, but the cosine schedule stretches to the new length
    assert ("note: resuming with 3 steps where the checkpoint's run had 2: the cosine learning-rate "
            "schedule stretches to the new length") in err
    text.write_text(text.read_text()[: len(text.read_text()) // 2])
    with pytest.raises(TinygenError, match=r"corpus.txt changed since it was written .*restore it"):
        train(dataclasses.replace(longer, steps=4))


def test_samples_do_not_change_training(tmp_path, corpus, tokenizer, capsys):
    plain = train(tiny(tmp_path / "a", corpus, tokenizer, steps=4))
    sampled = train(tiny(tmp_path / "b", corpus, tokenizer, steps=4, sample_every=2,
                         sample_length=8, sample_prompt="the cat"))
    err = capsys.readouterr().err
    assert "sample at step 2" in err and "sample at step 4" in err and "the cat" in err
    assert losses(sampled) == losses(plain)


def test_only_the_process_that_prints_draws_samples(tmp_path, corpus, tokenizer, monkeypatch):
    from tinygen_trainer.training import loop
    from tinygen_trainer.training.device import Backend

    drawn = []
    monkeypatch.setattr(loop, "generate_sample", lambda *args: drawn.append(args) or "text")
    train(tiny(tmp_path / "a", corpus, tokenizer, steps=2, sample_every=1))
    assert len(drawn) == 2
    monkeypatch.setattr(Backend, "is_writer", property(lambda self: False))  # torchrun rank 1
    train(tiny(tmp_path / "b", corpus, tokenizer, steps=2, sample_every=1))
    assert len(drawn) == 2


# -- blends, weights and phases ---------------------------------------------------

def test_blend_and_loss_weights(tmp_path, corpus, tokenizer):
    other = tmp_path / "other.txt"
    other.write_text("completely different words appear here, again. " * 40, encoding="utf-8")
    one = train(tiny(tmp_path / "a", corpus, tokenizer, steps=1))
    half = train(tiny(tmp_path / "b", corpus, tokenizer, steps=1,
                      data=(DataSource(corpus, loss_weight=0.5),)))
    assert losses(half)[0] == pytest.approx(losses(one)[0] / 2, rel=1e-6)
    blended = train(tiny(tmp_path / "c", corpus, tokenizer, steps=3,
                         data=(DataSource(corpus, weight=3), DataSource(other, weight=1))))
    assert len(losses(blended)) == 3


def test_the_default_warmup_is_a_tenth_of_a_short_phase(capsys):
    """A fixed 100 steps of warmup left a 60-step run at its peak to the end, never decaying;
    one asked for is kept, with a warning."""
    from tinygen_trainer.training.setup import phase_schedule

    config = TrainConfig(output_dir="o", data=("c.txt",), preset="cpu-tiny", tokenizer="t.json",
                         steps=60, learning_rate=1e-3)
    schedule = phase_schedule(config, config.resolved_phases()[0])
    assert schedule.warmup == 6
    assert schedule(5) == pytest.approx(1e-3) and schedule(59) < 2e-4  # warmed up, then decayed
    long = dataclasses.replace(config, steps=5000)
    assert phase_schedule(long, long.resolved_phases()[0]).warmup == 100
    assert capsys.readouterr().err == ""
    explicit = dataclasses.replace(config, warmup_steps=100)
    assert phase_schedule(explicit, explicit.resolved_phases()[0]).warmup == 100  # as asked
    assert capsys.readouterr().err == (
        "tinygen-train: warning: --warmup-steps 100 is more than the run's 60 steps: the learning "
        "rate never reaches its peak 0.001\n")


def test_cross_training_phases(tmp_path, corpus, tokenizer):
    other = tmp_path / "other.txt"
    other.write_text("the ship sailed across the sea at night. " * 40, encoding="utf-8")
    config = tiny(tmp_path, corpus, tokenizer, steps=None, warmup_steps=0, lr_schedule="constant",
                  data=(), phases=(Phase((corpus,), steps=3, learning_rate=1e-3),
                                   Phase((other,), steps=2, learning_rate=1e-4)))
    metrics = read_metrics(train(config))
    assert [m["phase"] for m in metrics] == [0, 0, 0, 1, 1]
    assert [m["lr"] for m in metrics] == [1e-3] * 3 + [1e-4] * 2


def test_phases_from_the_command_line(tmp_path, corpus, tokenizer, capsys):
    spec = tmp_path / "phases.json"
    shutil.copy(corpus, tmp_path / "a.txt")
    spec.write_text(json.dumps([{"data": ["a.txt"], "steps": 2, "learning_rate": 1e-3},
                                {"data": [{"path": "a.txt", "loss_weight": 0.5}], "steps": 1}]))
    rc = main(["train", "--phases", str(spec), "--preset", "cpu-tiny",
               "--tokenizer", str(tokenizer), "-o", str(tmp_path / "out"), "--block-size", "32",
               "--batch-size", "2", "--log-every", "1", "--checkpoint-every", "0", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert [m["phase"] for m in read_metrics(tmp_path / "out")] == [0, 0, 1]


# -- bad input: one line, before training --------------------------------------------

def test_bad_input_errors(tmp_path, corpus, tokenizer, tiny_gpt2_dir):
    def fails(match, **options):
        with pytest.raises(TinygenError, match=match):
            Trainer.from_config(tiny(tmp_path, corpus, tokenizer, **options))

    empty = tmp_path / "empty.txt"
    empty.write_text(" \n", encoding="utf-8")
    fails("corpus is empty", data=(empty,))
    fails(r"seed must be below 2\*\*32 \(4294967296\), got 4294967296", seed=2**32)
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"the cat sat on the mat. " * 10 + b"caf\xe9")
    fails(r"latin.txt: not UTF-8 at byte 243 .*--errors replace", data=(latin,))
    Trainer.from_config(tiny(tmp_path, corpus, tokenizer, data=(latin,), errors="replace"))
    short = tmp_path / "short.txt"
    short.write_text("the cat.", encoding="utf-8")
    fails("fewer than block_size 32", data=(short,))
    fails(r"block_size 256 is larger than the model's context window \(128\)",
          preset=None, model=tiny_gpt2_dir, tokenizer=None, block_size=256)
    big_tokenizer = train_tokenizer([corpus.read_text()],
                                    TokenizerConfig(vocab_size=400, progress=False))
    big = save_tokenizer(big_tokenizer, tmp_path / "big" / "tokenizer.json")
    fails(r"tokenizer has \d+ ids but .* has only 320 embeddings",
          preset=None, model=tiny_gpt2_dir, tokenizer=big)
    fails("a preset needs --tokenizer", tokenizer=None)
    fails("tokenizer not found", tokenizer=tmp_path / "missing.json")
    fails("model folder not found", preset=None, model=tmp_path / "nope", tokenizer=None)
    fails("exactly one of --model DIR .* or --preset", model=tiny_gpt2_dir)
    fails("unknown preset 'gpt5'", preset="gpt5")
    fails("batch_size must be an integer >= 1", batch_size=0)
    fails("no training data", data=())
    fails("fp16 needs a GPU", precision="fp16", device="cpu")


def test_bad_paths_are_one_line_errors_before_any_work(tmp_path, corpus, tokenizer, monkeypatch):
    import tinygen_trainer.training.loop as loop

    def no_work(config):
        raise AssertionError("the tokenizer was loaded before the paths were checked")

    monkeypatch.setattr(loop, "build_encoder", no_work)
    for options, message in [
        ({"output_dir": corpus / "run"},
         f"--output {corpus / 'run'}: {corpus} is a file, not a folder; choose another --output"),
        ({"tensorboard_dir": corpus},
         f"--tensorboard {corpus} is a file, not a folder; choose another --tensorboard"),
    ]:
        with pytest.raises(TinygenError) as info:
            Trainer.from_config(tiny(tmp_path, corpus, tokenizer, **options))
        assert str(info.value) == message


def test_device_backends():
    assert select_backend("cpu").precision == "fp32"
    assert select_backend("cpu", "bf16").precision == "bf16"
    try:
        import torch_xla  # noqa: F401
    except ImportError:
        with pytest.raises(TinygenError, match="--device xla needs torch_xla"):
            select_backend("xla")
    if not torch.cuda.is_available():
        with pytest.raises(TinygenError, match="no CUDA GPU"):
            select_backend("cuda")


def test_tensorboard_writes_the_scalars(tmp_path, corpus, tokenizer):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(tiny(tmp_path, corpus, tokenizer, steps=4, log_every=2, tensorboard_dir=tmp_path / "tb"))
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert any("loss" in t for t in tags)
    loss_tag = next(t for t in tags if "loss" in t)
    assert [e.step for e in events.Scalars(loss_tag)] == [2, 4]


def test_tensorboard_is_an_optional_extra(tmp_path, corpus, tokenizer, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def without_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_tensorboard)
    with pytest.raises(TinygenError, match=r"pip install 'tinygen-trainer\[tensorboard\]'"):
        Trainer.from_config(tiny(tmp_path, corpus, tokenizer, tensorboard_dir=tmp_path / "tb"))


# -- the command -------------------------------------------------------------------

def test_train_command(tmp_path, corpus, tokenizer, capsys):
    cache = tmp_path / "corpus.tokens"
    assert main(["encode", str(corpus), "--tokenizer", str(tokenizer), "-o", str(cache),
                 "--quiet"]) == 0
    out = tmp_path / "out"
    args = ["train", str(cache), "--preset", "cpu-tiny", "--tokenizer", str(tokenizer),
            "-o", str(out), "--steps", "3", "--block-size", "32", "--batch-size", "2",
            "--checkpoint-every", "2", "--quiet"]
    assert main(args) == 0
    assert "tinygen-train export" in capsys.readouterr().err
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert main(args) == 2  # checkpoints exist and no --resume
    err = capsys.readouterr().err
    assert err.startswith("tinygen-train: error: ") and err.count("\n") == 1 and "--resume" in err
    assert main(args + ["--resume"]) == 0
    capsys.readouterr()

    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok \xff")
    assert main(["train", str(bad), "--preset", "cpu-tiny", "--tokenizer", str(tokenizer),
                 "-o", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "bad.txt: not UTF-8 at byte 3" in err and err.count("\n") == 1
    assert main(["train", str(corpus), str(corpus), "--weights", "1", "--preset", "cpu-tiny",
                 "--tokenizer", str(tokenizer), "-o", str(tmp_path / "o3")]) == 2
    assert "--weights needs one value per corpus (2), got 1" in capsys.readouterr().err


def test_a_finished_trainer_is_freed_before_train_returns(monkeypatch, tmp_path):
    """DistributedDataParallel sits in a reference cycle: left to the interpreter's exit, the
    gloo process group it holds can abort the process (training/loop.py, fit_and_release)."""
    import gc
    import weakref

    from tinygen_trainer.distill import trainer as distill_trainer
    from tinygen_trainer.training import loop

    class Cyclic:
        def __init__(self):
            self.me = self  # a cycle, as DDP's wrapper has

        def fit(self):
            return tmp_path

    alive = []

    def from_config(config):
        trainer = Cyclic()
        alive.append(weakref.ref(trainer))
        return trainer

    gc.disable()
    try:
        for cls, entry in ((loop.Trainer, loop.train),
                           (distill_trainer.DistillTrainer, distill_trainer.distill)):
            monkeypatch.setattr(cls, "from_config", staticmethod(from_config))
            assert entry(object()) == tmp_path
            assert alive[-1]() is None  # collected before the call returned, gc disabled or not
    finally:
        gc.enable()


def test_an_output_inside_a_corpus_folder_is_refused(tmp_path, corpus, tokenizer, capsys):
    """Checkpoints written into the corpus folder joined the corpus, so --resume refused the
    run, advising to remove a checkpoint file."""
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(corpus, folder)
    out = folder / "run"
    phases = tmp_path / "phases.json"
    phases.write_text(json.dumps([{"data": [str(folder)], "steps": 2}]), encoding="utf-8")
    common = ["--preset", "cpu-tiny", "--tokenizer", str(tokenizer), "-o", str(out),
              "--block-size", "32", "--batch-size", "2", "--quiet"]
    for argv in (["train", str(folder), "--steps", "2", *common],
                 ["train", "--phases", str(phases), *common]):
        assert main(argv) == 2
        assert capsys.readouterr().err == (f"tinygen-train: error: {out} is inside the corpus folder "
                                           f"{folder}, where later runs would read it as text; "
                                           f"write it outside that folder\n")
    assert not out.exists()


def test_a_tensorboard_folder_inside_a_corpus_folder_is_refused(tmp_path, corpus, tokenizer,
                                                                capsys):
    """TensorBoard's event files written into the corpus folder joined the corpus, so --resume
    refused the run ('... was added to the corpus since it was written')."""
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(corpus, folder)
    logs = folder / "tb"
    argv = ["train", str(folder), "--steps", "2", "--preset", "cpu-tiny", "--tokenizer",
            str(tokenizer), "-o", str(tmp_path / "run"), "--tensorboard", str(logs),
            "--block-size", "32", "--batch-size", "2", "--quiet"]
    assert main(argv) == 2
    assert capsys.readouterr().err == (f"tinygen-train: error: {logs} is inside the corpus folder "
                                       f"{folder}, where later runs would read it as text; "
                                       f"write it outside that folder\n")
    assert not logs.exists() and not (tmp_path / "run").exists()
