"""Gradient accumulation over padded rows, torn metrics, resume checks, an atomic final model."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from tinygen.errors import TinygenError
from tinygen.replacements import EncodeRule, Replacements
from tinygen_trainer.training import TrainConfig, Trainer, read_metrics, train
from tinygen_trainer.training.loss import IGNORE_INDEX, causal_lm_loss
from tinygen_trainer.training.progress import Reporter

from training_corpus import corpus, one_thread, tokenizer  # noqa: F401 (fixtures)

# Records of very different lengths: padded micro-batches hold different numbers of targets.
LINES = ["the cat sat.", "the dog ran in the park and the bird sang in the tree over the hill.",
         "a bird.", "we read a book by the fire while the rain fell on the roof."]


def tiny(tmp_path, corpus, tokenizer_path, **options) -> TrainConfig:
    base = {"output_dir": tmp_path / "out", "data": (corpus,), "preset": "cpu-tiny",
            "tokenizer": tokenizer_path, "steps": 2, "block_size": 32, "batch_size": 4,
            "warmup_steps": 0, "lr_schedule": "constant", "learning_rate": 1e-3,
            "log_every": 1, "checkpoint_every": 0, "progress": False}
    return TrainConfig(**{**base, **options})


def run_recording_grads(config: TrainConfig) -> tuple[Trainer, list[dict[str, torch.Tensor]]]:
    """Train `config`, keeping each step's gradients as the optimizer sees them."""
    trainer = Trainer.from_config(config)
    grads: list[dict[str, torch.Tensor]] = []
    step = trainer.backend.optimizer_step

    def recording(optimizer, params, grad_clip):
        grads.append({name: p.grad.detach().clone()
                      for name, p in trainer.model.named_parameters() if p.grad is not None})
        step(optimizer, params, grad_clip)

    trainer.backend.optimizer_step = recording
    trainer.fit()
    return trainer, grads


# -- 1. gradient accumulation ------------------------------------------------------

def test_target_count_and_loss_agree():
    from tinygen_trainer.training.loss import target_count

    labels = torch.tensor([[5, 6, IGNORE_INDEX, IGNORE_INDEX], [1, 2, 3, 4]])
    assert int(target_count(labels)) == 1 + 3  # targets are labels[:, 1:] that are not ignored
    logits = torch.randn(2, 4, 8)
    per_token_sum = causal_lm_loss(logits, labels) * target_count(labels)
    both = causal_lm_loss(logits[:1], labels[:1]) * target_count(labels[:1]) + \
        causal_lm_loss(logits[1:], labels[1:]) * target_count(labels[1:])
    assert torch.allclose(per_token_sum, both)


def test_accumulation_matches_one_big_batch_with_padding(tmp_path, tokenizer):
    lines = tmp_path / "lines.txt"
    lines.write_text("\n".join(LINES), encoding="utf-8")
    common = dict(data=(lines,), line_by_line=True, grad_clip=0.0)
    big, big_grads = run_recording_grads(
        tiny(tmp_path / "a", lines, tokenizer, batch_size=2, grad_accum=1, **common))
    acc, acc_grads = run_recording_grads(
        tiny(tmp_path / "b", lines, tokenizer, batch_size=1, grad_accum=2, **common))

    # the same rows, split differently, give one step the same gradients ...
    assert len(big_grads) == len(acc_grads) == 2
    for a, b in zip(big_grads, acc_grads):
        for name in a:
            assert torch.allclose(a[name], b[name], rtol=1e-4, atol=1e-7), name
    # ... the same weights after it (AdamW moves a weight by about lr = 1e-3 a step whatever
    # the gradient's size, so float noise in near-zero gradients shows up to ~1e-5) ...
    for (name, p), q in zip(big.model.named_parameters(), acc.model.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-4), name
    # ... and the same logged loss: the mean over the step's target tokens
    big_losses = [m["loss"] for m in read_metrics(big.config.output_dir)]
    acc_losses = [m["loss"] for m in read_metrics(acc.config.output_dir)]
    assert acc_losses == pytest.approx(big_losses, rel=1e-5)


# -- 2. a torn last line in metrics.jsonl -----------------------------------------------

def test_truncate_drops_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    whole = [json.dumps({"step": s, "loss": 1.0}) for s in (1, 2, 3)]
    path.write_text("\n".join(whole) + '\n{"step": 4, "lo', encoding="utf-8")  # killed mid-log
    assert [m["step"] for m in read_metrics(tmp_path)] == [1, 2, 3]
    Reporter(tmp_path, 10, progress=False).truncate_after(2)
    assert path.read_text(encoding="utf-8") == "\n".join(whole[:2]) + "\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # no temp file left


def test_a_broken_line_before_the_last_is_one_line_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"ste\n{"step": 3}\n', encoding="utf-8")
    with pytest.raises(TinygenError, match=r"metrics.jsonl: line 2 is not JSON") as err:
        Reporter(tmp_path, 10, progress=False).truncate_after(2)
    assert "\n" not in str(err.value)
    Reporter(tmp_path, 10, progress=False).truncate_after(0)  # a fresh run drops it all
    assert path.read_text(encoding="utf-8") == ""


def test_resume_after_a_kill_while_logging(tmp_path, corpus, tokenizer):
    config = tiny(tmp_path, corpus, tokenizer, steps=3, checkpoint_every=2)
    train(config)
    metrics = config.output_dir / "metrics.jsonl"
    metrics.write_text(metrics.read_text(encoding="utf-8") + '{"step": 4, "loss": 2.',
                       encoding="utf-8")
    resumed = train(dataclasses.replace(config, resume=True, steps=4))
    assert [m["step"] for m in read_metrics(resumed)] == [1, 2, 3, 4]


# -- 3. resume checks what it records ------------------------------------------------

def test_resume_refuses_other_errors_handling(tmp_path, corpus, tokenizer):
    config = tiny(tmp_path, corpus, tokenizer, steps=2, checkpoint_every=2)
    train(config)
    with pytest.raises(TinygenError,
                       match="trained with errors='strict', this run has 'replace'") as err:
        train(dataclasses.replace(config, resume=True, steps=3, errors="replace"))
    assert "\n" not in str(err.value)


def test_resume_refuses_changed_replacement_rules(tmp_path, corpus, tokenizer):
    rules = tmp_path / "replacements.json"
    Replacements(encode=(EncodeRule("cat", "<|pet|>"),)).save(tmp_path)
    config = tiny(tmp_path, corpus, tokenizer, steps=2, checkpoint_every=2, replacements=rules)
    train(config)
    # the same file, the same added token, other rules: other tokens from the same text
    Replacements(encode=(EncodeRule("dog", "<|pet|>"),)).save(tmp_path)
    with pytest.raises(TinygenError, match="its replacement rules differ from this run's") as err:
        train(dataclasses.replace(config, resume=True, steps=3))
    assert "\n" not in str(err.value)
    # the original rules resume
    Replacements(encode=(EncodeRule("cat", "<|pet|>"),)).save(tmp_path)
    resumed = train(dataclasses.replace(config, resume=True, steps=3))
    assert [m["step"] for m in read_metrics(resumed)] == [1, 2, 3]


# -- 4. the final model is written atomically ----------------------------------------

def test_a_failed_final_save_leaves_no_partial_model(tmp_path, corpus, tokenizer):
    trainer = Trainer.from_config(tiny(tmp_path, corpus, tokenizer, steps=1))
    out = trainer.config.output_dir

    def dies_midway(model, folder):
        (folder / "model.safetensors").write_bytes(b"partial")  # half the weights, then a kill
        raise KeyboardInterrupt

    trainer.backend.save_model = dies_midway
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert not (out / "model.safetensors").exists()
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl"]  # no temp folder either


def test_final_save_writes_a_complete_folder(tmp_path, corpus, tokenizer):
    out = train(tiny(tmp_path, corpus, tokenizer, steps=1))
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "train_config.json"} <= names
    assert not [n for n in names if n.startswith(".")]


class Killed(BaseException):
    """A kill: not an Exception, so nothing on the way turns it into an error message."""


def kill_at_rename(monkeypatch, k: int) -> list[str]:
    """Let os.replace run k - 1 times, then die in the k-th; returns what it was moving."""
    import os

    calls: list[str] = []
    real = os.replace

    def replace(src, dst):
        calls.append(os.path.basename(dst))
        if len(calls) == k:
            raise Killed
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    return calls


def whole_model(out) -> None:
    from transformers import AutoModelForCausalLM

    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "train_config.json"} <= names
    assert not [n for n in names if n.startswith(".")]
    AutoModelForCausalLM.from_pretrained(out)


@pytest.mark.parametrize("checkpoints", [False, True], ids=["no-checkpoints", "checkpoints"])
def test_a_kill_at_any_rename_of_the_final_save_is_cleared_by_a_rerun(
        tmp_path, corpus, tokenizer, monkeypatch, capsys, checkpoints):
    """Killed at each rename of the final save in turn (the first writes the list of files),
    --output never holds train_config.json without the whole model, and the same command
    run again (with --resume where there are checkpoints) trains and saves the model."""
    options = dict(steps=1, checkpoint_every=1 if checkpoints else 0)
    renames = None
    k = 1
    while renames is None or k <= len(renames):
        config = tiny(tmp_path / f"kill-{k}", corpus, tokenizer, **options)
        trainer = Trainer.from_config(config)  # before the patch: setup renames metrics.jsonl
        with monkeypatch.context() as patch:
            calls = kill_at_rename(patch, k)
            try:
                trainer.fit()
                renames = calls  # killed nowhere: every rename the save makes
                break
            except Killed:
                pass
        out = config.output_dir
        assert not (out / "train_config.json").exists(), calls  # not a trained model yet
        capsys.readouterr()
        if checkpoints:  # the same command, without --resume: refused, saying what to do
            said = ("its run was killed while saving the model; pass --resume to finish it"
                    if (out / ".tmp-saving-model.json").exists() else "pass --resume to continue")
            with pytest.raises(TinygenError, match=said):
                train(config)
        train(dataclasses.replace(config, resume=checkpoints))
        whole_model(out)
        err = capsys.readouterr().err
        moved = calls[1:-1]  # the files in place when it died (the first call wrote the list)
        if moved:
            assert "tinygen-train: note: removed " in err and "the start of a final save that " \
                "did not finish (the run was killed while saving the model)" in err, err
            assert err.count("removed ") == 1
        else:
            assert "removed" not in err
        k += 1
    assert renames[0] == ".tmp-saving-model.json" and renames[-1] == "train_config.json"
    assert renames.index("model.safetensors") > renames.index("config.json")
    assert k == len(renames) + 1  # a kill at every one was tried


def test_a_save_killed_after_its_last_rename_is_a_whole_model(tmp_path, corpus, tokenizer):
    """Killed between the rename of train_config.json and the removal of the list: the model
    is whole, and a new run in that folder is refused as for any trained model."""
    config = tiny(tmp_path, corpus, tokenizer, steps=1)
    out = train(config)
    names = sorted(p.name for p in out.iterdir() if p.name != "metrics.jsonl")
    (out / ".tmp-saving-model.json").write_text(json.dumps({"files": names}))
    with pytest.raises(TinygenError, match="already holds a trained model"):
        train(config)
    whole_model_names = {p.name for p in out.iterdir()}
    assert set(names) <= whole_model_names


def test_a_model_without_weights_from_an_older_save_is_named(tmp_path, corpus, tokenizer):
    """Saves before train_config.json went last could leave it without the weights."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "train_config.json").write_text("{}")
    (out / "config.json").write_text("{}")
    with pytest.raises(TinygenError) as info:
        train(tiny(tmp_path, corpus, tokenizer, steps=1))
    assert str(info.value) == (f"{out} holds train_config.json but no weights: the model's save "
                               f"did not finish; delete {out} to train again")
