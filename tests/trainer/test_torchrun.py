"""torchrun data parallel on the CPU (gloo): two processes train what one process trains.

`--batch-size` is the global batch, so `torchrun --nproc_per_node 2 -m tinygen_trainer.cli
train ...` with the options of a one-process run gives the same weights and losses; process 0
alone writes; a resume (by two processes or by one) continues the same run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tinygen.errors import TinygenError
from tinygen_trainer.cli import main
from tinygen_trainer.data.dataset import Rows
from tinygen_trainer.training import read_metrics
from tinygen_trainer.training.distributed import check_batch, torchrun_env
from tinygen_trainer.training.feed import Feed

from training_corpus import corpus, one_thread, tokenizer  # noqa: F401 (fixtures)

needs_gloo = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with gloo is not available")
TIMEOUT = 180  # seconds per torchrun; a hang (a collective that never completes) fails


def args(corpus, tokenizer, out, *more: str) -> list[str]:
    """4 steps of cpu-tiny (no dropout), global batch 4, two micro-batches a step."""
    return ["train", str(corpus), "--preset", "cpu-tiny", "--tokenizer", str(tokenizer),
            "-o", str(out), "--device", "cpu", "--steps", "4", "--block-size", "32",
            "--batch-size", "4", "--grad-accum", "2", "--warmup-steps", "1", "--lr", "1e-3",
            "--log-every", "1", "--checkpoint-every", "2", *more]


def torchrun(train_args: list[str], processes: int = 2) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    # --standalone: a rendezvous on a free local port, so tests running side by side never clash.
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", str(processes), "-m", "tinygen_trainer.cli", *train_args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def assert_same_weights(a, b) -> None:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    # AdamW moves a weight by about lr a step whatever the gradient's size, so float noise
    # (rows summed in another order) in near-zero gradients shows up to ~1e-5 after 4 steps.
    for name in wa:
        assert torch.allclose(wa[name], wb[name], rtol=0, atol=2e-4), \
            (name, (wa[name] - wb[name]).abs().max())


def assert_same_metrics(out, reference) -> None:
    got, want = read_metrics(out), read_metrics(reference)
    assert [m["step"] for m in got] == [1, 2, 3, 4]  # written once, by process 0
    assert [m["loss"] for m in got] == pytest.approx([m["loss"] for m in want], rel=1e-4)


# -- without processes -----------------------------------------------------------------

def test_torchrun_environment(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert torchrun_env() is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert torchrun_env() is None  # one process: the plain backend
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(TinygenError, match="RANK"):
        torchrun_env()
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert torchrun_env() == (3, 4, 1)


def test_torchrun_variables_set_by_hand_without_an_address(monkeypatch, tmp_path, corpus,
                                                           tokenizer, capsys):
    """WORLD_SIZE and RANK without torchrun's MASTER_ADDR/PORT: torch's ValueError traceback."""
    from tinygen_trainer.training.distributed import before_training_once

    for name in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(args(corpus, tokenizer, tmp_path / "out", "--quiet")) == 2
    assert capsys.readouterr().err == (
        "tinygen-train: error: WORLD_SIZE=2 but MASTER_ADDR and MASTER_PORT are not set; start "
        "several processes with torchrun\n")
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    with pytest.raises(TinygenError, match=r"^WORLD_SIZE=2 but MASTER_PORT is not set; start"):
        before_training_once("writing the teacher's texts", lambda: None)  # distill's wait


def test_batch_must_split_over_the_processes():
    check_batch(8, 4)
    with pytest.raises(TinygenError, match=r"batch_size 6 is the global batch .* 4 torchrun "
                                           r"processes .* use --batch-size 4 \(1 row per"):
        check_batch(6, 4)
    with pytest.raises(TinygenError, match=r"use --batch-size 8 \(2 rows per process\)"):
        check_batch(10, 4)


def test_each_process_feeds_its_share_of_the_global_batch():
    class Counting:  # rows 0, 1, 2, ... in order: what each process gets is plain to see
        def __init__(self):
            self.next = 0

        def next_rows(self, n):
            ids = torch.arange(self.next, self.next + n).numpy()[:, None].repeat(3, 1)
            self.next += n
            return Rows(ids, ids, ids >= 0, (ids >= 0).astype("float32"))

    def batch(rows):
        return {"input_ids": torch.from_numpy(rows.input_ids)}

    steps = [[m["input_ids"][:, 0].tolist() for m in
              Feed(Counting(), batch, 4, 2, lambda t: t, part, 2).next_step()]
             for part in (0, 1)]
    assert steps == [[[0, 1], [4, 5]], [[2, 3], [6, 7]]]
    whole = Feed(Counting(), batch, 4, 2, lambda t: t).next_step()
    assert [m["input_ids"][:, 0].tolist() for m in whole] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_machines_that_see_different_checkpoints_are_named_as_torchrun_processes(tmp_path):
    """torchrun on two machines, --output on a disk of each: the second sees no checkpoint.
    The line spoke of hosts and pod slices, XLA's words, to a user of torchrun."""
    from tinygen_trainer.training.checkpoint import resume_point
    from tinygen_trainer.training.device import Backend

    step = tmp_path / "out" / "checkpoints" / "step-00000002"
    step.mkdir(parents=True)
    for name in ("config.json", "optimizer.pt", "model.safetensors"):
        (step / name).write_text("x")
    (step / "state.json").write_text(json.dumps({"step": 2}))

    class Process0(Backend):  # the data parallel backends are named cpu and cuda, as this
        def gather(self, value):
            return [value, None]  # process 1 runs on another machine, with its own empty disk

    with pytest.raises(TinygenError) as info:
        resume_point(tmp_path / "out", Process0())
    message = str(info.value)
    assert message.startswith(f"the processes see different checkpoints in {tmp_path / 'out'} "
                              f"(process 0: step-00000002 (state "), message
    assert message.endswith("process 1: none); only process 0 writes them, so on several "
                            "machines --output must be a folder every machine shares"), message
    assert "host" not in message and "pod slice" not in message


# -- two processes -----------------------------------------------------------------------

@needs_gloo
def test_two_processes_train_what_one_does_and_resume(tmp_path, corpus, tokenizer, capsys):
    one = tmp_path / "one"
    assert main(args(corpus, tokenizer, one, "--quiet")) == 0
    capsys.readouterr()

    two = tmp_path / "two"
    run = torchrun(args(corpus, tokenizer, two))  # with progress: process 0 alone prints
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stderr.count("on cpu x2 (torchrun, gloo)") == 1, run.stderr[-3000:]
    assert run.stderr.count("saved the model to") == 1
    assert_same_weights(two, one)
    assert_same_metrics(two, one)
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == \
        ["step-00000002", "step-00000004"]
    # each process's own RNG (dropout differs by process), for each to resume its own
    state = json.loads((two / "checkpoints" / "step-00000002" / "state.json").read_text())
    assert [len(state["process_rng"]), state["process_rng"][0]] == [2, state["rng"]]
    assert state["process_rng"][1]["torch"] != state["rng"]["torch"]

    # As if killed after the checkpoint of step 2: two processes resume from it ...
    shutil.rmtree(two / "checkpoints" / "step-00000004")
    (two / "model.safetensors").unlink()
    single = tmp_path / "single"
    shutil.copytree(two, single)
    run = torchrun(args(corpus, tokenizer, two, "--quiet", "--resume"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert_same_weights(two, one)
    assert_same_metrics(two, one)

    # ... and so does one process: the checkpoint holds the global batch's position
    assert main(args(corpus, tokenizer, single, "--quiet", "--resume")) == 0
    assert_same_weights(single, one)
    assert_same_metrics(single, one)


def worker_pids(torchrun_pid: int) -> dict[int, int]:
    """RANK -> pid of torchrun's worker processes (Linux's /proc)."""
    children = open(f"/proc/{torchrun_pid}/task/{torchrun_pid}/children").read().split()
    ranks = {}
    for pid in map(int, children):
        env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        rank = next(v[5:] for v in env if v.startswith(b"RANK="))
        ranks[int(rank)] = pid
    return ranks


@needs_gloo
@pytest.mark.skipif(not os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children"),
                    reason="finds torchrun's workers through Linux's /proc")
def test_a_stop_signal_to_one_process_stops_all_at_the_same_step(tmp_path, corpus, tokenizer):
    """A scheduler's SIGTERM to one process (Ctrl-C reaches each, at its own moment) used to
    land mid-step: it left while the other waited in that step's all-reduce, and both hung
    until torchrun killed them, with no "interrupted" line. Now they stop together, cleanly."""
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               "2", "-m", "tinygen_trainer.cli",
               *args(corpus, tokenizer, out, "--quiet", "--steps", "100000")]
    # A session of its own: a hang's workers are killed with torchrun, not left to train on.
    run = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    try:
        metrics = out / "metrics.jsonl"
        while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 5):
            assert run.poll() is None, run.stderr.read()[-3000:]
            time.sleep(0.1)
        os.kill(worker_pids(run.pid)[1], signal.SIGTERM)
        _, stderr = run.communicate(timeout=TIMEOUT)
    finally:
        with contextlib.suppress(ProcessLookupError):  # none left: the run ended
            os.killpg(run.pid, signal.SIGKILL)
    said = re.findall(r"tinygen-train: interrupted; the checkpoint of step (\d+) is kept", stderr)
    assert len(said) == 1, stderr[-3000:]
    assert (out / "checkpoints" / f"step-{int(said[0]):08d}").is_dir()
    # Left of the signal (130), not killed by torchrun after a hang; the other may still be
    # on its way out when torchrun sees the first one gone and stops it (SIGTERM, -15).
    assert "exitcode  : 130" in stderr and "exitcode  : -9" not in stderr, stderr[-3000:]
    assert "monitoredBarrier" not in stderr, stderr[-3000:]


def our_errors(stderr: str) -> list[str]:
    """The tinygen-train error messages in `stderr`. The processes share the pipe, so a line may
    land glued to another (seen: 1 full run in 3): split on the prefix, each message ending
    at the next prefix or the end of its line."""
    return [part.split("\n", 1)[0].strip() for part in stderr.split("tinygen-train: error: ")[1:]]


@needs_gloo
def test_a_batch_that_does_not_split_is_one_line(tmp_path, corpus, tokenizer):
    run = torchrun(args(corpus, tokenizer, tmp_path / "out", "--quiet", "--batch-size", "3"))
    assert run.returncode != 0
    # Every process failed alike: one says it (torchrun then reports the failed processes).
    assert our_errors(run.stderr) == [
        "batch_size 3 is the global batch and must be a multiple of the 2 torchrun processes "
        "it is split over; use --batch-size 2 (1 row per process)"], run.stderr[-3000:]
    assert not (tmp_path / "out" / "checkpoints").exists()
    # The first process out exits 2, not of SIGABRT as its group is torn down (4 runs of 6
    # when process 0 left while process 1 was still in a collective).
    assert "SIGABRT" not in run.stderr and "terminate called" not in run.stderr, run.stderr[-3000:]
    assert "failed (exitcode: 2)" in run.stderr, run.stderr[-3000:]


@needs_gloo
@pytest.mark.parametrize("bad, message", [
    ("0", "tinygen-train: error: --batch-size must be an integer >= 1, got 0"),
    ("x", "tinygen-train train: error: argument --batch-size: invalid int value: 'x'")])
def test_bad_arguments_are_said_once_not_once_per_process(tmp_path, corpus, tokenizer, bad,
                                                          message):
    """Checked before the processes meet, alike in each: every process said the same line."""
    run = torchrun(args(corpus, tokenizer, tmp_path / "out", "--quiet", "--batch-size", bad))
    assert run.returncode != 0
    assert run.stderr.count(message) == 1, run.stderr[-3000:]
    assert "interrupted" not in run.stderr and run.stderr.count("exitcode  : 2") == 2, \
        run.stderr[-3000:]


def test_a_setup_error_another_process_says_is_said_here_if_it_does_not(monkeypatch, capsys,
                                                                       tmp_path):
    """A process whose error LOCAL_RANK 0 says waits for torchrun to stop it; if none does
    (the error was its own after all), it says the error itself."""
    from tinygen_trainer import cli, notices

    monkeypatch.setattr(notices, "_joined", False)
    monkeypatch.setattr(notices, "_alike", False)
    monkeypatch.setattr(cli, "SAID_WAIT", 0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("1", "0"):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("LOCAL_RANK", rank)
        assert notices.said_by_another() == (rank == "1")
        assert main(["train", "--preset", "cpu-tiny", "-o", str(tmp_path / "out")]) == 2
        assert capsys.readouterr().err == ("tinygen-train: error: a preset needs --tokenizer "
                                           "tokenizer.json (train one with 'tinygen-train "
                                           "tokenizer')\n")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    notices.joining_the_others()  # from here its errors may be its own
    assert not notices.said_by_another()
    notices.failed_alike()  # unless every process compared and found the same
    assert notices.said_by_another()


def test_a_resume_on_processes_the_batch_does_not_split_over_says_how_many_fit():
    # It said "use --batch-size 3", which the resume then refused (the checkpoint's is 4).
    with pytest.raises(TinygenError) as info:
        check_batch(4, 3, resuming=True)
    assert str(info.value) == (
        "batch_size 4 is the global batch and must be a multiple of the 3 torchrun processes it "
        "is split over; a resumed run keeps its batch size, so resume it on a number of "
        "processes that divides 4 (2, say)")
    with pytest.raises(TinygenError, match=r"divides 12 \(6, say\)$"):
        check_batch(12, 8, resuming=True)


@needs_gloo
def test_resuming_on_a_process_count_the_batch_does_not_split_over(tmp_path, corpus, tokenizer):
    """A one-process run of batch 4, resumed by three processes: the way out is two."""
    out = tmp_path / "out"
    assert main(args(corpus, tokenizer, out, "--quiet", "--steps", "2")) == 0
    run = torchrun(args(corpus, tokenizer, out, "--quiet", "--resume"), processes=3)
    assert run.returncode != 0
    errors = our_errors(run.stderr)
    assert errors and all(e.endswith("a resumed run keeps its batch size, so resume it on a "
                                     "number of processes that divides 4 (2, say)")
                          for e in errors), run.stderr[-3000:]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000002"]


@needs_gloo
def test_a_resume_with_no_checkpoint_yet_is_told_the_batch_size_that_fits(tmp_path, corpus,
                                                                          tokenizer):
    # It said "a resumed run keeps its batch size": there is none to keep, the run starts afresh.
    run = torchrun(args(corpus, tokenizer, tmp_path / "new", "--quiet", "--resume",
                        "--batch-size", "3"), processes=2)
    assert run.returncode != 0
    errors = our_errors(run.stderr)
    assert errors and all(e.endswith("split over; use --batch-size 2 (1 row per process)")
                          for e in errors), run.stderr[-3000:]


@needs_gloo
def test_two_processes_weigh_padded_rows_as_one_does(tmp_path, tokenizer, capsys):
    """--line-by-line pads rows to their record: each process holds a different number of
    target tokens, so only the step's global count (summed over the processes) weighs every
    row as one process does. AdamW would hide a count off by a constant factor; this is not.
    The held-out records likewise: each process scores its share, the sums are added."""
    import numpy as np

    from training_corpus import SENTENCES

    rng = np.random.default_rng(1)
    lines = tmp_path / "lines.txt"  # records of one to three sentences: 6 to 25 tokens or so
    lines.write_text("\n".join(" ".join(rng.choice(SENTENCES, size=rng.integers(1, 4)))
                               for _ in range(64)) + "\n", encoding="utf-8")
    # block 28: some records are cut, in training and in the held-out share alike
    padded = ["--line-by-line", "--steps", "3", "--checkpoint-every", "0",
              "--eval-fraction", "0.2", "--eval-every", "2", "--block-size", "28"]
    one = tmp_path / "one"
    assert main(args(lines, tokenizer, one, "--quiet", *padded)) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning:" in line]
    assert len(warnings) == 2, warnings
    two = tmp_path / "two"
    run = torchrun(args(lines, tokenizer, two, "--quiet", *padded))
    assert run.returncode == 0, run.stderr[-3000:]
    for warning in warnings:  # process 0 says each once, not each process
        assert run.stderr.count(warning) == 1, run.stderr[-3000:]
    assert_same_weights(two, one)
    got, want = read_metrics(two), read_metrics(one)
    assert [m["loss"] for m in got if "loss" in m] == \
        pytest.approx([m["loss"] for m in want if "loss" in m], rel=1e-4)
    got, want = [m for m in got if "eval_loss" in m], [m for m in want if "eval_loss" in m]
    assert [m["step"] for m in got] == [m["step"] for m in want] == [2, 3]
    assert [m["eval_loss"] for m in got] == pytest.approx([m["eval_loss"] for m in want], rel=1e-5)


@needs_gloo
def test_a_check_only_process_0_makes_stops_every_process(tmp_path, corpus, tokenizer):
    """metrics.jsonl is process 0's to read: its error must not leave the others waiting in a
    collective (a multi-node NCCL run would hang until its timeout), and each says one line."""
    out = tmp_path / "out"
    assert main(args(corpus, tokenizer, out, "--quiet", "--steps", "2")) == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("\n".join(["garbage", *lines[1:]]) + "\n")
    run = torchrun(args(corpus, tokenizer, out, "--quiet", "--steps", "3", "--resume"))
    assert run.returncode != 0
    ours = our_errors(run.stderr)
    problem = "metrics.jsonl: line 1 is not JSON; delete that line or the file"
    assert len(ours) == 2 and all(line.endswith(problem) for line in ours), run.stderr[-3000:]
    assert sum(line.startswith("process 0 failed to start") for line in ours) == 1


@needs_gloo
def test_distill_runs_the_teacher_once(tmp_path, exported_gpt2_dir, tokenizer):
    """Under torchrun the teacher writes its texts in process 0 alone; the others wait for them."""
    def distill(out, teacher):
        return torchrun(["distill", "--teacher", str(teacher), "--teacher-texts", "6",
                         "--text-tokens", "8", "--preset", "cpu-tiny", "--tokenizer",
                         str(tokenizer), "-o", str(out), "--device", "cpu", "--steps", "2",
                         "--batch-size", "2", "--block-size", "8", "--warmup-steps", "1",
                         "--quiet", "--seed", "11"])

    out = tmp_path / "student"
    run = distill(out, exported_gpt2_dir)
    assert run.returncode == 0, run.stderr[-3000:]
    records = [json.loads(line) for line in (out / "teacher-texts.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in records] == list(range(11, 17))  # six texts, not six a process
    assert run.stderr.count("saved the student to") == 1
    assert (out / "model.safetensors").is_file()

    # the teacher fails in process 0: the other process says so in one line and stops too
    run = distill(tmp_path / "other", tmp_path / "no-teacher")
    ours = our_errors(run.stderr)
    assert run.returncode != 0 and len(ours) == 2, run.stderr[-3000:]
    assert sum("process 0 failed at writing the teacher's texts: " in line for line in ours) == 1
