"""One host of a simulated pod slice, run by test_xla_hosts.py once per host.

    python hosts_worker.py HOST HOSTS PORT OPTIONS_JSON [LOSE_STEP]

torch-xla 2.9's CPU device cannot span processes (its PJRT CPU client takes no
distributed options: xr.process_count() stays 1 whatever RANK and WORLD_SIZE
say), so each process here runs real SPMD over its own XLA CPU devices
(CPU_NUM_DEVICES), and is told which host it is: xla.join_hosts is replaced by a
gloo group over TCP with rank HOST of HOSTS, the group torch-xla's `xla://`
init method makes on a real slice. Everything else is the trainer's own code:
its share of the data, the single writer, the waits, the resume.

Trains TrainConfig(**options). With LOSE_STEP, process 0 then deletes that
checkpoint (as if the run had died before writing it) and every host resumes,
in the same process so the graphs need no second compile. Prints one JSON line:
per run, the rows this host fed per step, the checkpoint it found right after
each save returned, every write it made under the output folder (an audit hook
sees them), the step it resumed from; or {"error": message}. Process 0 writes
slowly (half a second more per model file) so that a host that did not wait for
it would find the checkpoint missing.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from tinygen.errors import TinygenError
from tinygen_trainer.training import TrainConfig, Trainer, device, read_metrics, xla
from tinygen_trainer.training.checkpoint import CHECKPOINTS, latest_checkpoint

WRITE_DELAY_S = 0.5


def main() -> None:
    host, hosts, port = (int(a) for a in sys.argv[1:4])
    options = json.loads(sys.argv[4])
    lose = int(sys.argv[5]) if len(sys.argv) > 5 else None
    out = os.path.abspath(options["output_dir"])
    torch.set_num_threads(1)
    writes = watch_writes(out)

    def join_hosts() -> xla.Hosts:
        if not dist.is_initialized():
            dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=host,
                                    world_size=hosts, timeout=datetime.timedelta(seconds=120))
        return xla.Hosts(host, hosts, dist.group.WORLD)

    xla.join_hosts = join_hosts
    fed: list[list] = []
    xla.MpDeviceLoader = recording_loader(fed)
    if host == 0:
        slow_down_writes()

    class Watched(Trainer):
        def save_checkpoint(self):
            path = super().save_checkpoint()
            latest = latest_checkpoint(out)  # complete checkpoints only
            self.seen.append(None if latest is None else latest.name)
            return path

    runs = []
    for resume in (False, True) if lose else (False,):
        if resume:
            dist.barrier()  # every host has finished the first run
            if host == 0:
                shutil.rmtree(Path(out) / CHECKPOINTS / f"step-{lose:08d}")
            dist.barrier()
        fed.clear()
        writes.clear()
        try:
            trainer = Watched.from_config(TrainConfig(**{**options, "resume": resume}))
        except TinygenError as exc:
            print(json.dumps({"error": str(exc)}))
            return
        trainer.seen = []
        resumed_from = trainer.step
        trainer.fit()
        runs.append({
            "describe": trainer.describe(), "resumed_from": resumed_from,
            # the loader reads ahead: batches past the last step were never trained
            "fed": fed[:trainer.step - resumed_from],
            "seen_after_save": trainer.seen,
            "model_after_fit": (Path(out) / "train_config.json").is_file(),
            "metrics": read_metrics(out),
            "writes": list(writes),
        })
    print(json.dumps(runs))


def recording_loader(fed: list[list]):
    """MpDeviceLoader noting the input_ids (rows, accum, block) of every host batch it sends."""

    class Recorded:
        def __init__(self, loader):
            self.loader = loader

        def __iter__(self):
            for batch in self.loader:
                fed.append(batch["input_ids"].tolist())
                yield batch

    class Recording(xla.MpDeviceLoader):
        def __init__(self, loader, device, **kwargs):
            super().__init__(Recorded(loader), device, **kwargs)

    return Recording


def slow_down_writes() -> None:
    save_model = device.XlaBackend.save_model

    def slowly(self, model, folder):
        time.sleep(WRITE_DELAY_S)
        save_model(self, model, folder)

    device.XlaBackend.save_model = slowly


def watch_writes(root: str) -> list[str]:
    """Every event that changes something under `root`, as 'event path'."""
    seen: list[str] = []
    changing = {"os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "os.chmod",
                "os.truncate", "shutil.rmtree", "tempfile.mkdtemp", "os.symlink", "os.link"}
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def under_root(path) -> bool:
        if not isinstance(path, (str, bytes, os.PathLike)):
            return False
        return os.path.abspath(os.fsdecode(path)).startswith(root)

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            if under_root(path) and ((mode and any(c in mode for c in "wax+"))
                                     or (flags or 0) & write_flags):
                seen.append(f"open {path}")
        elif event in changing and args and under_root(args[0]):
            seen.append(f"{event} {args[0]}")

    sys.addaudithook(hook)
    return seen


if __name__ == "__main__":
    main()
