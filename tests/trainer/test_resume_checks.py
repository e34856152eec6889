"""Resume: damaged checkpoints are skipped for the newest whole one, too few steps are refused,
and a folder corpus is fingerprinted by the files its reader reads."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil

import pytest

from tinygen.errors import TinygenError
from tinygen_trainer.training import TrainConfig, read_metrics, train

from training_corpus import corpus, one_thread, tokenizer  # noqa: F401 (fixtures)


def tiny(tmp_path, corpus, tokenizer_path, **options) -> TrainConfig:
    base = {"output_dir": tmp_path / "out", "data": (corpus,), "preset": "cpu-tiny",
            "tokenizer": tokenizer_path, "steps": 4, "block_size": 32, "batch_size": 4,
            "warmup_steps": 0, "log_every": 1, "checkpoint_every": 2, "progress": False}
    return TrainConfig(**{**base, **options})


@pytest.fixture(scope="module")
def finished(tmp_path_factory, corpus, tokenizer):
    """A 4-step run with checkpoints at steps 2 and 4; tests copy it (copy_run)."""
    config = tiny(tmp_path_factory.mktemp("finished"), corpus, tokenizer)
    train(config)
    return config


def copy_run(finished: TrainConfig, tmp_path) -> TrainConfig:
    """The finished run in a folder of its own, as it was when killed after its last checkpoint."""
    out = tmp_path / "run"
    shutil.copytree(finished.output_dir / "checkpoints", out / "checkpoints")
    shutil.copy(finished.output_dir / "metrics.jsonl", out)
    return dataclasses.replace(finished, output_dir=out, resume=True, steps=5)


def edit_state(path, drop=(), **changes):
    state = json.loads(path.read_text())
    state.update(changes)
    path.write_text(json.dumps({k: v for k, v in state.items() if k not in drop}))


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# -- 1. a damaged newest checkpoint ----------------------------------------------------

def truncate(name):
    def cut(checkpoint):
        (checkpoint / name).write_bytes((checkpoint / name).read_bytes()[:100])
    return cut


@pytest.mark.parametrize("damage, why", [
    (truncate("model.safetensors"), "its model.safetensors has 100 bytes"),
    (truncate("optimizer.pt"), "its optimizer.pt has 100 bytes"),
    (lambda c: (c / "config.json").write_text("{bad"), "its config.json has 4 bytes"),
    (lambda c: edit_state(c / "state.json", data=None), "its state.json has a bad 'data'"),
    (lambda c: flip_a_byte(c / "model.safetensors"),
     r"its model.safetensors differs from what was written \(sha256\)"),
], ids=["truncated-weights", "truncated-optimizer", "bad-config", "bad-state", "flipped-byte"])
def test_resume_skips_a_damaged_checkpoint(finished, tmp_path, capsys, damage, why):
    config = copy_run(finished, tmp_path)
    damage(config.output_dir / "checkpoints" / "step-00000004")
    capsys.readouterr()
    train(config)
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "skipped checkpoint" in line]
    assert len(notes) == 1
    assert notes[0].startswith("tinygen-train: note: skipped checkpoint step-00000004: ")
    assert notes[0].endswith("; resuming from step-00000002")
    assert re.search(why, notes[0])
    assert [m["step"] for m in read_metrics(config.output_dir)] == [1, 2, 3, 4, 5]


def test_resume_from_a_checkpoint_without_digests(finished, tmp_path, capsys):
    """Checkpoints written before state.json recorded its files' digests still resume; one
    that fails to load is a one-line error."""
    config = copy_run(finished, tmp_path)
    checkpoint = config.output_dir / "checkpoints" / "step-00000004"
    edit_state(checkpoint / "state.json", drop=["files"])
    optimizer = (checkpoint / "optimizer.pt").read_bytes()
    (checkpoint / "optimizer.pt").write_bytes(optimizer[:100])
    with pytest.raises(TinygenError, match=r"cannot load checkpoint .*step-00000004 \(.*\); move "
                                           r"it out of the checkpoints folder to resume from the "
                                           r"one before") as info:
        train(config)
    assert "\n" not in str(info.value)
    (checkpoint / "optimizer.pt").write_bytes(optimizer)
    capsys.readouterr()
    train(config)
    assert "skipped checkpoint" not in capsys.readouterr().err
    assert [m["step"] for m in read_metrics(config.output_dir)] == [1, 2, 3, 4, 5]


def test_resume_with_no_whole_checkpoint_is_one_line_error(finished, tmp_path):
    config = copy_run(finished, tmp_path)
    for checkpoint in (config.output_dir / "checkpoints").iterdir():
        flip_a_byte(checkpoint / "optimizer.pt")
    with pytest.raises(TinygenError, match=r"no checkpoint in .*checkpoints can be loaded "
                                           r"\(step-00000004: its optimizer.pt differs .*; and 1 "
                                           r"more\); delete that folder") as info:
        train(config)
    assert "\n" not in str(info.value)


# -- 2. fewer steps than the checkpoint has ----------------------------------------------

def test_resume_refuses_fewer_steps_than_the_checkpoint(finished, tmp_path):
    config = copy_run(finished, tmp_path)
    with pytest.raises(TinygenError) as info:
        train(dataclasses.replace(config, steps=3))
    assert str(info.value) == ("the checkpoint step-00000004 is at step 4, beyond --steps 3: "
                               "ask for at least 4 (more to train further)")
    assert not (config.output_dir / "model.safetensors").exists()


def test_resume_at_the_last_step_saves_the_model(finished, tmp_path, capsys):
    """A run killed while saving its model: resuming with its steps saves the checkpoint's."""
    config = dataclasses.replace(copy_run(finished, tmp_path), steps=4)
    capsys.readouterr()
    train(config)
    err = capsys.readouterr().err
    assert "note: step-00000004 is the run's last step: nothing to train" in err
    assert "stretches" not in err
    written = (config.output_dir / "model.safetensors").read_bytes()
    assert written == (finished.output_dir / "model.safetensors").read_bytes()


# -- 3. a folder corpus: the files its reader reads --------------------------------------

def test_resume_sees_a_file_added_to_a_folder_and_ignores_hidden_ones(tmp_path, corpus, tokenizer):
    folder = tmp_path / "books"
    folder.mkdir()
    shutil.copy(corpus, folder / "a.txt")
    (folder / ".notes.txt").write_text("not read: hidden", encoding="utf-8")
    config = tiny(tmp_path, folder, tokenizer, data=(folder,), steps=2)
    train(config)
    longer = dataclasses.replace(config, resume=True, steps=3)
    (folder / ".notes.txt").write_text("edited, still not read", encoding="utf-8")
    (folder / "b.txt").write_text(corpus.read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(TinygenError, match=r"b.txt was added to the corpus since it was written "
                                           r"\(other rows would follow\); remove it") as info:
        train(longer)
    assert "\n" not in str(info.value)
    (folder / "b.txt").unlink()
    train(longer)  # the hidden file changed, but the reader never reads it
    assert [m["step"] for m in read_metrics(config.output_dir)] == [1, 2, 3]


# -- 6. two runs in one --output at once ----------------------------------------------

def test_a_second_run_into_a_folder_in_use_is_refused(tmp_path, corpus, tokenizer):
    """Two runs started on one --output (the same command launched twice, or with another
    --lr) both trained into it: checkpoints of both, metrics.jsonl interleaved, the model of
    whichever finished last, and no error. The running one holds the folder."""
    from tinygen_trainer.training.loop import Trainer

    first = Trainer.from_config(tiny(tmp_path, corpus, tokenizer))
    with pytest.raises(TinygenError, match=re.escape(
            f"{tmp_path / 'out'} is in use by another training run; wait for it to end, or "
            f"choose another --output")):
        Trainer.from_config(tiny(tmp_path, corpus, tokenizer, learning_rate=1e-3))
    first.fit()  # the first run is untouched, and lets go of the folder when done
    assert [r["step"] for r in read_metrics(tmp_path / "out")] == [1, 2, 3, 4]
    train(tiny(tmp_path, corpus, tokenizer, resume=True, steps=5))


def test_a_run_that_fails_to_start_leaves_no_folder(tmp_path, corpus, tokenizer):
    with pytest.raises(TinygenError, match="block_size"):
        train(tiny(tmp_path, corpus, tokenizer, block_size=4096))
    assert not (tmp_path / "out").exists()


def test_a_project_moved_whole_resumes_where_it_is_now(tmp_path, corpus, tokenizer):
    """Data, tokenizer and run copied to another folder (another machine): the checkpoint's
    absolute paths are read relative to the run, as they moved with it."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(corpus, project / "corpus.txt")
    shutil.copy(tokenizer, project / "tokenizer.json")
    config = tiny(project, project / "corpus.txt", project / "tokenizer.json",
                  output_dir=project / "run")
    train(config)
    moved = tmp_path / "elsewhere" / "project"
    shutil.copytree(project, moved)
    shutil.rmtree(project)  # the old paths are gone, as on another machine
    again = tiny(moved, moved / "corpus.txt", moved / "tokenizer.json", output_dir=moved / "run",
                 resume=True, steps=5)
    for name in ("model.safetensors", "train_config.json"):
        (moved / "run" / name).unlink()  # killed after the checkpoint of step 4
    train(again)
    assert [m["step"] for m in read_metrics(moved / "run")] == [1, 2, 3, 4, 5]
    # the data it trained on changed there: still refused
    (moved / "corpus.txt").write_text("other text " * 500, encoding="utf-8")
    with pytest.raises(TinygenError, match="corpus.txt changed since it was written"):
        train(dataclasses.replace(again, steps=6))
