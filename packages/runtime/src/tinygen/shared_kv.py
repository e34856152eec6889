"""A causal LM whose graph updates one KV buffer per layer in place (manifest kv_cache "shared").

The graph (written by `tinygen-train export --graph fused`, docs/model-format.md)
runs onnxruntime's GroupQueryAttention with past and present bound to the same
OrtValue of shape (batch, kv_heads, capacity, head_size): each step writes only
the new positions, so a step costs the same at position 1000 as at position 32
apart from attention itself, where a concat cache copies the whole past every step.

The decode loop (decoding.py) speaks in left-padded rows with an attention mask,
as optimum's graphs want. GroupQueryAttention wants right-padded rows and each
row's length (`seqlens_k`), so `forward` repacks: a row's new tokens move to the
front, and its length is counted from the mask. A decode step (`step`: one token
per row) needs no mask: every row is one token longer, so seqlens_k grows by one.
Rows never read one another's slots, so a row's text does not depend on what else
is in the batch; a row that slides past the window is prefilled again on its own and
copied into its slots (`restart_rows`), the other rows' slots untouched. On a GPU the
decode steps replay a recorded CUDA graph (cuda_graph.py).
"""

from __future__ import annotations

import mmap
import os
import threading

import numpy as np
import onnxruntime as ort

from .cuda_graph import MAX_GRAPHS, UNCAPTURED, DecodeGraph, run_options
from .errors import ModelFormatError, TinygenError
from .graph_limits import check_window_fits
from .manifest import Manifest
from .onnx_model import OnnxCausalLM, check_graph_fits, graph_dtype, restarted_mask, run_bound

# Names of the extra inputs, as the manifest's `inputs` dict gives them.
SEQLENS_K = "seqlens_k"
TOTAL_SEQUENCE_LENGTH = "total_sequence_length"


def lazy_zeros(shape: tuple[int, ...], dtype) -> np.ndarray:
    """A zero array whose memory is mapped only where it is written, in 4 KiB pages.

    A KV buffer holds the whole window but a text writes only its own positions.
    np.zeros maps zero pages lazily too, but numpy asks the kernel for transparent
    huge pages on large arrays, and then the first write to each head's slice maps
    2 MiB: SmolLM2-135M's buffers (377 MB per row at 8192 positions) were 65%
    resident after a 32-token prompt, 247 MB for 1.4 MB of keys and values. An
    anonymous mapping with huge pages declined keeps memory to what is written.
    """
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if os.name != "posix" or size == 0:
        return np.zeros(shape, dtype)
    memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)  # anonymous: zero until written
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        memory.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(memory, dtype=dtype).reshape(shape)  # the array keeps `memory` alive


class SharedKVCache(list):
    """The per-layer KV buffers (OrtValues, in Manifest.past_names() order) of one batch.

    It also owns the step's reusable parts: the IO binding, with every past/present
    pair bound once to the same buffer, and the logits array onnxruntime writes into.
    """

    binding: ort.IOBinding
    arrays: list[np.ndarray] | None  # on the CPU, the numpy arrays under the buffers (writable)
    logits: np.ndarray  # (batch, 1, vocab), overwritten by every forward with this cache
    last_logits: np.ndarray  # logits[:, 0, :]: the view a step returns
    inputs: dict  # input name -> (array, OrtValue over it) bound to the binding
    total: int  # total_sequence_length of the last run: the longest row's length
    graph: DecodeGraph | None = None  # leased on a GPU: its buffers are this cache's, steps replay

    def input_array(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        """The array bound as input `name`, to write a step's values into; bound anew only
        when its shape changes (a prompt, then single tokens), so a decode step on the CPU
        rebinds nothing (on a GPU, `_run` binds them again: bound is copied)."""
        held = self.inputs.get(name)
        if held is not None and held[0].shape == shape:
            return held[0]
        array = np.empty(shape, dtype)
        value = ort.OrtValue.ortvalue_from_numpy(array)  # on the CPU: over the array's memory
        self.binding.bind_ortvalue_input(name, value)
        self.inputs[name] = (array, value)
        return array


class SharedKVCausalLM(OnnxCausalLM):
    """Same interface as OnnxCausalLM; `empty_cache` allocates the buffers once per batch."""

    step_reads_mask = False  # the cache counts each row's length itself (seqlens_k)
    cuda_graphs = True  # on a GPU, decode steps replay a recorded graph (cuda_graph.py)

    def __init__(self, model_dir: str | os.PathLike, manifest: Manifest, device: str = "auto",
                 threads: int | None = None, cuda_graphs: bool = True):
        super().__init__(model_dir, manifest, device=device, threads=threads,
                         cuda_graphs=cuda_graphs)
        self.capacity = manifest.context_window
        # With graphs on, every run names its graph: prompts and restarts are not recorded.
        self._uncaptured = run_options(UNCAPTURED) if self.cuda_graphs else None
        self._graphs: dict[int, DecodeGraph] = {}  # batch size -> its graph's buffers
        # With graphs, one thread at a time: onnxruntime's recorded graphs are not safe to run
        # from two threads at once, and two caches must not lease one graph's buffers.
        self._serial = threading.Lock() if self.cuda_graphs else None

    def _check_graph(self, path) -> None:
        m = self.manifest
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        self._ids_name = m.inputs["input_ids"]
        self._seqlens_name = m.inputs.get(SEQLENS_K) or SEQLENS_K
        self._total_name = m.inputs.get(TOTAL_SEQUENCE_LENGTH) or TOTAL_SEQUENCE_LENGTH
        wanted_in = [m.inputs["input_ids"], self._seqlens_name, self._total_name, *m.past_names()]
        for name in wanted_in:
            if name not in inputs:
                raise ModelFormatError(f"{path}: graph has no input '{name}' that a shared-KV "
                                       f"model needs")
        for name in [m.outputs["logits"], *m.present_names()]:
            if name not in outputs:
                raise ModelFormatError(f"{path}: graph has no output '{name}' that the manifest "
                                       f"names")
        self.position_ids_name = m.inputs.get("position_ids")
        if self.position_ids_name not in inputs:
            self.position_ids_name = None  # rotary models derive positions from seqlens_k
        check_graph_fits(path, m, inputs, list(outputs.values()), fed=[*wanted_in, self.position_ids_name])
        past = inputs[m.past_names()[0]]
        heads, size = past.shape[1], past.shape[3]
        if (isinstance(heads, int) and heads != m.num_kv_heads) or \
                (isinstance(size, int) and size != m.head_size):
            raise ModelFormatError(f"{path}: KV cache is {heads} heads x {size}, manifest says "
                                   f"{m.num_kv_heads} x {m.head_size}")
        # The buffers are allocated context_window positions long (empty_cache): a graph
        # that fixes their length takes no other.
        capacity = past.shape[2]
        if isinstance(capacity, int) and capacity != m.context_window:
            raise ModelFormatError(f"{path}: the graph's KV buffers hold {capacity} positions, the "
                                   f"manifest's context_window is {m.context_window}; the manifest "
                                   f"does not fit the graph (set context_window to {capacity})")
        check_window_fits(path, m, self.position_ids_name)
        self.kv_dtype = graph_dtype(path, f"KV cache input '{past.name}'", past.type, int8=True)
        self.logits_dtype = graph_dtype(path, f"logits output '{m.outputs['logits']}'",
                                        outputs[m.outputs["logits"]].type)
        self._past_names = m.past_names()
        self._present_names = m.present_names()

    def empty_cache(self, batch: int, capture: bool = True) -> SharedKVCache:
        """Buffers for `batch` rows; on a GPU those of the batch size's decode graph when no
        other cache holds them (`capture=False`: never, for a cache only prefilled)."""
        if self._serial is None:
            return self._empty_cache(batch, capture)
        with self._serial:  # a graph found free is leased before another thread looks
            return self._empty_cache(batch, capture)

    def _empty_cache(self, batch: int, capture: bool) -> SharedKVCache:
        m = self.manifest
        shape = (batch, m.num_kv_heads, self.capacity, m.head_size)
        arrays = None
        graph = self._free_graph(batch, shape) if capture and self.cuda_graphs else None
        if self.device == "cpu":
            arrays = [lazy_zeros(shape, self.kv_dtype) for _ in self._past_names]
            buffers = [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays]  # over their memory
        elif graph is not None:
            buffers = graph.kv
        else:
            buffers = [ort.OrtValue.ortvalue_from_shape_and_type(shape, self.kv_dtype,
                                                                 self.device, 0)
                       for _ in self._past_names]
        cache = SharedKVCache(buffers)
        if graph is not None:
            graph.lease(cache)
            cache.graph = graph
        cache.arrays = arrays
        cache.logits = np.empty((batch, 1, m.vocab_size), dtype=self.logits_dtype)
        cache.last_logits = cache.logits[:, 0, :]
        cache.inputs = {}
        cache.total = 0
        cache.binding = self.session.io_binding()
        for past, present, value in zip(self._past_names, self._present_names, cache):
            cache.binding.bind_ortvalue_input(past, value)
            cache.binding.bind_ortvalue_output(present, value)  # the same buffer: updated in place
        cache.binding.bind_output(m.outputs["logits"], "cpu", 0, self.logits_dtype,
                                  cache.logits.shape, cache.logits.ctypes.data)
        return cache

    def _free_graph(self, batch: int, kv_shape: tuple[int, ...]) -> DecodeGraph | None:
        graph = self._graphs.get(batch)
        if graph is None:
            if len(self._graphs) == MAX_GRAPHS:
                return None
            m = self.manifest
            inputs = {self._ids_name: ((batch, 1), np.int64), self._seqlens_name: ((batch,), np.int32)}
            if self.position_ids_name:
                inputs[self.position_ids_name] = ((batch, 1), np.int64)
            graph = self._graphs[batch] = DecodeGraph(
                self.session, batch, list(zip(self._past_names, self._present_names)), kv_shape,
                self.kv_dtype, inputs, self._total_name, self.capacity, m.outputs["logits"],
                (batch, 1, m.vocab_size), self.logits_dtype)
        return None if graph.leased else graph

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                position_ids: np.ndarray, cache: SharedKVCache) -> tuple[np.ndarray, SharedKVCache]:
        """input_ids, position_ids (batch, new), left-padded; attention_mask (batch, past + new).

        Returns logits (batch, 1, vocab) at each row's last position, as float32, and
        the cache (the same buffers, now holding the new positions). The logits array
        belongs to the cache and is overwritten by its next forward.
        """
        batch, new = input_ids.shape
        lengths = attention_mask.sum(axis=1)  # each row's tokens, past and new
        if new == 1 and attention_mask[:, -1].all():  # a decode step: nothing to repack
            ids, positions = input_ids, position_ids
        else:
            mask = np.asarray(attention_mask, dtype=bool)
            fresh = mask[:, -new:]
            if new > 1 and batch > 1 and mask[:, :-new].any():
                raise TinygenError("a shared-KV model takes several new tokens per row only from "
                                   "an empty cache (a prompt) or at batch 1")
            ids, positions = _right_padded(input_ids, position_ids, fresh)
        if ids.shape[1] > self.capacity:
            raise TinygenError(f"{ids.shape[1]} new tokens do not fit the model's window of "
                               f"{self.capacity}")
        cache.input_array(self._ids_name, ids.shape, np.int64)[...] = ids
        if self.position_ids_name:
            cache.input_array(self.position_ids_name, ids.shape, np.int64)[...] = positions
        # A finished row keeps stepping (its tokens are ignored) and may run past the
        # buffer: it then rewrites the last slot instead of writing outside the buffer.
        seqlens = cache.input_array(self._seqlens_name, (batch,), np.int32)
        np.minimum(lengths, self.capacity, out=seqlens, casting="unsafe")
        seqlens -= 1
        cache.total = int(seqlens.max()) + 1
        cache.input_array(self._total_name, (), np.int32)[()] = cache.total
        self._run(cache)
        return cache.logits.astype(np.float32, copy=False), cache

    def step(self, tokens: np.ndarray, positions: list[int], attention_mask: np.ndarray | None,
             cache: SharedKVCache) -> tuple[np.ndarray, SharedKVCache]:
        """OnnxCausalLM.step without the mask: every row is one token longer than in the
        last run, so seqlens_k, still bound from it, grows by one. A handful of numpy calls
        where `forward` makes twenty: right after a run, with the CPU caches full of weights,
        each costs tens of microseconds (docs/benchmarks.md, "The decode step's own time")."""
        held = cache.inputs.get(self._seqlens_name)
        if held is None:
            raise TinygenError("a decode step needs a cache that a forward has filled")
        batch = len(tokens)
        ids = cache.input_array(self._ids_name, (batch, 1), np.int64)
        ids[:, 0] = tokens
        if self.position_ids_name:
            cache.input_array(self.position_ids_name, (batch, 1), np.int64)[:, 0] = positions
        seqlens = held[0]
        if cache.total < self.capacity:
            for row in range(batch):  # not `seqlens += 1`: a ufunc, cold, costs ~60 us here
                seqlens[row] += 1
            cache.total += 1
        else:  # a finished row is at the buffer's end: it rewrites its last slot (see forward)
            np.minimum(seqlens + 1, self.capacity - 1, out=seqlens)
        cache.input_array(self._total_name, (), np.int32)[()] = cache.total
        if cache.graph is not None:
            step = {self._ids_name: ids, self._seqlens_name: seqlens}
            if self.position_ids_name:
                step[self.position_ids_name] = cache.inputs[self.position_ids_name][0]
            with self._serial:
                logits = cache.graph.step(self.session, step).astype(np.float32)
            return logits, cache
        self._run(cache)
        logits = cache.last_logits
        return (logits if self.logits_dtype is np.float32 else logits.astype(np.float32)), cache

    def _run(self, cache: SharedKVCache) -> None:
        if self.device != "cpu":
            # A host array bound to an input the session wants on the GPU is copied there
            # when it is bound, not when the graph runs: bind the step's values again.
            for name, (_, value) in cache.inputs.items():
                cache.binding.bind_ortvalue_input(name, value)
            if self._serial is not None:
                with self._serial:
                    run_bound(self.session, cache.binding, self._uncaptured)
                return
        run_bound(self.session, cache.binding, self._uncaptured)

    def restart_rows(self, cache: SharedKVCache, mask: np.ndarray, rows: list[int],
                     input_ids: np.ndarray, new_mask: np.ndarray, position_ids: np.ndarray
                     ) -> tuple[np.ndarray, SharedKVCache, np.ndarray]:
        """OnnxCausalLM.restart_rows on the in-place buffers: the rows are prefilled in a
        cache of their own, then copied into their slots of the batch's buffers, and their
        lengths (seqlens_k) set; no other row's slots or length change.

        On the CPU the buffers are numpy arrays, written in place. Elsewhere (CUDA) they
        are device memory that Python cannot write a part of: each layer's buffer makes a
        round trip through the host (OrtValue.update_inplace keeps its address, which the
        binding holds), a copy of the whole batch's cache per call; slides are rare.
        """
        held = cache.inputs.get(self._seqlens_name)
        if held is None:
            raise TinygenError("rows can be restarted only in a cache that a forward has filled")
        fresh = self.empty_cache(len(rows), capture=False)
        logits, fresh = self.forward(input_ids, new_mask, position_ids, fresh)
        logits = logits[:, -1, :].copy()  # the fresh cache's buffer
        if cache.arrays is not None:
            for array, new in zip(cache.arrays, fresh.arrays):
                array[rows] = new  # the whole capacity: slots past the new tokens are zero again
        else:
            for value, new in zip(cache, fresh):
                whole = value.numpy()
                whole[rows] = new.numpy()
                value.update_inplace(whole)
        seqlens = held[0]
        seqlens[rows] = np.minimum(new_mask.sum(axis=1), self.capacity) - 1
        cache.total = int(seqlens.max()) + 1
        return logits, cache, restarted_mask(mask, rows, new_mask)[0]


def _right_padded(input_ids: np.ndarray, position_ids: np.ndarray,
                  fresh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's new tokens (`fresh`, bool) moved to the front in order, padding after."""
    if fresh.all():
        return input_ids, position_ids
    # A stable sort on "is padding" keeps each row's new tokens in order.
    order = np.argsort(~fresh, axis=1, kind="stable")[:, :fresh.sum(axis=1).max()]
    ids = np.take_along_axis(input_ids, order, axis=1)
    positions = np.take_along_axis(position_ids, order, axis=1)
    positions[np.take_along_axis(~fresh, order, axis=1)] = 0  # padding: any valid position
    return ids, positions
