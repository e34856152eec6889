"""What XlaBackend needs from torch_xla: the runtime, data parallel, the loader, metrics.

Imported only by XlaBackend, after device.check_torch_xla has checked the pins,
so nothing else in the trainer ever imports torch_xla.

Data parallel is SPMD, torch-xla's way to scale to pod slices (its README calls
multiprocessing "more complex, and not compatible with SPMD"; xr.use_spmd() is
"the recommended way"): one process per host drives all of its chips,
parameters are replicated, each batch is split along its first
dimension over a 1-D `data` mesh of every chip in the slice, and the XLA
partitioner adds the gradient all-reduce. On a pod slice every host runs the
same command; each loads only its own rows of the global batch. With a single
device nothing is sharded and the graph is the plain one.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch_xla
import torch_xla.core.xla_model as xm
import torch_xla.debug.metrics as met
import torch_xla.runtime as xr
from torch_xla.distributed.parallel_loader import MpDeviceLoader

from tinygen.errors import TinygenError

from ..data.dataset import Rows, Sampler
from .feed import HostBatch

# Rows drawn ahead of the step: enough to hide the host-to-device copy, small so a
# phase switch or the end of the run throws little work away.
LOADER_PREFETCH = 4
DEVICE_PREFETCH = 2


class XlaRuntime:
    """The PJRT runtime of this process: its device and, with several chips, the SPMD mesh."""

    def __init__(self) -> None:
        self.devices = xr.global_runtime_device_count()  # every chip of the slice, all hosts
        self.spmd = self.devices > 1
        if self.spmd and not xr.is_spmd():
            # Before the first XLA tensor: afterwards SPMD has to replicate what exists.
            xr.use_spmd()
        self.device = torch_xla.device()
        self.hosts = xr.process_count()
        self.host = xr.process_index()
        self.mesh = None
        if self.spmd:
            import torch_xla.distributed.spmd as xs

            self.mesh = xs.Mesh(np.arange(self.devices), (self.devices,), ("data",))

    @property
    def device_type(self) -> str:
        return xr.device_type() or "CPU"

    def describe(self) -> str:
        if not self.spmd:
            return f"1 {self.device_type} device"
        return (f"{self.devices} {self.device_type} devices, SPMD data parallel"
                + (f" over {self.hosts} hosts" if self.hosts > 1 else ""))

    def check_batch(self, batch_size: int) -> None:
        if batch_size % self.devices:
            fits = self.devices * max(1, batch_size // self.devices)
            raise TinygenError(
                f"batch_size {batch_size} must be a multiple of the {self.devices} XLA devices "
                f"it is split over; use --batch-size {fits}")

    def input_sharding(self):
        """How a (rows, ...) host batch is laid out: rows split over the `data` axis."""
        if not self.spmd:
            return None
        import torch_xla.distributed.spmd as xs

        # (rows, grad_accum, block): only the first dimension is split. On several
        # hosts each one sends its own rows (minibatch) and XLA assembles the batch.
        return xs.ShardingSpec(self.mesh, ("data", None, None), minibatch=self.hosts > 1)


def compilations() -> int:
    """Graphs XLA has compiled in this process so far (torch_xla's CompileTime metric)."""
    data = met.metric_data("CompileTime")
    return int(data[0]) if data else 0


class XlaFeed:
    """One phase's batches on the XLA device through MpDeviceLoader, one step at a time.

    A background thread draws rows and copies them to the device ahead of the
    step. All `grad_accum` micro-batches of a step travel as one (rows, accum,
    block) tensor per field, so each step is one fetch and one graph. The
    loader reads ahead, so the sampler has moved past the step being trained:
    state_dict() returns the position recorded with the last batch taken, and
    a resume draws exactly the rows the interrupted run would have drawn.
    """

    def __init__(self, runtime: XlaRuntime, sampler: Sampler,
                 make_batch: Callable[[Rows], HostBatch], batch_size: int, accum: int):
        runtime.check_batch(batch_size)
        self.runtime = runtime
        self.sampler = sampler
        self.make_batch = make_batch
        self.batch_size = batch_size
        self.accum = accum
        self._state = sampler.state_dict()
        self._states: collections.deque[dict[str, Any]] = collections.deque()
        self._lock = threading.Lock()
        self._loader: MpDeviceLoader | None = None
        self._batches: Iterator[HostBatch] | None = None

    def _host_steps(self) -> Iterator[HostBatch]:
        """(rows this host loads, accum, block) CPU tensors per field, forever."""
        share = self.batch_size // self.runtime.hosts
        mine = slice(self.runtime.host * share, (self.runtime.host + 1) * share)
        while True:
            # Every host draws the whole global batch, so all samplers stay in step
            # and a checkpoint from any host resumes all of them.
            micro = [self.make_batch(self.sampler.next_rows(self.batch_size))
                     for _ in range(self.accum)]
            step = {key: torch.stack([m[key][mine] for m in micro], dim=1) for key in micro[0]}
            with self._lock:
                self._states.append(self.sampler.state_dict())
            yield step

    def next_step(self) -> list[HostBatch]:
        if self._batches is None:
            self._loader = MpDeviceLoader(
                _Forever(self._host_steps), self.runtime.device,
                loader_prefetch_size=LOADER_PREFETCH, device_prefetch_size=DEVICE_PREFETCH,
                input_sharding=self.runtime.input_sharding())
            self._batches = iter(self._loader)
        try:
            step = next(self._batches)
        except StopIteration:
            raise RuntimeError("the XLA data loader stopped (see the error above)") from None
        with self._lock:
            self._state = self._states.popleft()
        return [{key: value[:, i] for key, value in step.items()} for i in range(self.accum)]

    def state_dict(self) -> dict[str, Any]:
        return self._state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._batches is not None:
            raise RuntimeError("load the feed's state before its first batch")
        self.sampler.load_state_dict(state)
        self._state = self.sampler.state_dict()

    def close(self) -> None:
        loader = getattr(self._loader, "_parallel_loader", None)
        if loader is not None:
            loader.close()  # stops and joins the loader threads
        self._loader = self._batches = None


class _Forever:
    """An iterable over a generator function: what MpDeviceLoader wraps in place of a DataLoader."""

    def __init__(self, make: Callable[[], Iterator[HostBatch]]):
        self.make = make

    def __iter__(self) -> Iterator[HostBatch]:
        return self.make()


def to_host(tree: Any, memo: dict[int, torch.Tensor] | None = None) -> Any:
    """`tree` with every XLA tensor copied to the CPU; one tensor seen twice stays one.

    Checkpoints must hold CPU tensors: optimizer.pt is read back with
    weights_only=True, which refuses XLA tensors, and a CPU or GPU run must be
    able to resume an XLA run. Tied weights (GPT-2's wte / lm_head) stay one
    tensor, so save_pretrained writes them once, as a CPU run does.
    """
    memo = {} if memo is None else memo
    if isinstance(tree, torch.Tensor):
        if id(tree) not in memo:
            memo[id(tree)] = tree.detach().cpu() if tree.device.type == "xla" else tree
        return memo[id(tree)]
    if isinstance(tree, dict):
        return type(tree)((k, to_host(v, memo)) for k, v in tree.items())
    if isinstance(tree, (list, tuple)):
        return type(tree)(to_host(v, memo) for v in tree)
    return tree


def sync() -> None:
    """Run the pending graph and then the step closures (the queued log lines)."""
    torch_xla.sync()


def optimizer_step(optimizer: torch.optim.Optimizer) -> None:
    # Under SPMD the gradients are already global (the partitioner all-reduced
    # them), so xm.optimizer_step's own reduce is a no-op; then one graph cut per step.
    xm.optimizer_step(optimizer)
    torch_xla.sync()


def add_step_closure(fn: Callable[[], None]) -> None:
    xm.add_step_closure(fn)


def get_rng_state() -> int:
    return int(xm.get_rng_state())


def set_rng_state(seed: int) -> None:
    xm.set_rng_state(int(seed))


def is_bf16_supported() -> bool:
    return xr.is_bf16_supported()
