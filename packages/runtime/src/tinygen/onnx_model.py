"""One exported causal LM run through onnxruntime, with its KV cache kept inside onnxruntime.

`forward` binds inputs and outputs with IO binding: each step's `present.*`
outputs are OrtValues that become the next step's `past_key_values.*` inputs
as they are, so the cache never round-trips through numpy (and stays on the GPU
under the CUDA execution provider). Only the logits come back to numpy.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from . import heap, hugepages
from .errors import ModelFormatError, TinygenError, first_line
from .graph_limits import check_window_fits
from .manifest import Manifest
from .weights_files import check_weights_files

DEVICES = ("auto", "cpu", "cuda")
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
              "tensor(int8)": np.int8,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32}

KVCache = list  # list[ort.OrtValue], ordered as Manifest.past_names()


def check_device_name(device: str) -> None:
    if device not in DEVICES:
        raise TinygenError(f"unknown device '{device}'; choose one of: {', '.join(DEVICES)}")


def resolve_device(device: str, manifest: Manifest | None = None) -> str:
    """'auto' -> 'cuda' when onnxruntime-gpu can run here and the model can run on it, else 'cpu'."""
    check_device_name(device)
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if device == "cuda" and not has_cuda:
        raise TinygenError("device 'cuda' needs onnxruntime-gpu: pip install onnxruntime-gpu")
    # onnxruntime's CUDA GroupQueryAttention (the fused graph's attention) has only float16
    # and bfloat16 kernels: a float32 one runs on the CPU, away from the GPU buffers it should
    # update in place, and a text made in a batch is no longer the text made alone (seen on
    # an H100, tests/runtime/test_cuda.py).
    cpu_only = manifest is not None and manifest.kv_cache == "shared" and \
        manifest.dtype == "float32"
    if device == "cuda" and cpu_only:
        raise TinygenError("this model's fused graph is float32, whose attention onnxruntime runs "
                           "only on the CPU: export it with --dtype float16 for CUDA, or use "
                           "device=\"cpu\"")
    if device == "auto":
        return "cuda" if has_cuda and not cpu_only else "cpu"
    return device


def load_causal_lm(model_dir: str | os.PathLike, manifest: Manifest, device: str = "auto",
                   threads: int | None = None, cuda_graphs: bool = True) -> "OnnxCausalLM":
    """The session wrapper that fits the graph's KV-cache layout (manifest.kv_cache)."""
    if manifest.model_file.endswith(".pt"):  # `tinygen-train export --format torchscript`
        raise ModelFormatError(f"{Path(model_dir) / manifest.model_file}: a TorchScript module, for "
                               f"torch.jit.load in PyTorch; the runtime runs ONNX: export with --format onnx")
    if manifest.kv_cache == "shared":
        from .shared_kv import SharedKVCausalLM

        return SharedKVCausalLM(model_dir, manifest, device=device, threads=threads,
                                cuda_graphs=cuda_graphs)
    return OnnxCausalLM(model_dir, manifest, device=device, threads=threads, cuda_graphs=cuda_graphs)


class OnnxCausalLM:
    step_reads_mask = True  # `step` needs the attention mask (a concat cache's graph reads it)
    cuda_graphs = False  # record decode steps as CUDA graphs (SharedKVCausalLM, cuda_graph.py)

    def __init__(self, model_dir: str | os.PathLike, manifest: Manifest, device: str = "auto",
                 threads: int | None = None, cuda_graphs: bool = True):
        self.manifest = manifest
        self.device = resolve_device(device, manifest)
        # Asked for, on a GPU, and a class that can record (a failed recording turns it off).
        self.cuda_graphs = cuda_graphs and type(self).cuda_graphs and self.device == "cuda"
        path = Path(model_dir) / manifest.model_file
        check_weights_files(path)  # a folder copied without model.onnx.data: our error, not ORT's
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        before = hugepages.anonymous_regions() if self.device == "cpu" and hugepages.enabled() \
            else None
        try:
            self.session = self._open_session(path, options)
        except Exception as exc:  # onnxruntime raises several unrelated types for bad files
            raise ModelFormatError(f"{path}: not a loadable ONNX model ({first_line(exc)}); copy the "
                                   f"model folder again or export it again") from None
        if before is not None:  # the weights onnxruntime just allocated: huge pages (hugepages.py)
            hugepages.advise_new_memory(before)
        # After the huge pages: trimming first leaves holes that keep spans from collapsing.
        heap.release_free_heap()  # the original weights the load repacked and freed (heap.py)
        self._check_graph(path)

    def _open_session(self, path: Path, options: ort.SessionOptions) -> ort.InferenceSession:
        if self.device != "cuda":
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        if self.cuda_graphs:
            try:
                cuda = ("CUDAExecutionProvider", {"enable_cuda_graph": "1"})
                return ort.InferenceSession(str(path), options,
                                            providers=[cuda, "CPUExecutionProvider"])
            except Exception:  # a graph onnxruntime cannot record (a node it keeps on the CPU)
                self.cuda_graphs = False
        return ort.InferenceSession(str(path), options,
                                    providers=["CUDAExecutionProvider", "CPUExecutionProvider"])

    def _check_graph(self, path: Path) -> None:
        """The manifest is a contract: every name it promises must be in the graph."""
        m = self.manifest
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if m.inputs["attention_mask"] is None:  # a shared-KV manifest's, edited to "concat"
            raise ModelFormatError(f"{path}: the manifest's kv_cache is 'concat', whose graph reads "
                                   f"an attention mask, but it names no attention_mask input; a "
                                   f"graph from `export --graph fused` wants kv_cache 'shared'")
        wanted_in = [m.inputs["input_ids"], m.inputs["attention_mask"], *m.past_names()]
        wanted_out = [m.outputs["logits"], *m.present_names()]
        for name in wanted_in:
            if name not in inputs:
                raise ModelFormatError(f"{path}: graph has no input '{name}' that the manifest names")
        for name in wanted_out:
            if name not in outputs:
                raise ModelFormatError(f"{path}: graph has no output '{name}' that the manifest names")
        self.position_ids_name = m.inputs.get("position_ids")
        if self.position_ids_name not in inputs:
            self.position_ids_name = None  # some exports compute positions inside the graph
        check_graph_fits(path, m, inputs, self.session.get_outputs(), fed=[*wanted_in, self.position_ids_name])
        check_window_fits(path, m, self.position_ids_name)
        past = inputs[m.past_names()[0]]
        heads, size = past.shape[1], past.shape[3]
        if (isinstance(heads, int) and heads != m.num_kv_heads) or \
                (isinstance(size, int) and size != m.head_size):
            raise ModelFormatError(
                f"{path}: KV cache is {heads} heads x {size}, manifest says "
                f"{m.num_kv_heads} x {m.head_size}"
            )
        self.kv_dtype = graph_dtype(path, f"KV cache input '{past.name}'", past.type, int8=True)
        logits = next(o for o in self.session.get_outputs() if o.name == m.outputs["logits"])
        self.logits_dtype = graph_dtype(path, f"logits output '{logits.name}'", logits.type)
        self.mask_dtype = _ORT_TYPES.get(inputs[m.inputs["attention_mask"]].type, np.int64)
        self._past_names = m.past_names()
        self._present_names = m.present_names()

    def empty_cache(self, batch: int) -> KVCache:
        m = self.manifest
        empty = np.zeros((batch, m.num_kv_heads, 0, m.head_size), dtype=self.kv_dtype)
        return [ort.OrtValue.ortvalue_from_numpy(empty) for _ in self._past_names]

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                position_ids: np.ndarray, cache: KVCache) -> tuple[np.ndarray, KVCache]:
        """input_ids, position_ids (batch, new); attention_mask (batch, past + new).

        Returns logits (batch, new, vocab) as float32 numpy and the grown cache.
        """
        m = self.manifest
        binding = self.session.io_binding()
        binding.bind_cpu_input(m.inputs["input_ids"], np.ascontiguousarray(input_ids, np.int64))
        binding.bind_cpu_input(m.inputs["attention_mask"],
                               np.ascontiguousarray(attention_mask, self.mask_dtype))
        if self.position_ids_name:
            binding.bind_cpu_input(self.position_ids_name, np.ascontiguousarray(position_ids, np.int64))
        for name, value in zip(self._past_names, cache):
            binding.bind_ortvalue_input(name, value)
        # onnxruntime writes the logits straight into this array: no copy out.
        logits = np.empty((*input_ids.shape, m.vocab_size), dtype=self.logits_dtype)
        binding.bind_output(m.outputs["logits"], "cpu", 0, self.logits_dtype, logits.shape,
                            logits.ctypes.data)
        for name in self._present_names:
            binding.bind_output(name, self.device)
        run_bound(self.session, binding)
        present = binding.get_outputs()[1:]
        return logits.astype(np.float32, copy=False), present

    def step(self, tokens: np.ndarray, positions: list[int], attention_mask: np.ndarray | None,
             cache: KVCache) -> tuple[np.ndarray, KVCache]:
        """A decode step: one new token per row, tokens (batch,) at `positions`, after a
        forward with this cache. attention_mask: (batch, past + 1), or None where
        step_reads_mask is False. Returns logits (batch, vocab) as float32 and the cache."""
        logits, cache = self.forward(tokens[:, None], attention_mask,
                                     np.array(positions, np.int64)[:, None], cache)
        return logits[:, -1, :], cache

    def restart_rows(self, cache: KVCache, mask: np.ndarray, rows: list[int], input_ids: np.ndarray,
                     new_mask: np.ndarray, position_ids: np.ndarray
                     ) -> tuple[np.ndarray, KVCache, np.ndarray]:
        """Prefill `input_ids` (left-padded, one row for each of `rows`) on their own, and put
        their cache in place of those rows of the batch's; every other row's cache is kept as
        it is, so what those rows compute next does not change (sliding rows one at a time).

        cache, mask (batch, width): the batch's cache and attention mask as they stand.
        Returns the new rows' last logits (len(rows), vocab) as float32, the batch's cache
        and its mask. Here (a concat cache) rows are left-padded to a common width, so the
        cache is rebuilt through numpy: one pass over it per call.
        """
        logits, fresh = self.forward(input_ids, new_mask, position_ids,
                                     self.empty_cache(len(input_ids)))
        mask, added, start = restarted_mask(mask, rows, new_mask)
        arrays = []
        for old, new in zip(cache, fresh):
            old = old.numpy()
            joined = np.zeros((old.shape[0], old.shape[1], added + old.shape[2], old.shape[3]),
                              old.dtype)
            joined[:, :, added:] = old
            joined[rows, :, joined.shape[2] - new_mask.shape[1]:] = new.numpy()
            arrays.append(np.ascontiguousarray(joined[:, :, start:]))
        cache = [ort.OrtValue.ortvalue_from_numpy(a, self.device, 0) for a in arrays]
        return logits[:, -1, :], cache, mask


def run_bound(session: ort.InferenceSession, binding, options=None) -> None:
    """session.run_with_iobinding, a failure said in one line: a graph onnxruntime loads but
    cannot run (a kernel's rule the export broke, a device out of memory) raised its own error,
    a traceback in the CLI."""
    try:
        session.run_with_iobinding(binding, options)
    except Exception as exc:  # onnxruntime's Fail, InvalidArgument, RuntimeException...
        raise ModelFormatError(f"onnxruntime could not run the model ({first_line(exc)}); if "
                               f"its export is broken, export it again") from None


def check_graph_fits(path: Path, m: Manifest, inputs: dict, outputs: list, fed: list) -> None:
    """The other half of the contract: the graph asks for nothing the manifest does not name
    (a manifest with too few layers would leave past inputs unfed), and its logits are
    the manifest's vocabulary wide. Either would otherwise fail at the first run."""
    unfed = [name for name in inputs if name not in fed]
    if unfed:
        raise ModelFormatError(f"{path}: graph input '{unfed[0]}' is not one the manifest names "
                               f"(num_layers {m.num_layers}, inputs); the manifest does not fit the graph")
    logits = next(o for o in outputs if o.name == m.outputs["logits"])
    width = logits.shape[-1] if logits.shape else None
    if isinstance(width, int) and width != m.vocab_size:
        raise ModelFormatError(f"{path}: the graph's logits are {width} wide, the manifest's "
                               f"vocab_size is {m.vocab_size}; the manifest does not fit the graph")


def graph_dtype(path: Path, what: str, ort_type: str, int8: bool = False):
    """The numpy type to hold a KV buffer or the logits in (`int8`: KV buffers may be int8). A
    type numpy has no match for (bfloat16) would be held as float32, which onnxruntime refuses
    only at the first run."""
    held = ("tensor(float)", "tensor(float16)", *(("tensor(int8)",) if int8 else ()))
    if ort_type not in held:
        raise ModelFormatError(f"{path}: the graph's {what} is {ort_type}, a type tinygen does not "
                               f"run (float32, float16{', int8' if int8 else ''}); export it as "
                               f"float32 or float16")
    return _ORT_TYPES[ort_type]


def restarted_mask(mask: np.ndarray, rows: list[int], new_mask: np.ndarray
                   ) -> tuple[np.ndarray, int, int]:
    """The batch's attention mask (batch, width) with `rows` replaced by `new_mask`
    (len(rows), new width), both left-padded to a common width, and the leading columns no
    row uses dropped. Returns (mask, columns added on the left, first column kept)."""
    added = max(0, new_mask.shape[1] - mask.shape[1])
    joined = np.zeros((mask.shape[0], added + mask.shape[1]), mask.dtype)
    joined[:, added:] = mask
    joined[rows] = 0
    joined[rows, joined.shape[1] - new_mask.shape[1]:] = new_mask
    used = joined.any(axis=0)
    start = int(used.argmax()) if used.any() else joined.shape[1] - 1
    return np.ascontiguousarray(joined[:, start:]), added, start
