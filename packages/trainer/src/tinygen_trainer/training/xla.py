"""What XlaBackend needs from torch_xla: the runtime, data parallel, the loader, metrics.

Imported only by XlaBackend, after device.check_torch_xla has checked the pins,
so nothing else in the trainer ever imports torch_xla.

Data parallel is SPMD, torch-xla's way to scale to pod slices (its README calls
multiprocessing "more complex, and not compatible with SPMD"; xr.use_spmd() is
"the recommended way"): one process per host drives all of its chips,
parameters are replicated, each batch is split along its first
dimension over a 1-D `data` mesh of every chip in the slice, and the XLA
partitioner adds the gradient all-reduce. With a single device nothing is
sharded and the graph is the plain one.

On a pod slice every host runs the same command, and so one process per host
(xr.process_index() of xr.process_count()):

- Data: `--batch-size` is the global micro-batch. Each host keeps its contiguous
  share of every global batch (feed.host_step) and hands it to MpDeviceLoader as
  its local part of the globally sharded input (ShardingSpec(minibatch=True),
  torch-xla's documented way to feed per-host data under SPMD).
- Files: process 0 alone writes checkpoints, the trained model, metrics.jsonl and
  TensorBoard; the others wait for it (Hosts.once), so none runs ahead of a
  checkpoint being written, and each learns whether the write worked.
- Coordination between hosts goes through a gloo process group that
  torch-xla's `xla://` init method sets up (the pattern of its distributed
  checkpoint guide); only small Python objects travel there. Tensors never do:
  the training graph's own collectives move them.
"""

from __future__ import annotations

import collections
import os
import threading
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch_xla
import torch_xla.core.xla_model as xm
import torch_xla.debug.metrics as met
import torch_xla.runtime as xr
from torch_xla.distributed.parallel_loader import MpDeviceLoader

from tinygen.errors import TinygenError, first_line

from ..data.dataset import Rows, Sampler
from .distributed import Processes as Hosts  # one process per host here (torchrun: per GPU)
from .feed import HostBatch, host_step

# Rows drawn ahead of the step: enough to hide the host-to-device copy, small so a
# phase switch or the end of the run throws little work away.
LOADER_PREFETCH = 4
DEVICE_PREFETCH = 2


def join_hosts() -> Hosts:
    """This process among the hosts of the slice; with several, the gloo group between them."""
    count = xr.process_count()
    if count == 1:
        return Hosts()
    import torch.distributed as dist
    import torch_xla.distributed.xla_backend  # noqa: F401 (registers the xla:// init method)

    if not dist.is_initialized():
        # Rank process_index of process_count under SPMD; the address of process 0's
        # host comes from the TPU metadata. Started before any training graph.
        dist.init_process_group("gloo", init_method="xla://")
    return Hosts(xr.process_index(), count, dist.group.WORLD)


def check_batch(batch_size: int, hosts: int, local_devices: int, resuming: bool = False) -> None:
    """One line unless `batch_size` (global) splits evenly over hosts x local_devices chips."""
    devices = hosts * local_devices
    if batch_size % devices == 0:
        return
    if resuming:  # the checkpoint's batch size stays: another --batch-size would be refused
        of_hosts = f" of the {hosts} hosts ({local_devices} each)" if hosts > 1 else ""
        fewer = max(n for n in range(1, devices) if batch_size % n == 0)
        raise TinygenError(
            f"batch_size {batch_size} is the global batch and must be a multiple of the "
            f"{devices} XLA devices{of_hosts} it is split over; a resumed run keeps its batch "
            f"size, so resume it on a number of devices that divides {batch_size} ({fewer}, say)")
    fits = devices * max(1, batch_size // devices)
    if hosts == 1:
        raise TinygenError(
            f"batch_size {batch_size} must be a multiple of the {devices} XLA devices "
            f"it is split over; use --batch-size {fits}")
    raise TinygenError(
        f"batch_size {batch_size} is the global batch and must be a multiple of the {devices} "
        f"XLA devices of the {hosts} hosts ({local_devices} each) it is split over; "
        f"use --batch-size {fits} ({fits // hosts} rows per host)")


class XlaRuntime:
    """The PJRT runtime of this process: its device, its place among the hosts, the SPMD mesh."""

    def __init__(self) -> None:
        try:  # the runtime starts here: a PJRT_DEVICE with no device behind it fails first
            self.devices = xr.global_runtime_device_count()  # every chip of the slice, all hosts
        except (OSError, RuntimeError) as exc:
            device = os.environ.get("PJRT_DEVICE", "")
            raise TinygenError(
                f"--device xla: PJRT_DEVICE={device} gives no XLA device ({first_line(exc)}); "
                f"use PJRT_DEVICE=TPU on a TPU VM, PJRT_DEVICE=CPU to try it here") from None
        self.spmd = self.devices > 1
        if self.spmd and not xr.is_spmd():
            # Before the first XLA tensor: afterwards SPMD has to replicate what exists.
            xr.use_spmd()
        self.device = torch_xla.device()
        self.local_devices = xr.addressable_runtime_device_count()  # this host's chips
        self.hosts = join_hosts()
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
                + (f" over {self.hosts.count} hosts" if self.hosts.count > 1 else ""))

    def check_batch(self, batch_size: int, resuming: bool = False) -> None:
        check_batch(batch_size, self.hosts.count, self.local_devices, resuming)

    def input_sharding(self):
        """How a (rows, ...) host batch is laid out: rows split over the `data` axis."""
        if not self.spmd:
            return None
        import torch_xla.distributed.spmd as xs

        # (rows, grad_accum, block): only the first dimension is split. With several
        # hosts each sends only its rows (minibatch) and XLA assembles the global
        # batch from them; which chips a host's rows land on does not matter, the
        # loss being a mean over all rows.
        return xs.ShardingSpec(self.mesh, ("data", None, None), minibatch=self.hosts.count > 1)


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
        """(rows this host trains, accum, block) CPU tensors per field, forever."""
        hosts = self.runtime.hosts
        while True:
            step = host_step(self.sampler, self.make_batch, self.batch_size, self.accum,
                             hosts.index, hosts.count)
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
