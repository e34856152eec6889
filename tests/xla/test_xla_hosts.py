"""A pod slice: one process per host, each with its share of the data; process 0 writes.

torch-xla 2.9's CPU device cannot run one SPMD program across processes (its
PJRT CPU client has no distributed options; xr.process_count() is 1 whatever
the environment says), so cross-host gradients cannot run here; the SPMD
gradient all-reduce is tested over 4 devices of one process (test_xla_parallel).
What is tested for real: two processes, each training on XLA CPU devices and
told which host it is (hosts_worker.py), coordinated through a gloo group as on
a slice, sharing one output folder as a slice's hosts share one --output.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tinygen.errors import TinygenError
from tinygen_trainer.data.dataset import Rows
from tinygen_trainer.training.checkpoint import resume_point
from tinygen_trainer.training.device import Backend
from tinygen_trainer.training.feed import host_step
from tinygen_trainer.training.setup import (build_encoder, build_phases, plan_model,
                                            resolve_block_size)

pytest.importorskip("torch_xla")  # the main .venv has none: skip
from tinygen_trainer.training import xla  # noqa: E402

pytestmark = pytest.mark.xla

WORKER = Path(__file__).with_name("hosts_worker.py")
HOSTS = 2
DEVICES_PER_HOST = 2
# 8 rows per micro-batch, 2 micro-batches a step: each host trains 4 rows of each.
OPTIONS = dict(batch_size=8, grad_accum=2, steps=4, checkpoint_every=2)
POD = dict(OPTIONS, grad_accum=1)  # one micro-batch a step: a graph half the size to compile


def sampler_of(config):
    """The sampler of the run's one phase, as the trainer builds it."""
    encoder, added = build_encoder(config)
    plan = plan_model(config, encoder, added)
    return build_phases(config, encoder, resolve_block_size(config, plan), plan.pad_id)[0].sampler


def ids(rows):
    return {"input_ids": torch.from_numpy(rows.input_ids)}


def global_batches(config, steps: int) -> list[torch.Tensor]:
    """(batch_size, accum, block) input_ids of each step, as one host alone draws them."""
    sampler = sampler_of(config)
    return [host_step(sampler, ids, config.batch_size, config.grad_accum)["input_ids"]
            for _ in range(steps)]


# -- the data each host loads -----------------------------------------------------------

@pytest.mark.parametrize("hosts", [2, 4])
def test_host_shares_make_the_global_batch_across_a_resume(tiny, tmp_path, hosts):
    config = tiny(tmp_path / "out", **OPTIONS)
    steps, cut = 5, 2
    expected = global_batches(config, steps)
    samplers = [sampler_of(config) for _ in range(hosts)]  # every host its own, as on a slice

    def draw(host):
        return host_step(samplers[host], ids, config.batch_size, config.grad_accum, host,
                         hosts)["input_ids"]

    drawn = [[draw(h) for h in range(hosts)] for _ in range(cut)]
    # The checkpoint holds process 0's sampler state; a resume restores it on every host.
    state = samplers[0].state_dict()
    assert all(s.state_dict() == state for s in samplers)
    samplers = [sampler_of(config) for _ in range(hosts)]
    for sampler in samplers:
        sampler.load_state_dict(state)
    drawn += [[draw(h) for h in range(hosts)] for _ in range(steps - cut)]

    for step, (shares, whole) in enumerate(zip(drawn, expected, strict=True)):
        assert [s.shape for s in shares] == [(8 // hosts, 2, 32)] * hosts
        assert torch.equal(torch.cat(shares), whole), f"step {step + 1}"
    assert not torch.equal(expected[0], expected[1])  # the steps really differ


def test_a_host_share_keeps_every_field_of_the_rows():
    """Rows subclasses (distillation's teacher logits) are cut per row like the tokens."""

    @dataclasses.dataclass(frozen=True)
    class Scored(Rows):
        score: np.ndarray  # (n,)

    class Counting:
        block_size = 2

        def next_rows(self, n):
            ids = np.arange(n * 2).reshape(n, 2)
            return Scored(ids, ids, np.ones((n, 2), bool), np.ones((n, 2), np.float32),
                          np.arange(n) * 10)

    def make_batch(rows):
        return {"input_ids": torch.from_numpy(rows.input_ids),
                "score": torch.from_numpy(rows.score)}

    step = host_step(Counting(), make_batch, batch_size=6, accum=1, host=1, hosts=3)
    assert step["input_ids"][:, 0].tolist() == [[4, 5], [6, 7]]
    assert step["score"][:, 0].tolist() == [20, 30]


def test_batch_must_split_over_hosts_and_their_devices():
    xla.check_batch(32, hosts=4, local_devices=4)
    xla.check_batch(8, hosts=1, local_devices=4)
    with pytest.raises(TinygenError) as info:
        xla.check_batch(24, hosts=4, local_devices=4)
    assert str(info.value) == (
        "batch_size 24 is the global batch and must be a multiple of the 16 XLA devices of the "
        "4 hosts (4 each) it is split over; use --batch-size 16 (4 rows per host)")
    with pytest.raises(TinygenError, match=r"^batch_size 6 must be a multiple of the 4 XLA"):
        xla.check_batch(6, hosts=1, local_devices=4)


def test_a_resume_on_devices_the_batch_does_not_split_over_says_how_many_fit():
    # It said "use --batch-size 3", which the resume then refused (the checkpoint's is 4).
    with pytest.raises(TinygenError) as info:
        xla.check_batch(4, hosts=1, local_devices=3, resuming=True)
    assert str(info.value) == (
        "batch_size 4 is the global batch and must be a multiple of the 3 XLA devices it is "
        "split over; a resumed run keeps its batch size, so resume it on a number of devices "
        "that divides 4 (2, say)")
    with pytest.raises(TinygenError, match=r"of the 16 XLA devices of the 4 hosts \(4 each\) "
                                           r".* divides 24 \(12, say\)$"):
        xla.check_batch(24, hosts=4, local_devices=4, resuming=True)


def test_hosts_that_see_different_checkpoints_do_not_resume(tmp_path):
    """Process 0 writes checkpoints: a host that cannot see them must not start afresh."""
    out = tmp_path / "out"
    (out / "checkpoints" / "step-00000003").mkdir(parents=True)
    step = out / "checkpoints" / "step-00000003"
    for name in ("config.json", "optimizer.pt", "model.safetensors"):
        (step / name).write_text("x")
    (step / "state.json").write_text(json.dumps({"step": 3}))

    class Host0(Backend):
        name = "xla"

        def gather(self, value):
            return [value, None]  # host 1 has its own, empty, disk

    assert resume_point(out, Backend()) == step
    with pytest.raises(TinygenError) as info:
        resume_point(out, Host0())
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"the hosts see different checkpoints in {out} (host 0: "
                              f"step-00000003 (state ")
    assert message.endswith("host 1: none); only process 0 writes them, so on a pod slice "
                            "--output must be a folder every host shares")


# -- two processes, one per host ------------------------------------------------------

def run_hosts(config, lose_step: int) -> list[list[dict]]:
    options = {k: v for k, v in config.to_json().items() if k not in ("data", "adam_betas")}
    options.update(data=[str(s.path) for s in config.data])
    with socket.socket() as s:  # a free port for the gloo group
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PJRT_DEVICE": "CPU", "CPU_NUM_DEVICES": str(DEVICES_PER_HOST)}
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(host), str(HOSTS), str(port),
                               json.dumps(options), str(lose_step)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for host in range(HOSTS)]
    results = []
    try:
        for host, proc in enumerate(procs):
            stdout, stderr = proc.communicate(timeout=400)
            assert proc.returncode == 0, f"host {host}:\n{stderr[-3000:]}"
            results.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            proc.kill()  # only if a host is still running after another failed
    return results


@pytest.fixture(scope="module")
def pod(tiny, tmp_path_factory):
    """4 steps on 2 hosts into one shared folder; then step 4 is lost and both resume."""
    out = tmp_path_factory.mktemp("pod") / "out"
    runs = run_hosts(tiny(out, **POD), lose_step=4)
    first, resumed = ([host[i] for host in runs] for i in range(2))
    return out, first, resumed


def test_each_host_feeds_its_share_of_every_global_batch(pod, tiny):
    out, first, resumed = pod
    assert f"{DEVICES_PER_HOST} CPU devices, SPMD data parallel over {HOSTS} hosts" \
        in first[0]["describe"]
    expected = global_batches(tiny(out, **POD), 4)
    shares = [[torch.tensor(step) for step in host["fed"]] for host in first]
    assert [len(s) for s in shares] == [4, 4]
    for step in range(4):
        assert shares[0][step].shape == (4, 1, 32)
        assert torch.equal(torch.cat([shares[0][step], shares[1][step]]), expected[step])
    # after the resume from step 2 each host feeds exactly the rows it fed in steps 3..4
    assert [r["resumed_from"] for r in resumed] == [2, 2]
    assert [r["fed"] for r in resumed] == [host["fed"][2:] for host in first]


def test_only_process_0_writes_and_the_others_wait_for_it(pod):
    out, first, resumed = pod
    for run in (first, resumed):
        assert run[1]["writes"] == [], run[1]["writes"][:5]
        assert any("metrics.jsonl" in w for w in run[0]["writes"])  # the hook sees writes
        assert any("tempfile.mkdtemp" in w for w in run[0]["writes"])  # atomic: temp, rename
    # Process 0 writes each model file late; host 1 returned from each save only once
    # the checkpoint was complete, and from fit() once the trained model was in place.
    assert first[1]["seen_after_save"] == ["step-00000002", "step-00000004"]
    assert resumed[1]["seen_after_save"] == ["step-00000004"]
    assert first[1]["model_after_fit"] and resumed[1]["model_after_fit"]
    # one metrics.jsonl, one line per step: no host but process 0 logged
    metrics = first[0]["metrics"]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert all(np.isfinite(m["loss"]) for m in metrics)
    counts = [m["xla_compilations"] for m in metrics]
    print(f"process 0's XLA compilations after steps 1..4: {counts}")
    assert counts[2:] == [counts[2]] * 2, counts  # waiting for the writer compiles nothing


def test_every_host_resumes_from_the_one_checkpoint(pod):
    out, first, resumed = pod
    # process 0 resumed from step 2 and trained steps 3..4 on the same rows again
    again = resumed[0]["metrics"]
    assert [m["step"] for m in again] == [1, 2, 3, 4]
    before = first[0]["metrics"]
    np.testing.assert_allclose([m["loss"] for m in again], [m["loss"] for m in before],
                               rtol=0, atol=1e-6)
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == \
        ["step-00000002", "step-00000004"]
