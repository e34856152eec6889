"""Device backends: where tensors live, mixed precision, the optimizer step, device RNG.

The loop calls only these methods, so CPU, CUDA and XLA share one loop. A new
device is a subclass overriding what differs (see XlaBackend).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from typing import Any, ContextManager, Iterable

import torch

from tinygen.errors import TinygenError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Backend:
    """CPU: fp32 by default; bf16 autocast when asked (slower on most CPUs, so not the default)."""

    name = "cpu"

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

    def fork_rng(self) -> ContextManager:
        """Run something random (sample generation) without moving the training RNG."""
        return torch.random.fork_rng(devices=[])

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
    """TPUs (and other PJRT devices) through torch_xla.

    XLA traces ops lazily: `mark_step` after each optimizer step cuts the graph
    so every step compiles once and then replays.
    """

    name = "xla"

    def __init__(self, precision: str = "auto"):
        try:
            import torch_xla.core.xla_model as xm
        except ImportError:
            raise TinygenError(
                "--device xla needs torch_xla: pip install torch-xla (matching torch 2.13), "
                "and set PJRT_DEVICE=TPU"
            ) from None
        self._xm = xm
        self.precision = self.resolve_precision(precision)
        self.device = xm.xla_device()
        self.scaler = None

    def resolve_precision(self, precision: str) -> str:
        if precision == "fp16":
            raise TinygenError("fp16 is not supported on XLA devices; use bf16")
        return "bf16" if precision == "auto" else precision

    def autocast(self) -> ContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast("xla", dtype=torch.bfloat16)

    def optimizer_step(self, optimizer: torch.optim.Optimizer, params: Iterable[torch.nn.Parameter],
                       grad_clip: float) -> None:
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(list(params), grad_clip)
        self._xm.optimizer_step(optimizer)
        self._xm.mark_step()

    def rng_state(self) -> list[list[int]]:
        return [[int(self._xm.get_rng_state())]]

    def set_rng_state(self, state: list[list[int]]) -> None:
        if state:
            self._xm.set_rng_state(state[0][0])


def select_backend(device: str = "auto", precision: str = "auto") -> Backend:
    """auto: cuda if visible, then xla (torch_xla installed, PJRT_DEVICE set), else cpu."""
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
