"""Run by test_xla_parallel.py in a fresh process that has several XLA CPU devices.

    python spmd_worker.py OPTIONS_JSON

trains TrainConfig(**options) on XLA and prints one JSON line: the backend's
description, how the loader laid the first batch out over the devices, the
logged losses and compile counts, the held-out evaluations; or {"error": message}
for a TinygenError.
"""

from __future__ import annotations

import json
import sys

import torch
import torch_xla

from tinygen.errors import TinygenError
from tinygen_trainer.training import TrainConfig, Trainer, read_metrics, xla

shardings: list[str] = []


class Watched(xla.MpDeviceLoader):
    """MpDeviceLoader noting the sharding of the first batch it hands out."""

    def __iter__(self):
        batches = super().__iter__()
        for batch in batches:
            if not shardings:
                shardings.append(torch_xla._XLAC._get_xla_sharding_spec(batch["input_ids"]))
            yield batch


def main() -> None:
    torch.set_num_threads(1)
    xla.MpDeviceLoader = Watched
    options = json.loads(sys.argv[1])
    try:
        trainer = Trainer.from_config(TrainConfig(**options))
    except TinygenError as exc:
        print(json.dumps({"error": str(exc)}))
        return
    trainer.fit()
    metrics = [m for m in read_metrics(options["output_dir"]) if "loss" in m]
    evals = [m for m in read_metrics(options["output_dir"]) if "eval_loss" in m]
    print(json.dumps({"describe": trainer.describe(), "sharding": shardings[0],
                      "losses": [m["loss"] for m in metrics],
                      "compilations": [m["xla_compilations"] for m in metrics],
                      "eval": evals}))


if __name__ == "__main__":
    main()
