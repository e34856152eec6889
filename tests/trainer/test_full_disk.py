"""A write that fails (a full disk, no permission) while saving a checkpoint, the trained model
or an export is one line saying what could not be written, not a traceback; nothing half
written is left under a real name."""

from __future__ import annotations

import errno

import pytest
from safetensors import SafetensorError

from tinygen_trainer.cli import main

from training_corpus import corpus, one_thread, tokenizer  # noqa: F401 (fixtures)

# What each writer raises on a full disk: torch.save's zip writer, safetensors, plain files.
FULL = {
    "torch.save": RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos "
                               "6720 vs 6612"),
    "safetensors": SafetensorError("Error while serializing: I/O error: No space left on device "
                                   "(os error 28)"),
    "open": OSError(errno.ENOSPC, "No space left on device"),
}


def train_args(corpus, tokenizer, out, *more):
    return ["train", str(corpus), "--preset", "cpu-tiny", "--tokenizer", str(tokenizer), "-o",
            str(out), "--steps", "2", "--block-size", "16", "--batch-size", "2", "--quiet", *more]


@pytest.mark.parametrize("writer", list(FULL))
def test_a_checkpoint_on_a_full_disk_is_one_line(writer, tmp_path, corpus, tokenizer,
                                                 monkeypatch, capsys):
    from tinygen_trainer.training import checkpoint

    def full(*args, **kwargs):
        raise FULL[writer]

    if writer == "torch.save":
        monkeypatch.setattr(checkpoint.torch, "save", full)
    else:
        monkeypatch.setattr(checkpoint.Backend, "save_model", full)
    out = tmp_path / "run"
    assert main(train_args(corpus, tokenizer, out, "--checkpoint-every", "1")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        f"tinygen-train: error: cannot write the checkpoint of step 1 in {out / 'checkpoints'}: "), err
    assert "--resume" in err, err
    assert list((out / "checkpoints").iterdir()) == []  # no temp folder left


def test_the_trained_model_on_a_full_disk_is_one_line(tmp_path, corpus, tokenizer, monkeypatch,
                                                      capsys):
    from tinygen_trainer.training import loop

    def full(*args, **kwargs):
        raise FULL["open"]

    monkeypatch.setattr(loop, "check_finite_weights", full)  # once the weights are written
    out = tmp_path / "run"
    assert main(train_args(corpus, tokenizer, out, "--checkpoint-every", "2")) == 2
    err = capsys.readouterr().err
    assert err == (f"tinygen-train: error: cannot write the trained model to {out}: No space left "
                   f"on device; free some space, then run the same command with --resume\n"), err
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]
    assert (out / "checkpoints" / "step-00000002").is_dir()  # the run is not lost


def test_an_export_on_a_full_disk_is_one_line(tiny_gpt2_dir, tmp_path, monkeypatch, capsys):
    from tinygen_trainer.export import pipeline

    def full(*args, **kwargs):
        raise FULL["open"]

    monkeypatch.setattr(pipeline, "write_tokenizer", full)
    out = tmp_path / "model"
    assert main(["export", str(tiny_gpt2_dir), str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (f"tinygen-train: error: cannot write {out}: No space left on device; free "
                   f"some space and export again\n"), err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("error,one_line", [
    (OSError(errno.ENOSPC, "No space left on device"), True),
    (OSError(errno.EROFS, "Read-only file system"), True),
    (OSError(errno.ENOENT, "No such file or directory"), False),  # not the machine's: a bug
])
def test_a_failed_write_anywhere_else_is_one_line(error, one_line, tmp_path, corpus, tokenizer,
                                                  monkeypatch, capsys):
    """metrics.jsonl (or TensorBoard, or any file) on a full disk: one line naming the file;
    an OSError that is no failed write keeps its traceback."""
    from tinygen_trainer.training import progress

    def full(self, step, metrics):
        error.filename = str(self.metrics_path)
        raise error

    monkeypatch.setattr(progress.Reporter, "log", full)
    argv = train_args(corpus, tokenizer, tmp_path / "run", "--log-every", "1")
    out = tmp_path / "run"
    if not one_line:
        with pytest.raises(OSError):
            main(argv)
        return
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == (f"tinygen-train: error: {error.strerror} ({out / 'metrics.jsonl'}); fix that and "
                   f"run the same command again (train and distill with --resume)\n")
