"""Device backends: where tensors live, mixed precision, the optimizer step, device RNG.

The loop calls only these methods, so CPU, CUDA and XLA share one loop. A new
device is a subclass overriding what differs (see XlaBackend). Under torchrun
the cpu and cuda backends train data parallel (distributed.DataParallel).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, TypeVar

import torch

from tinygen.errors import TinygenError, first_line

from ..notices import failed_alike
from .feed import Feed
from .interrupts import StepEnd

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# torch-xla is built against exactly one torch release; requirements-xla.txt pins the same.
TORCH_XLA_VERSION = "2.9.0"
TORCH_XLA_PINS = f"torch=={TORCH_XLA_VERSION} torch-xla=={TORCH_XLA_VERSION}"
T = TypeVar("T")


class Backend:
    """CPU: fp32 by default; bf16 autocast when asked (slower on most CPUs, so not the default)."""

    name = "cpu"
    # True: every batch carries the same tensors, chosen by the options rather than by the
    # rows (XLA compiles a graph per program, so an optional mask would mean two graphs).
    static_shapes = False

    def __init__(self, precision: str = "auto"):
        self.device = torch.device(self.name)
        self.precision = self.resolve_precision(precision)
        self.scaler: torch.amp.GradScaler | None = None

    def resolve_precision(self, precision: str) -> str:
        if precision == "fp16":
            raise TinygenError("fp16 needs a GPU; on the CPU use --precision bf16 or fp32")
        return "fp32" if precision == "auto" else precision

    def autocast(self) -> ContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[self.precision])

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.device, non_blocking=True)

    def place_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The bare model inside what place_model returned (DDP wraps it)."""
        return model

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def optimizer_step(self, optimizer: torch.optim.Optimizer, params: Iterable[torch.nn.Parameter],
                       grad_clip: float) -> None:
        if self.scaler:
            self.scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(list(params), grad_clip)
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    # -- data parallel over processes (torchrun; see distributed.py) ------------

    def check_batch(self, batch_size: int, resuming: bool = False) -> None:
        """One-line TinygenError unless the global batch splits over the processes."""

    @property
    def averaged_over(self) -> int:
        """How many processes' gradients the optimizer step averages (DDP); 1: none."""
        return 1

    def all_sum(self, value: torch.Tensor) -> torch.Tensor:
        """`value` summed over the processes that each train part of every batch."""
        return value  # one process, or XLA SPMD, whose graph already spans every chip

    def accumulating(self, model: torch.nn.Module, sync: bool) -> ContextManager:
        """Around a micro-batch's forward and backward: sync=False defers DDP's all-reduce."""
        return contextlib.nullcontext()

    def step_end(self) -> StepEnd:
        """Around the training steps: how a stop signal reaches them (interrupts.py). One
        process (or an XLA slice's, which runs its steps as one program) stops where it is."""
        return StepEnd()

    def seed_processes(self, seed: int) -> None:
        """Once the model is built: seed what differs between processes (DDP's dropout)."""

    def close(self) -> None:
        """The end of a run, finished or failed (the trainer calls it once, in a finally):
        leave the process group, if any (data parallel), and drop the reports when_ready
        still holds (XLA; after a finished run flush() has run them all). It runs no device
        work, so it cannot hide the error a failed run is raising."""

    def feed(self, sampler, make_batch, batch_size: int, accum: int) -> Feed:
        """A phase's batches: `make_batch` turns the sampler's rows into CPU tensors."""
        return Feed(sampler, make_batch, batch_size, accum, self.to_device)

    def when_ready(self, value: torch.Tensor, report: Callable[[float], None]) -> None:
        """Call report(value as a float) once the device has computed it; here at once."""
        report(value.item())  # waits for the device: the loop asks only on logging steps

    def flush(self) -> None:
        """Finish whatever when_ready still holds (before a checkpoint, at the end)."""

    def step_metrics(self) -> dict[str, Any]:
        """Device figures logged with the loss (XLA: how many graphs it has compiled)."""
        return {}

    def describe(self) -> str:
        return self.name

    def seed(self, seed: int) -> None:
        """Seed the device's own generator, where torch.manual_seed does not reach it."""

    def fork_rng(self) -> ContextManager:
        """Run something random (sample generation) without moving the training RNG."""
        return torch.random.fork_rng(devices=[])

    def for_sampling(self, model: torch.nn.Module) -> tuple[torch.nn.Module, "Backend"]:
        """The model and backend that generate samples during training: these ones."""
        return model, self

    # -- processes: one here; one per host on a TPU pod slice ---------------------

    @property
    def is_writer(self) -> bool:
        """Whether this process writes files (checkpoints, the model, metrics): process 0."""
        return True

    @property
    def process(self) -> int:
        """This process's index among those training the model (gather's order)."""
        return 0

    def write_once(self, what: str, write: Callable[[], T]) -> T:
        """Run `write` in the one process that writes; every process returns when it is done."""
        return write()

    def gather(self, value: Any) -> list[Any]:
        """Every process's `value`, in process order (every process must call it)."""
        return [value]

    def agree(self, failure: Exception | None) -> None:
        """Raise if this process or any other failed its setup (every process must call it).

        Some checks run in process 0 alone (metrics.jsonl, TensorBoard): without this, the
        others would go on into a collective that process 0 never joins.
        """
        failures = self.gather(None if failure is None else first_line(failure))
        if failure is not None:
            if len(failures) > 1 and failures.count(failures[0]) == len(failures):
                failed_alike()  # one process a machine says it
            raise failure
        for index, message in enumerate(failures):
            if message is not None:
                raise TinygenError(f"process {index} failed to start: {message}")

    # -- saving ----------------------------------------------------------------

    @property
    def checkpoint_location(self) -> torch.device:
        """Where optimizer state is loaded from a checkpoint (torch.load's map_location)."""
        return self.device

    def save_model(self, model: torch.nn.Module, folder: Path) -> None:
        """The model as a transformers folder (config.json, model.safetensors)."""
        model.save_pretrained(folder, safe_serialization=True)

    def to_host(self, tree: Any) -> Any:
        """`tree` (e.g. an optimizer state dict) as torch.save may write it."""
        return tree

    # -- checkpoint state (JSON-able) ----------------------------------------

    def rng_state(self) -> list[list[int]]:
        return []

    def set_rng_state(self, state: list[list[int]]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict() if self.scaler else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


class CudaBackend(Backend):
    """bf16 autocast on Ampere and newer; fp16 with loss scaling before that."""

    name = "cuda"

    def __init__(self, precision: str = "auto"):
        if not torch.cuda.is_available():
            raise TinygenError("--device cuda: no CUDA GPU is visible to torch")
        super().__init__(precision)
        if self.precision == "fp16":
            # fp16 gradients underflow without a loss scale; bf16 has fp32's range and needs none.
            self.scaler = torch.amp.GradScaler("cuda")

    def resolve_precision(self, precision: str) -> str:
        if precision == "auto":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise TinygenError("this GPU has no bf16; use --precision fp16 or fp32")
        return precision

    def fork_rng(self) -> ContextManager:
        return torch.random.fork_rng(devices=[self.device])

    def rng_state(self) -> list[list[int]]:
        return [s.tolist() for s in torch.cuda.get_rng_state_all()]

    def set_rng_state(self, state: list[list[int]]) -> None:
        if state:
            torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state])


class XlaBackend(Backend):
    """TPUs (and other PJRT devices) through torch_xla; the pins are TORCH_XLA_PINS.

    XLA traces ops lazily and compiles one graph per distinct program, shapes
    included, so this path keeps everything static: fixed block and batch
    (the samplers never yield a short batch), the same tensors in every batch
    (static_shapes), no .item() in the step (the loss is read by a step closure
    on logging steps), and one torch_xla.sync() per step, after the optimizer.
    The graph compiles during the first steps and replays from then on;
    metrics.jsonl records the count (xla_compilations). Batches come through
    MpDeviceLoader; several devices train SPMD data parallel (see xla.py).

    On a pod slice each host runs one process of this backend: each feeds its
    share of every global batch, process 0 alone writes files and the others
    wait for it (write_once), and all resume from the same checkpoint (gather).
    """

    name = "xla"
    static_shapes = True

    def __init__(self, precision: str = "auto"):
        check_torch_xla()
        from . import xla

        self._xla = xla
        self.runtime = xla.XlaRuntime()
        self.device = self.runtime.device
        self.precision = self.resolve_precision(precision)
        self.scaler = None
        # when_ready's (value, report) pairs until the next sync; kept here, not in
        # torch_xla's step closures (global to the process), so that close() can drop them.
        self._reports: list[tuple[torch.Tensor, Callable[[float], None]]] = []

    def check_batch(self, batch_size: int, resuming: bool = False) -> None:
        # Here, before the model is built; the feed checks again, without the resume's hint.
        self.runtime.check_batch(batch_size, resuming)

    def resolve_precision(self, precision: str) -> str:
        if precision == "fp16":
            raise TinygenError("fp16 is not supported on XLA devices; use bf16")
        if precision == "fp32":
            return precision
        supported = self._xla.is_bf16_supported()
        if precision == "bf16" and not supported:
            raise TinygenError(f"this XLA device ({self.runtime.device_type}) has no bf16; "
                               f"use --precision fp32")
        if precision == "auto":
            # bf16 on TPUs and GPUs; fp32 on the CPU device, as on the plain CPU backend.
            return "bf16" if supported and self.runtime.device_type != "CPU" else "fp32"
        return precision

    def autocast(self) -> ContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast("xla", dtype=torch.bfloat16)

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.device)

    def place_model(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        # Moving to XLA makes a new Parameter per module, which unties shared weights
        # (GPT-2's wte / lm_head): tie them again, or the two train apart.
        if hasattr(model, "tie_weights"):
            model.tie_weights()
        return model

    def optimizer_step(self, optimizer: torch.optim.Optimizer, params: Iterable[torch.nn.Parameter],
                       grad_clip: float) -> None:
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(list(params), grad_clip)
        self._xla.optimizer_step(optimizer)  # xm.optimizer_step, then torch_xla.sync()

    def feed(self, sampler, make_batch, batch_size: int, accum: int):
        return self._xla.XlaFeed(self.runtime, sampler, make_batch, batch_size, accum)

    def when_ready(self, value: torch.Tensor, report: Callable[[float], None]) -> None:
        # The step's graph has been launched; the closure runs at the next sync, when
        # its result is device data, so reading it costs a copy and no new graph.
        self._reports.append((value, report))
        if len(self._reports) == 1:
            self._xla.add_step_closure(self._report)

    def _report(self) -> None:
        reports, self._reports = self._reports, []
        for value, report in reports:
            report(value.item())

    def flush(self) -> None:
        self._xla.sync()

    def close(self) -> None:
        # A failed run can leave a logged step's report waiting for a sync. In torch_xla's
        # queue it would run at the next sync in this process, a later run's (a resume
        # in a notebook or a test), and log this run's step after the resume had cut it
        # from metrics.jsonl; it would also keep this run's trainer, model and optimizer
        # state on the device until then. Dropped here, unread: reading it could hang or
        # fail on a device in trouble. The closure queued for them then finds none.
        # The gloo group between hosts (xla.join_hosts) stays: torch-xla's xla://
        # rendezvous keeps its store for the life of the process, and a later run here
        # joins the group that exists rather than rendezvous again on that store.
        self._reports.clear()

    def step_metrics(self) -> dict[str, Any]:
        return {"xla_compilations": self._xla.compilations()}

    def describe(self) -> str:
        return f"xla ({self.runtime.describe()})"

    def seed(self, seed: int) -> None:
        self._xla.set_rng_state(seed)

    @property
    def is_writer(self) -> bool:
        return self.runtime.hosts.writer

    @property
    def process(self) -> int:
        return self.runtime.hosts.index

    def write_once(self, what: str, write: Callable[[], T]) -> T:
        # Parameters and optimizer state are replicated, so process 0 copies them off
        # its own chips (no collective); the other hosts only wait.
        return self.runtime.hosts.once(what, write)

    def gather(self, value: Any) -> list[Any]:
        return self.runtime.hosts.gather(value)

    def for_sampling(self, model: torch.nn.Module) -> tuple[torch.nn.Module, Backend]:
        # Generating grows the sequence a token at a time: on XLA, a new graph per length.
        # A CPU copy samples at once and leaves the training graphs alone.
        with torch.device("meta"):
            copy = type(model)(model.config)
        copy.load_state_dict(self._xla.to_host(model.state_dict()), assign=True)
        copy.tie_weights()
        return copy, Backend()

    def rng_state(self) -> list[list[int]]:
        return [[self._xla.get_rng_state()]]

    def set_rng_state(self, state: list[list[int]]) -> None:
        if state:
            self._xla.set_rng_state(state[0][0])

    @property
    def checkpoint_location(self) -> torch.device:
        # Checkpoints hold CPU tensors; optimizer.load_state_dict moves them to the params.
        return torch.device("cpu")

    def save_model(self, model: torch.nn.Module, folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True,
                              state_dict=self._xla.to_host(model.state_dict(keep_vars=True)))

    def to_host(self, tree: Any) -> Any:
        return self._xla.to_host(tree)


def check_torch_xla() -> None:
    """Raise a one-line TinygenError unless a torch_xla that matches torch is importable.

    torch_xla is built against one torch release: with any other, importing it
    fails on missing symbols or crashes, so the versions are compared first.
    """
    install = (f"pip install {TORCH_XLA_PINS} (tools/xla_venv.sh builds a venv with them; "
               f"on a TPU VM add the [tpu] extra: torch-xla[tpu]=={TORCH_XLA_VERSION})")
    try:
        xla_version = importlib.metadata.version("torch-xla")
    except importlib.metadata.PackageNotFoundError:
        xla_version = None
    if xla_version is None and importlib.util.find_spec("torch_xla") is None:
        raise TinygenError(f"--device xla needs torch_xla: {install}")
    torch_version = torch.__version__.split("+")[0]
    if xla_version is not None and not _same_release(xla_version, torch_version):
        raise TinygenError(
            f"--device xla: torch-xla {xla_version} needs torch {xla_version.split('+')[0]}, "
            f"but torch {torch_version} is installed: {install}")
    try:
        import torch_xla  # noqa: F401
    except ImportError as exc:
        raise TinygenError(f"--device xla needs torch_xla, which failed to import "
                           f"({first_line(exc, 120)}): {install}") from None


def _same_release(a: str, b: str) -> bool:
    """torch-xla X.Y.* goes with torch X.Y.* (local tags like +cpu aside)."""
    return a.split("+")[0].split(".")[:2] == b.split("+")[0].split(".")[:2]


def select_backend(device: str = "auto", precision: str = "auto") -> Backend:
    """auto: cuda if visible, then xla (torch_xla installed, PJRT_DEVICE set), else cpu.

    Under torchrun (WORLD_SIZE > 1) cpu and cuda train data parallel, one GPU per process.
    """
    from .distributed import data_parallel_backend, torchrun_env

    if torchrun_env() is not None:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return data_parallel_backend(device, precision)
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif os.environ.get("PJRT_DEVICE") and importlib.util.find_spec("torch_xla") is not None:
            device = "xla"
        else:
            device = "cpu"
    backends = {"cpu": Backend, "cuda": CudaBackend, "xla": XlaBackend}
    if device not in backends:
        raise TinygenError(f"unknown device '{device}' (known: auto, {', '.join(backends)})")
    return backends[device](precision)
