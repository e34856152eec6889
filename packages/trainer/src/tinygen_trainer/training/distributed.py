"""Several processes training one model: torchrun data parallel, and the meeting points they share.

torchrun starts one process per GPU (or several CPU processes) and tells each
its place in the environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT):

    torchrun --nproc_per_node 8 -m tinygen_trainer.cli train ...the usual options...

With WORLD_SIZE > 1 select_backend returns the cpu or cuda backend made data
parallel (data_parallel_backend): a process group (nccl on GPUs, one GPU per
process, cuda:LOCAL_RANK; gloo on the CPU) and the model in
DistributedDataParallel, which all-reduces the gradients during the last
backward of each step. The same options train the same as in one process:

- Data: `--batch-size` is the global micro-batch, as on a TPU pod slice. Every
  process draws the whole global batch from its own sampler (all seeded alike,
  so all stay at the same data position) and trains its contiguous share
  (feed.host_rows); the batch must divide by the number of processes.
- Loss: the step's target count is summed over the processes, each weighs its
  micro-batches by its share of that global count, and its loss is scaled by
  the process count because DDP averages the gradients (their sum is the
  gradient of the step's global mean). The logged loss is summed the same way.
- Model: Trainer.model is the DDP wrapper, which reads as the model inside
  (config, generate, ...); saving and sampling take the bare model (unwrap).
- Files: process 0 alone writes checkpoints, the trained model, metrics and
  TensorBoard (Processes.once); the others wait for it. Every process resumes
  from the same checkpoint; each restores its own RNG (dropout differs by rank).
- Errors: a setup check that fails in one process reaches all (Backend.agree)
  before the first collective; a distillation teacher runs in process 0 before
  the group exists (before_training_once), the others waiting on torchrun's store.
- Restarts (torchrun --max-restarts): torchrun starts every process again, and
  `--resume` continues from the newest whole checkpoint. The processes meet under
  a new name each time in torchrun's store (fresh_store), which outlives them.
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import os
from typing import Any, Callable, ContextManager, TypeVar

import torch

from tinygen.errors import TinygenError, first_line

from ..notices import joining_the_others
from .device import Backend, CudaBackend
from .feed import Feed
from .interrupts import StepEnd

T = TypeVar("T")
CLOSE_WAIT = datetime.timedelta(seconds=10)  # how long a process waits for the others to leave


def torchrun_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when torchrun started several processes, else None."""
    try:
        world = int(os.environ.get("WORLD_SIZE") or 1)
    except ValueError:
        raise TinygenError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number") from None
    if world <= 1:
        return None
    joining_the_others()  # its errors from here may be its own: each process says its own
    try:
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK") or rank)
    except (KeyError, ValueError):
        raise TinygenError(f"WORLD_SIZE={world} but RANK/LOCAL_RANK are missing or not numbers; "
                           f"start several processes with torchrun") from None
    return rank, world, local


def check_rendezvous(world: int) -> None:
    """One line unless the address of process 0 is set (torchrun sets it), which env://
    needs: a WORLD_SIZE and RANK set by hand got torch's ValueError traceback."""
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise TinygenError(f"WORLD_SIZE={world} but {' and '.join(missing)} "
                           f"{'is' if len(missing) == 1 else 'are'} not set; start several "
                           f"processes with torchrun")


def process_rank() -> int:
    """This process's rank under torchrun (0 without it): only rank 0 prints results."""
    found = torchrun_env()
    return found[0] if found else 0


class Processes:
    """The processes training one model: which one this is, and meeting points.

    Process 0 writes every file. `group` is a torch.distributed process group
    over the processes (None with one: then nothing needs to wait); only small
    Python objects travel through it. A TPU pod slice has one per host (xla.py),
    torchrun one per GPU.
    """

    def __init__(self, index: int = 0, count: int = 1, group: Any = None):
        if count > 1 and group is None:
            raise ValueError("several processes need a process group")
        self.index = index
        self.count = count
        self.group = group

    @property
    def writer(self) -> bool:
        return self.index == 0

    def gather(self, value: Any) -> list[Any]:
        """Every process's `value` (picklable), in process order; all must call it."""
        if self.count == 1:
            return [value]
        import torch.distributed as dist

        values: list[Any] = [None] * self.count
        dist.all_gather_object(values, value, group=self.group)
        return values

    def once(self, what: str, write: Callable[[], T]) -> T:
        """Run `write` on process 0 only; every process returns its result once it is done.

        The others wait here, so none reads or runs past a file being written;
        if the write fails, process 0 raises its error and the others a one-line TinygenError.
        """
        result: Any = None
        failure: BaseException | None = None
        if self.writer:
            try:
                result = write()
            except BaseException as exc:  # the others must not wait for a write that died
                failure = exc
        if self.count > 1:
            import torch.distributed as dist

            message = None if failure is None else f"{type(failure).__name__}: {failure}"
            box = [(result, message)]
            dist.broadcast_object_list(box, src=0, group=self.group)
            result, message = box[0]
            if failure is None and message is not None:
                raise TinygenError(f"process 0 failed to write {what}: {message}")
        if failure is not None:
            raise failure
        return result


_store = None  # torchrun's store, kept for the process's life: without torchrun's agent, rank 0's
               # is the server


def fresh_store(rank: int, world: int) -> Any:
    """torchrun's store under a prefix that no earlier meeting of the processes used; every
    process must call this alike.

    torchrun keeps one store for the whole job (on its agent, since torch 2.5), so after a
    restart (--max-restarts) the keys the dead processes wrote are still there: a restarted
    process read gloo's address of a dead one, unless its own had been written first, and
    failed ("connectFullMesh failed ... Connection refused") or hung. The restart count
    (TORCHELASTIC_RESTART_COUNT) cannot name the start: each machine's agent counts its own.
    A new name for every call: a group made again in one process reuses its keys too.
    """
    global _store
    from torch.distributed import PrefixStore, rendezvous

    if _store is None:
        check_rendezvous(world)
        _store, _, _ = next(rendezvous("env://"))
    return PrefixStore(_fresh_name(_store, rank, world) + "/", _store)


def _fresh_name(store: Any, rank: int, world: int) -> str:
    """A name no earlier meeting in `store` used, the same in each process.

    Process 0 makes it. Every other process asks under a key of its own making and waits
    for the answer there; process 0 answers whatever question it finds (a dead process's
    old one too, whose answer nobody reads) until every process has taken the name up.
    """
    import time
    import uuid

    waited = store.timeout.total_seconds()
    try:
        if rank:
            mine = uuid.uuid4().hex
            store.set(f"tinygen/ask/{rank}", mine)
            name = store.get(f"tinygen/answer/{mine}").decode()  # waits up to `waited`
            store.add(f"{name}/joined", 1)
            return name
        name = f"tinygen/meeting-{store.add('tinygen/meetings', 1)}"
        answered: set[bytes] = set()
        deadline = time.monotonic() + waited
        while store.add(f"{name}/joined", 0) < world - 1:
            if time.monotonic() > deadline:
                raise TimeoutError
            for other in range(1, world):
                key = f"tinygen/ask/{other}"
                if store.check([key]) and (asked := store.get(key)) not in answered:
                    store.set(f"tinygen/answer/{asked.decode()}", name)
                    answered.add(asked)
            time.sleep(0.05)
        return name
    except (TimeoutError, torch.distributed.DistStoreError):
        raise TinygenError(f"torchrun process {rank} waited {waited:.0f} s for the other "
                           f"processes to start; see their errors") from None


def before_training_once(what: str, run: Callable[[], T]) -> T | None:
    """Run `run` in torchrun's process 0 alone, before the process group exists (a teacher
    scoring a corpus or writing texts for distillation); the others wait until it is done,
    for hours if need be, where a collective would time out. If it fails, they stop with a
    line that says so. Without torchrun, `run` runs here. The others return None."""
    found = torchrun_env()
    if found is None:
        return run()
    rank, world, _ = found
    import time

    store = fresh_store(rank, world)  # a restart's processes wait for its own process 0
    key, read = f"tinygen/{what}", f"tinygen/{what}/read"
    if rank == 0:
        try:
            result = run()
        except BaseException as exc:
            store.set(key, f"failed: {first_line(exc)}")
            # torchrun stops the others within 0.1 s of process 0 exiting: wait (a little)
            # until each has read the failure, so each gets to say it in its own line.
            deadline = time.monotonic() + CLOSE_WAIT.total_seconds()
            while store.add(read, 0) < world - 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            raise
        store.set(key, "done")
        return result
    while not store.check([key]):
        time.sleep(0.5)
    status = store.get(key).decode()
    store.add(read, 1)
    if status != "done":
        raise TinygenError(f"process 0 failed at {what}: {status.removeprefix('failed: ')}")
    return None


def check_batch(batch_size: int, processes: int, resuming: bool = False) -> None:
    """One line unless the global `batch_size` splits evenly over the processes."""
    if batch_size % processes:
        problem = (f"batch_size {batch_size} is the global batch and must be a multiple of the "
                   f"{processes} torchrun processes it is split over")
        if resuming:  # the checkpoint's batch size stays: another --batch-size would be refused
            fewer = max(n for n in range(1, processes) if batch_size % n == 0)
            raise TinygenError(f"{problem}; a resumed run keeps its batch size, so resume it on "
                               f"a number of processes that divides {batch_size} ({fewer}, say)")
        fits = processes * max(1, batch_size // processes)
        rows = fits // processes
        raise TinygenError(f"{problem}; use --batch-size {fits} "
                           f"({rows} row{'s' * (rows != 1)} per process)")


# Buffers are not trained (causal masks, rotary tables): DDP need not send them every forward.
# torch 2.13 names the option forward_sync_buffers (broadcast_buffers warns); older ones do not.
_NO_BUFFER_SYNC = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
                   inspect.signature(torch.nn.parallel.DistributedDataParallel).parameters
                   else {"broadcast_buffers": False})


class _Replicated(torch.nn.parallel.DistributedDataParallel):
    """DDP that reads as the model it wraps: what DDP lacks (config, generate,
    get_input_embeddings, ...) comes from the module, so the loop and its
    subclasses use it as they use the bare model; calling it runs DDP's forward."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module":
                raise
            return getattr(super().__getattr__("module"), name)


class DataParallel:
    """Mixin over the cpu and cuda backends: one torchrun process of several (see above)."""

    def __init__(self, precision: str = "auto"):
        import torch.distributed as dist

        env = torchrun_env()
        if env is None:
            raise TinygenError("data parallel training needs torchrun (WORLD_SIZE > 1)")
        self.rank, self.world, self.local_rank = env
        if self.name == "cuda" and torch.cuda.is_available():  # type: ignore[attr-defined]
            gpus = torch.cuda.device_count()
            if self.local_rank >= gpus:
                raise TinygenError(
                    f"torchrun process {self.rank} has LOCAL_RANK {self.local_rank}, but only "
                    f"{gpus} GPUs are visible: one process per GPU (--nproc_per_node {gpus} "
                    f"or fewer)")
            # Before anything touches a GPU, or every process opens a context on GPU 0.
            torch.cuda.set_device(self.local_rank)
        super().__init__(precision)  # type: ignore[call-arg]  # the device, precision checks
        cuda = self.device.type == "cuda"
        if cuda:
            self.device = torch.device("cuda", self.local_rank)
        self.comm = "nccl" if cuda else "gloo"
        self._owns_group = not dist.is_initialized()  # else a script of the caller's made it
        if self._owns_group:
            dist.init_process_group(self.comm, store=fresh_store(self.rank, self.world),
                                    rank=self.rank, world_size=self.world,
                                    device_id=self.device if cuda else None)
        # Small objects (who sees which checkpoint, the result of a write) go over gloo:
        # no GPU memory for them, and gloo's wait is long enough for a large checkpoint.
        self._objects = dist.new_group(backend="gloo") if cuda else None
        self.processes = Processes(self.rank, self.world, self._objects or dist.group.WORLD)

    def describe(self) -> str:
        return f"{super().describe()} x{self.world} (torchrun, {self.comm})"  # type: ignore[misc]

    def check_batch(self, batch_size: int, resuming: bool = False) -> None:
        check_batch(batch_size, self.world, resuming)

    def place_model(self, model: torch.nn.Module) -> torch.nn.Module:
        model = super().place_model(model)  # type: ignore[misc]
        # DDP copies process 0's parameters (and buffers) to the others here.
        return _Replicated(model, device_ids=[self.device] if self.device.type == "cuda" else None,
                           **_NO_BUFFER_SYNC)

    def seed_processes(self, seed: int) -> None:
        # The model is built (the same on every process); dropout now differs per rank.
        # Rank 0 keeps the stream a single process would have.
        if self.rank:
            torch.manual_seed(seed + self.rank)

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) \
            else model

    @property
    def averaged_over(self) -> int:
        return self.world

    def all_sum(self, value: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def step_end(self) -> StepEnd:
        return StepEnd(self._any_process)

    def _any_process(self, flag: bool) -> bool:
        import torch.distributed as dist

        # On the CPU over the gloo group for objects: no GPU sync each step.
        marks = torch.tensor([int(flag)])
        dist.all_reduce(marks, op=dist.ReduceOp.SUM, group=self.processes.group)
        return bool(marks.item())

    def accumulating(self, model: torch.nn.Module, sync: bool) -> ContextManager:
        if sync or not isinstance(model, torch.nn.parallel.DistributedDataParallel):
            return contextlib.nullcontext()
        return model.no_sync()

    def feed(self, sampler, make_batch, batch_size: int, accum: int) -> Feed:
        return Feed(sampler, make_batch, batch_size, accum, self.to_device,  # type: ignore
                    self.rank, self.world)

    def for_sampling(self, model: torch.nn.Module):
        return self.unwrap(model), self

    def save_model(self, model, folder) -> None:
        super().save_model(self.unwrap(model), folder)  # type: ignore[misc]

    @property
    def is_writer(self) -> bool:
        return self.processes.writer

    @property
    def process(self) -> int:
        return self.rank

    def write_once(self, what: str, write: Callable[[], T]) -> T:
        return self.processes.once(what, write)

    def gather(self, value: Any) -> list[Any]:
        return self.processes.gather(value)

    def rng_state(self) -> list[list[int]]:
        if self.device.type != "cuda":
            return []
        # This process's GPU only: get_rng_state_all would open a context on every GPU.
        return [torch.cuda.get_rng_state(self.device).tolist()]

    def set_rng_state(self, state: list[list[int]]) -> None:
        if self.device.type != "cuda" or not state:
            return
        # A one-process checkpoint holds every GPU's state; take this process's, else the first.
        mine = state[self.local_rank] if len(state) > self.local_rank and len(state) > 1 \
            else state[0]
        torch.cuda.set_rng_state(torch.tensor(mine, dtype=torch.uint8), self.device)

    def close(self) -> None:
        import torch.distributed as dist

        if not dist.is_initialized():
            return
        # Leave together: a process that tears its group down while another is still in a
        # collective (process 0 hosts the rendezvous store) died of SIGABRT in 4 of 6 runs
        # of a refused --batch-size, 0 of 8 with this. A process that fails alone waits
        # CLOSE_WAIT for the others, who never come, and leaves anyway.
        try:
            dist.monitored_barrier(group=self._objects or dist.group.WORLD, timeout=CLOSE_WAIT)
        except RuntimeError:
            pass
        if self._owns_group:
            dist.destroy_process_group()  # every group, the gloo one for objects too
        elif self._objects is not None:
            dist.destroy_process_group(self._objects)
        # Ours was the last reference to the group: gloo's threads now end here, not in the
        # interpreter's teardown, where 3 of ~125 refused runs still died of SIGABRT
        # ("terminate called without an active exception"; not reproduced on demand).
        self.processes.group = None
        self._objects = None


class DataParallelCpu(DataParallel, Backend):
    """CPU processes (gloo): fp32 unless --precision bf16, as in one process."""


class DataParallelCuda(DataParallel, CudaBackend):
    """One GPU per process (nccl), cuda:LOCAL_RANK."""


def data_parallel_backend(device: str, precision: str) -> Backend:
    """This process of a torchrun job, on `device` (cpu or cuda)."""
    if device == "cpu":
        return DataParallelCpu(precision)
    if device == "cuda":
        return DataParallelCuda(precision)
    raise TinygenError(f"--device {device} does not run under torchrun (WORLD_SIZE > 1): "
                       f"use cuda or cpu; XLA runs one process per host by itself")
