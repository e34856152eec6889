"""XLA tests: training through torch_xla on its CPU device (PJRT_DEVICE=CPU), for real.

They run in the venv tools/xla_venv.sh builds (`make test-xla`); where torch_xla is
not installed (the main .venv) they skip themselves, and only the tests of the scripts
on fakes in test_xla_setup.py run. This file only defines fixtures.

The XLA runtime starts here, before any test runs a backward pass on the CPU:
autograd sizes its per-device queues when it first runs, and an XLA device that
appears later has no queue ("device_ready_queues_" assert). For the same reason,
and because the device count is fixed when the runtime starts, the data-parallel
test (several CPU devices) runs in a subprocess.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

from tinygen_trainer.training import TrainConfig

if importlib.util.find_spec("torch_xla") is not None:
    os.environ.setdefault("PJRT_DEVICE", "CPU")
    import torch_xla

    torch_xla.device()

from training_corpus import SENTENCES, corpus, one_thread, tokenizer  # noqa: E402,F401 (fixtures)


@pytest.fixture(scope="session")
def lines(tmp_path_factory):
    """One sentence per line, for line-by-line (padded) rows."""
    path = tmp_path_factory.mktemp("lines") / "lines.txt"
    path.write_text("\n".join(SENTENCES * 5), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny(corpus, tokenizer):
    """tiny(output_dir, **options): the cpu-tiny preset, block 32, batch 4; options override."""

    def make(output_dir, **options) -> TrainConfig:
        base = {"output_dir": output_dir, "data": (corpus,), "preset": "cpu-tiny",
                "tokenizer": tokenizer, "steps": 8, "block_size": 32, "batch_size": 4,
                "warmup_steps": 2, "log_every": 1, "checkpoint_every": 0, "progress": False,
                "device": "xla"}
        return TrainConfig(**{**base, **options})

    return make
