"""Progress off a terminal: the last line once, and a resumed teacher cache's true rate."""

from __future__ import annotations

import io

import numpy as np
import pytest

from tinygen_trainer import bars
from tinygen_trainer.cli import main
from tinygen_trainer.distill import build_teacher_cache, teacher
from tinygen_trainer.distill.teacher import load_corpus, teacher_encoder
from tinygen_trainer.training.progress import Reporter

TEXT = "Once upon a time there was a little model that wanted to write stories. " * 200


@pytest.fixture
def clock(monkeypatch):
    """bars' clock, moved only by the test: the 30-s line falls where the test puts it."""
    now = [100.0]
    monkeypatch.setattr(bars.time, "monotonic", lambda: now[0])
    return now


def progress_lines(err: str, desc: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(f"{desc}: ")]


def test_a_line_due_on_the_last_step_is_written_once(tmp_path, clock, capsys):
    # Training (and distill, the same loop) advances the bar, then logs the step's loss:
    # a 30-s line due on the last step wrote 100% there, then again at close with the loss.
    reporter = Reporter(tmp_path, total_steps=3)
    reporter.start(0)
    for step in (1, 2, 3):
        clock[0] += 10.0  # the third step is 30 s in
        reporter.advance()
        reporter.log(step, {"loss": 4.0 - step, "lr": 1e-3, "tokens_per_s": 1000.0})
    reporter.close()
    lines = progress_lines(capsys.readouterr().err, "training")
    assert len(lines) == 1, lines
    assert lines[0].startswith("training: 100% 3/3 [00:30<00:00") and "loss=1.0000" in lines[0]


def test_lines_before_the_last_step_still_come(clock):
    out = io.StringIO()
    with bars.progress_bar(4, "training", "step", file=out) as bar:
        for _ in range(4):
            clock[0] += 15.0  # a line due at step 2 and at step 4, the last
            bar.update()
    assert [line[:22] for line in out.getvalue().splitlines()] == [
        "training:  50% 2/4 [00", "training: 100% 4/4 [01"]


def fake_score(tokens):
    ids = np.repeat(tokens[..., None], 4, axis=-1)
    return ids, ids.astype(np.float32)


def test_a_resumed_cache_reports_the_blocks_done_first(tiny_gpt2_dir, tmp_path):
    # progress(done, total): first the blocks already whole, then after each batch. Before,
    # only after each batch, as the batch's end: a resumed bar counted the old blocks as new,
    # and a redone middle shard left it short of the total.
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT[:3000], encoding="utf-8")
    encoder = teacher_encoder(tiny_gpt2_dir, [corpus], tmp_path / "enc")
    dataset = load_corpus([corpus], encoder, progress=False)
    calls = []

    def build():
        calls.clear()
        return build_teacher_cache(tmp_path / "cache", dataset, encoder, "teacher", fake_score,
                                   block_size=16, top_k=4, seed=1, num_blocks=6,
                                   blocks_per_shard=2, batch_size=2,
                                   progress=lambda done, total: calls.append((done, total)))

    build()
    assert calls == [(0, 6), (2, 6), (4, 6), (6, 6)]
    (tmp_path / "cache" / "shard-00001.msgpack").unlink()  # the middle one
    assert build().complete
    assert calls == [(4, 6), (6, 6)]


def test_a_resumed_teacher_cache_line_counts_only_this_runs_blocks(tiny_gpt2_dir, tmp_path,
                                                                   clock, monkeypatch, capsys):
    # A README walkthrough resumed a cache of 70 blocks with 6 left: "70/70 ... 66.93block/s".
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    args = ["teacher-cache", str(corpus), "--teacher", str(tiny_gpt2_dir), "-o",
            str(tmp_path / "cache"), "--block-size", "16", "--top-k", "4",
            "--teacher-blocks", "70"]
    assert main(args + ["--quiet"]) == 0
    (tmp_path / "cache" / "shard-00001.msgpack").unlink()  # blocks 64 to 69

    scorer = teacher.torch_scorer

    def one_second_a_batch(model, top_k):
        score = scorer(model, top_k)

        def timed(tokens):
            clock[0] += 1.0
            return score(tokens)
        return timed

    monkeypatch.setattr(teacher, "torch_scorer", one_second_a_batch)
    capsys.readouterr()
    assert main(args) == 0
    lines = progress_lines(capsys.readouterr().err, "teacher")
    # 6 blocks in two batches (4 and 2), 2 s: 3 blocks a second
    assert len(lines) == 1 and lines[0].startswith("teacher: 100% 70/70 [00:02<00:00"), lines
    assert "3.00block/s" in lines[0], lines
