"""Data parallel: SPMD over 4 XLA CPU devices (CPU_NUM_DEVICES=4), in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinygen_trainer.training import read_metrics, train

pytest.importorskip("torch_xla")  # the main .venv has none: skip

pytestmark = pytest.mark.xla

WORKER = Path(__file__).with_name("spmd_worker.py")
DEVICES = 4


def run_worker(config) -> dict:
    options = {k: v for k, v in config.to_json().items()
               if k not in ("data", "adam_betas", "eval_data")}
    options.update(data=[str(s.path) for s in config.data])
    if config.eval_data is not None:
        options.update(eval_data=str(config.eval_data.path))
    env = {**os.environ, "PJRT_DEVICE": "CPU", "CPU_NUM_DEVICES": str(DEVICES)}
    done = subprocess.run([sys.executable, str(WORKER), json.dumps(options)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_spmd_data_parallel_matches_one_device(tiny, tmp_path):
    # 8 rows, 2 micro-batches per step: each of the 4 devices trains 2 rows of each.
    options = dict(batch_size=8, grad_accum=2, steps=8)
    result = run_worker(tiny(tmp_path / "spmd", **options))
    assert f"on xla ({DEVICES} CPU devices, SPMD data parallel) fp32" in result["describe"]
    # the loader split the (rows, accum, block) batch along its rows over the 4 devices
    assert result["sharding"] == "{devices=[4,1,1]0,1,2,3}"
    counts = result["compilations"]
    print(f"SPMD compilations after steps 1..8: {counts}")
    assert counts[2:] == [counts[2]] * 6, counts
    # the gradient all-reduce is right: the same losses as one CPU over the whole batch
    on_cpu = [m["loss"] for m in read_metrics(train(tiny(tmp_path / "cpu", device="cpu",
                                                         **options)))]
    print(f"spmd {result['losses']}\ncpu  {on_cpu}")
    np.testing.assert_allclose(result["losses"], on_cpu, rtol=0, atol=1e-4)


def test_spmd_evaluation_matches_one_device(tiny, lines, tmp_path):
    """Held-out batches are sharded over the devices like training batches (the loader's
    input sharding); the sum over the batch spans them all, so the loss is one CPU's."""
    options = dict(batch_size=8, steps=4, eval_data=lines, eval_every=2)
    result = run_worker(tiny(tmp_path / "spmd", **options))
    on_cpu = [m for m in read_metrics(train(tiny(tmp_path / "cpu", device="cpu", **options)))
              if "eval_loss" in m]
    assert [m["step"] for m in result["eval"]] == [2, 4]
    np.testing.assert_allclose([m["eval_loss"] for m in result["eval"]],
                               [m["eval_loss"] for m in on_cpu], rtol=0, atol=1e-4)


@pytest.mark.parametrize("resume", [False, True], ids=["fresh", "resume with no checkpoint yet"])
def test_batch_must_split_evenly_over_the_devices(tiny, tmp_path, resume):
    result = run_worker(tiny(tmp_path / "uneven", batch_size=6, resume=resume))
    assert result == {"error": "batch_size 6 must be a multiple of the 4 XLA devices it is "
                               "split over; use --batch-size 4"}


def test_a_resume_on_devices_the_batch_does_not_split_over_says_so_first(tiny, tmp_path):
    """Checked before the checkpoint is read, with the resume's way out: another
    --batch-size would be refused (the feed's own check said "use --batch-size 4")."""
    out = tmp_path / "uneven"
    train(tiny(out, device="cpu", batch_size=6, steps=2, checkpoint_every=2))
    result = run_worker(tiny(out, batch_size=6, steps=4, checkpoint_every=2, resume=True))
    assert result == {"error": "batch_size 6 is the global batch and must be a multiple of the 4 "
                               "XLA devices it is split over; a resumed run keeps its batch size, "
                               "so resume it on a number of devices that divides 6 (3, say)"}
