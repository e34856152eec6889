"""Workflows as a user runs them: logs off a terminal, TensorBoard across a resume, Ctrl-C."""

from __future__ import annotations

import gc
import io

import pytest

from tinygen_trainer import bars
from tinygen_trainer.cli import main
from tinygen_trainer.training import TrainConfig, read_metrics, train

from training_corpus import Interrupted, corpus, dies_after, one_thread, tokenizer  # noqa: F401


def tiny(tmp_path, corpus, tokenizer_path, **options) -> TrainConfig:
    base = {"output_dir": tmp_path / "out", "data": (corpus,), "preset": "cpu-tiny",
            "tokenizer": tokenizer_path, "steps": 8, "block_size": 32, "batch_size": 4,
            "warmup_steps": 2, "log_every": 1, "checkpoint_every": 4, "progress": False}
    return TrainConfig(**{**base, **options})


# -- TensorBoard across a resume ------------------------------------------------------

def tensorboard_scalars(folder) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars("train/loss")]


@pytest.mark.parametrize("checkpoint_every", [4, 0])
def test_tensorboard_after_a_resume_shows_each_step_once(tmp_path, corpus, tokenizer,
                                                         checkpoint_every):
    # The interrupted run logged steps 5 and 6 after its last checkpoint (4), or 1 to 6 with
    # none yet; the resumed run logs them again. Before, TensorBoard kept both: the curve
    # went 1..6, then back to 5 (or 1).
    config = tiny(tmp_path, corpus, tokenizer, tensorboard_dir=tmp_path / "tb",
                  checkpoint_every=checkpoint_every)
    with pytest.raises(Interrupted):
        dies_after(6).from_config(config).fit()
    train(TrainConfig(**{**config.__dict__, "resume": True}))
    scalars = tensorboard_scalars(tmp_path / "tb")
    assert [step for step, _ in scalars] == list(range(1, 9))
    # ... and they are the resumed run's values, as metrics.jsonl has them
    logged = {m["step"]: m["loss"] for m in read_metrics(config.output_dir)}
    assert [value for _, value in scalars] == pytest.approx([logged[s] for s in range(1, 9)])


# -- progress off a terminal -----------------------------------------------------------

def test_training_log_off_a_terminal_has_no_bar_redraws(tmp_path, corpus, tokenizer, capsys):
    # stderr to a file or a CI log: tqdm wrote every redraw there, joined by carriage returns.
    assert main(["train", str(corpus), "--preset", "cpu-tiny", "--tokenizer", str(tokenizer),
                 "-o", str(tmp_path / "run"), "--steps", "6", "--block-size", "32",
                 "--batch-size", "4", "--log-every", "2", "--checkpoint-every", "0"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert lines[0].startswith("training preset cpu-tiny")  # what it trains, as on a terminal
    # a short run: one line at its end, with the last logged loss
    progress = [line for line in lines if line.startswith("training: ")]
    assert len(progress) == 1 and progress[0].startswith("training: 100% 6/6 [")
    assert f"loss={read_metrics(tmp_path / 'run')[-1]['loss']:.4f}" in progress[0]
    assert lines[-1].startswith("saved the model to ")


def test_encode_off_a_terminal_has_no_bar(tmp_path, corpus, tokenizer, capsys):
    assert main(["encode", str(corpus), "--tokenizer", str(tokenizer),
                 "-o", str(tmp_path / "train.tokens")]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and err.startswith("wrote ") and err.count("\n") == 1


def test_progress_lines_come_at_most_once_per_interval(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(bars.time, "monotonic", lambda: clock[0])
    out = io.StringIO()
    bar = bars.progress_bar(100, "training", "step", initial=10, file=out)
    assert isinstance(bar, bars.LineProgress)  # a StringIO is no terminal
    for _ in range(40):  # 40 steps, one a second: a line at 30 s
        clock[0] += 1
        bar.update()
        bar.set_postfix(loss="1.2345", refresh=False)
    bar.close()  # and the last one
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("training:  40% 40/100 [00:30<") and "loss=1.2345" in lines[0]
    assert lines[1].startswith("training:  50% 50/100 [00:40<")
    bar.close()
    assert len(out.getvalue().splitlines()) == 2  # closing twice writes nothing more


def test_a_disabled_or_short_bar_writes_nothing(monkeypatch):
    out = io.StringIO()
    with bars.progress_bar(10, "encoding", "char", leave=False, file=out) as bar:
        bar.update(10)  # a bar that clears itself leaves no line either
    quiet = bars.progress_bar(10, "training", "step", enabled=False, file=out)
    quiet.update(10)
    quiet.close()
    assert out.getvalue() == ""


# -- Ctrl-C ------------------------------------------------------------------------------

def test_ctrl_c_in_teacher_cache_is_its_last_line(tiny_gpt2_dir, tmp_path, monkeypatch, capsys):
    # The teacher's bar was closed only when the cache was done: after Ctrl-C the garbage
    # collector closed it after 'tinygen-train: interrupted', redrawing it below the message.
    from tinygen_trainer.distill import teacher

    def interrupted(*args, progress, **kwargs):
        progress(0, 128)  # the blocks done before: none
        progress(64, 128)
        raise KeyboardInterrupt

    monkeypatch.setattr(teacher, "build_teacher_cache", interrupted)
    text = tmp_path / "corpus.txt"
    text.write_text("Once upon a time there was a little model. " * 40, encoding="utf-8")
    code = main(["teacher-cache", str(text), "--teacher", str(tiny_gpt2_dir),
                 "-o", str(tmp_path / "cache"), "--block-size", "16"])
    gc.collect()  # where the bar, left open, wrote itself again
    err = capsys.readouterr().err
    assert code == 130
    assert err.endswith("tinygen-train: interrupted\n")
    assert err.splitlines()[-2].startswith("teacher:  50% 64/128")  # where it stopped, above


def test_ctrl_c_while_writing_teacher_texts_is_its_last_line(tmp_path, monkeypatch, capsys):
    import tinygen

    from tinygen_trainer.distill.sequences import TextsRequest, teacher_texts

    class Generator:
        calls = 0

        def __init__(self, folder):
            pass

        def generate(self, prompts, n, **options):
            Generator.calls += 1
            if Generator.calls == 2:
                raise KeyboardInterrupt
            return ["a text"] * (len(prompts) * n)  # n texts per prompt, as TextGenerator's

    monkeypatch.setattr(tinygen, "TextGenerator", Generator)
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "tinygen.json").write_text("{}")
    request = TextsRequest(teacher=teacher, output=tmp_path / "texts.jsonl", count=8, batch_size=4)
    with pytest.raises(KeyboardInterrupt) as info:  # keeps the frames, and a bar left open
        teacher_texts(request)
    err = capsys.readouterr().err
    assert err.startswith("teacher texts:  50% 4/8 [") and err.count("\n") == 1  # where it stopped
    del info
    gc.collect()
    assert capsys.readouterr().err == ""  # nothing more once the command has said 'interrupted'
    assert len(request.output.read_text().splitlines()) == 4  # the batch written is kept


# -- what --help says ----------------------------------------------------------------------

def test_phases_help_names_every_key_a_corpus_entry_takes(capsys):
    # load_phases takes loss_weight too (and its error message says so); the help left it out.
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert 'a corpus is a path or {"path", "weight", "loss_weight", "field"}' in text
