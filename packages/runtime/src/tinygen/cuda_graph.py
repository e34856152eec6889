"""CUDA graphs for the decode step: one recorded launch replays a step's hundred kernels.

On a GPU a batch-1 step of a small model is launch-bound: onnxruntime's run takes 1.1-1.8 ms
on an H100 where the weights' bytes take 0.08 ms. With `enable_cuda_graph` onnxruntime
records a run once and replays it, and a replay reads and writes the very device addresses
of the recording. So a graph belongs to one set of fixed buffers: the step's inputs (ids,
positions, lengths), its logits and the KV buffers. A `DecodeGraph` owns those for one
batch size; a cache leases it while it lives, and the next cache of that size reuses the
buffers and the graph. A cache that finds its size leased gets buffers of its own and
runs uncaptured, so two live caches never share memory. The buffers stay with the model
once made (onnxruntime cannot drop a recorded graph), so a model records at most
MAX_GRAPHS batch sizes, the first it decodes at; other sizes run uncaptured. (A server's
static batches come in every size up to its limit: buffers for all of them would hold
that many batches' KV memory for good.)

GroupQueryAttention sizes flash-decoding's work from the host's total_sequence_length,
which a replay cannot change: a captured step is given the buffers' capacity there, and
each row's own length (seqlens_k, on the device) still bounds its attention. Measured
on an H100 (docs/benchmarks.md, 06:16 UTC): the texts of uncaptured steps, 1.78x faster
at batch 1, 1.80x at batch 8, 1.05x at batch 32.
"""

from __future__ import annotations

import weakref

import numpy as np
import onnxruntime as ort

from .onnx_model import run_bound

UNCAPTURED = "-1"  # gpu_graph_id of a run onnxruntime must neither record nor replay
MAX_GRAPHS = 4  # batch sizes a model records (each keeps a batch's KV buffers for good)


def run_options(graph_id: str) -> ort.RunOptions:
    options = ort.RunOptions()
    options.add_run_config_entry("gpu_graph_id", graph_id)
    return options


class DecodeGraph:
    """The fixed device buffers of one batch size's decode step, and its recorded graph."""

    def __init__(self, session: ort.InferenceSession, batch: int, kv_names: list[tuple[str, str]],
                 kv_shape: tuple[int, ...], kv_dtype, inputs: dict[str, tuple[tuple, type]],
                 total_name: str, capacity: int, logits_name: str, logits_shape: tuple[int, ...],
                 logits_dtype):
        """kv_names: (past, present) pairs; inputs: name -> (shape, dtype) of the per-step inputs."""
        def on_gpu(shape, dtype):
            return ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, "cuda", 0)

        self.kv = [on_gpu(kv_shape, kv_dtype) for _ in kv_names]
        self.inputs = {name: on_gpu(shape, dtype) for name, (shape, dtype) in inputs.items()}
        self.logits = on_gpu(logits_shape, logits_dtype)
        self._total = np.array(capacity, np.int32)  # host memory, where the op reads it
        self._total_value = ort.OrtValue.ortvalue_from_numpy(self._total)
        self.binding = session.io_binding()
        for (past, present), value in zip(kv_names, self.kv):
            self.binding.bind_ortvalue_input(past, value)
            self.binding.bind_ortvalue_output(present, value)
        for name, value in self.inputs.items():
            self.binding.bind_ortvalue_input(name, value)
        self.binding.bind_ortvalue_input(total_name, self._total_value)
        self.binding.bind_ortvalue_output(logits_name, self.logits)
        self.options = run_options(str(batch))  # one graph per batch size: ids from 1 up
        self.leased = False

    def lease(self, owner: object) -> None:
        """Lent to `owner` (a cache) until it is garbage collected."""
        self.leased = True
        weakref.finalize(owner, self._release)

    def _release(self) -> None:
        self.leased = False

    def step(self, session: ort.InferenceSession, host_inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Copy the step's inputs into the fixed buffers, replay; the logits (batch, vocab)."""
        for name, array in host_inputs.items():
            self.inputs[name].update_inplace(array)
        run_bound(session, self.binding, self.options)
        return self.logits.numpy()[:, 0, :]
