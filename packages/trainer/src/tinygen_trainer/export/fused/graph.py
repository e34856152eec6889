"""Building blocks of our fused decoder graphs, written node by node with `onnx.helper`.

One graph serves prefill and decode. Its contract (docs/model-format.md, kv_cache
"shared"):

    input_ids              (batch, sequence)                 int64, right-padded rows
    position_ids           (batch, sequence)                 int64 (learned positions only)
    seqlens_k              (batch,)                          int32: row's total length - 1
    total_sequence_length  ()                                int32: max over rows of total length
    past_key_values.{i}.key/value, present.{i}.key/value
                           (batch, kv_heads, capacity, head_size), the same buffer in and out
    logits                 (batch, 1, vocab)                 each row's last valid position

Attention is onnxruntime's GroupQueryAttention (com.microsoft) with past and present
bound to one buffer of `capacity` positions per layer: the new keys and values are
written in place at each row's length, so no step copies the cache. With
num_heads == kv_num_heads it is plain multi-head attention. The hidden state is
cut to each row's last position before the final norm and the LM head, so a
prefill of P tokens pays for the vocabulary projection once, not P times.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tinygen.errors import TinygenError

from ..onnx_export import write_onnx

OPSET = 17
MS = "com.microsoft"
# onnxruntime ops registered in the default domain that onnx itself does not define.
ORT_ONLY_OPS = ("SimplifiedLayerNormalization",)

INPUT_IDS = "input_ids"
POSITION_IDS = "position_ids"
SEQLENS_K = "seqlens_k"
TOTAL_SEQUENCE_LENGTH = "total_sequence_length"
LOGITS = "logits"
PAST = "past_key_values.{layer}.{kind}"
PRESENT = "present.{layer}.{kind}"


# onnxruntime's GroupQueryAttention, the fused graph's attention, takes only head sizes that
# are a multiple of 8, and of 16 where it also turns the keys (rotary: Llama's graph).
GQA_HEAD_SIZE_MULTIPLE = 8
GQA_ROTARY_HEAD_SIZE_MULTIPLE = 16


class NoFusedGraph(TinygenError):
    """The model's configuration has no fused graph (an activation or rope we do not build):
    without an explicit --graph, export takes the optimum graph instead. `reason` is the
    message without its hint."""

    def __init__(self, reason: str):
        super().__init__(f"{reason}; export with --graph optimum")
        self.reason = reason


class GraphBuilder:
    """Collects nodes, weights and graph inputs/outputs; `op` returns output names."""

    def __init__(self, name: str):
        import onnx

        self.onnx = onnx
        self.name = name
        self.nodes: list = []
        self.initializers: dict[str, object] = {}
        self.inputs: list = []
        self.outputs: list = []
        self.value_info: list = []

    # -- values ------------------------------------------------------------------

    def input(self, name: str, elem: int, shape: list) -> str:
        self.inputs.append(self.onnx.helper.make_tensor_value_info(name, elem, shape))
        return name

    def output(self, name: str, elem: int, shape: list) -> None:
        self.outputs.append(self.onnx.helper.make_tensor_value_info(name, elem, shape))

    def weight(self, name: str, array: np.ndarray) -> str:
        """A float32 weight; `array` may be a torch tensor's numpy view (copied here)."""
        if name in self.initializers:
            raise ValueError(f"duplicate initializer {name}")
        array = np.ascontiguousarray(array, dtype=np.float32)
        self.initializers[name] = self.onnx.numpy_helper.from_array(array, name)
        return name

    def const(self, values, dtype=np.int64) -> str:
        """A small constant, shared by every node that uses the same values."""
        array = np.asarray(values, dtype=dtype)
        name = f"/const/{array.dtype}/{'x'.join(map(str, array.shape))}/" + \
            "_".join(str(v) for v in array.ravel().tolist())
        if name not in self.initializers:
            self.initializers[name] = self.onnx.numpy_helper.from_array(array, name)
        return name

    # -- nodes -------------------------------------------------------------------

    def op(self, op_type: str, inputs: list[str], name: str, outputs: int | list[str] = 1,
           domain: str = "", **attrs):
        """Add a node named `name`; returns its output name (or a list when outputs > 1).

        `outputs` is a count (names are derived from `name`) or explicit names; an
        empty string in `inputs` skips an optional input.
        """
        if isinstance(outputs, int):
            outputs = [f"{name}/output_{i}" for i in range(outputs)]
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, outputs, name=name,
                                                     domain=domain or None, **attrs))
        if domain == MS or op_type in ORT_ONLY_OPS:
            # onnx's shape inference does not know contrib ops; typing their outputs lets
            # tools that rely on it (onnxruntime's quantizers) see through them.
            typed = self.onnx.helper.make_tensor_value_info
            self.value_info += [typed(o, self.onnx.TensorProto.FLOAT, None)
                                for o in outputs if o and not o.startswith("present.")]
        return outputs[0] if len(outputs) == 1 else outputs

    # -- the model ---------------------------------------------------------------

    def model(self):
        helper = self.onnx.helper
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs,
                                  list(self.initializers.values()), value_info=self.value_info)
        model = helper.make_model(graph, producer_name="tinygen-train",
                                  opset_imports=[helper.make_opsetid("", OPSET),
                                                 helper.make_opsetid(MS, 1)])
        model.ir_version = 10  # onnxruntime 1.20+ reads IR 10; onnx writes newer by default
        return model

    def save(self, path: Path) -> None:
        """Write the graph, its weights in one `<name>.data` beside it, whatever their size:
        onnxruntime loads them from there without a protobuf copy, about twice as fast, and
        the load's peak memory is ~180 MB lower at SmolLM2-135M fp32 (docs/benchmarks.md,
        "Weights in a file of their own"). Past 2 GB protobuf could not hold them anyway."""
        write_onnx(self.model(), path, external=True)


class DecoderGraph(GraphBuilder):
    """A decoder-only LM over a shared KV buffer: the pieces every architecture uses."""

    def __init__(self, name: str, state: dict[str, np.ndarray], num_layers: int, num_heads: int,
                 kv_heads: int, head_size: int, vocab_size: int, position_ids: bool):
        """state: the model's weights by their transformers names (see `param`)."""
        super().__init__(name)
        TP = self.onnx.TensorProto
        self.state = state
        self.num_heads, self.kv_heads, self.head_size = num_heads, kv_heads, head_size
        self.input(INPUT_IDS, TP.INT64, ["batch", "sequence"])
        if position_ids:
            self.input(POSITION_IDS, TP.INT64, ["batch", "sequence"])
        self.input(SEQLENS_K, TP.INT32, ["batch"])
        self.input(TOTAL_SEQUENCE_LENGTH, TP.INT32, [])
        kv_shape = ["batch", kv_heads, "capacity", head_size]
        for layer in range(num_layers):
            for kind in ("key", "value"):
                self.input(PAST.format(layer=layer, kind=kind), TP.FLOAT, kv_shape)
        self.output(LOGITS, TP.FLOAT, ["batch", 1, vocab_size])
        for layer in range(num_layers):
            for kind in ("key", "value"):
                self.output(PRESENT.format(layer=layer, kind=kind), TP.FLOAT, kv_shape)

    def param(self, name: str, array: np.ndarray | None = None) -> str | None:
        """The weight `name` of the model (or `array`, stored under that name); None if absent."""
        if array is None:
            if name not in self.state:
                return None
            array = self.state[name]
        return self.weight(name, array)

    def embed_tied(self, table_t: str) -> str:
        """Token embeddings from the LM head's (hidden, vocab) matrix: one copy for both.

        Gather along the vocabulary axis gives (hidden, batch, sequence); a
        transpose makes it (batch, sequence, hidden). The strided reads are one
        column per token, negligible next to the LM head that reads the whole matrix.
        """
        columns = self.op("Gather", [table_t, INPUT_IDS], "/embed/Gather", axis=1)
        return self.op("Transpose", [columns], "/embed/Transpose", perm=[1, 2, 0])

    def linear(self, x: str, weight: str, bias: str | None, name: str) -> str:
        """x @ weight (+ bias); weight is (in, out), as MatMul and the int4/int8 quantizer want."""
        y = self.op("MatMul", [x, weight], f"{name}/MatMul")
        return self.op("Add", [y, bias], f"{name}/Add") if bias else y

    def attention(self, qkv: str, layer: int, rotary: tuple[str, str] | None = None,
                  scale: float | None = None) -> str:
        """GroupQueryAttention on packed QKV (batch, seq, (heads + 2 kv_heads) * head_size).

        rotary: (cos_cache, sin_cache) of shape (capacity, rotary_dim / 2), applied
        inside the op at positions it derives from seqlens_k (right-padded rows).
        """
        inputs = [qkv, "", "", PAST.format(layer=layer, kind="key"),
                  PAST.format(layer=layer, kind="value"), SEQLENS_K, TOTAL_SEQUENCE_LENGTH]
        attrs = {"num_heads": self.num_heads, "kv_num_heads": self.kv_heads}
        if rotary:
            inputs += list(rotary)
            attrs.update(do_rotary=1, rotary_interleaved=0)
        if scale is not None:
            attrs["scale"] = float(scale)
        name = f"/layers.{layer}/attn/GroupQueryAttention"
        outputs = [f"{name}/output_0", PRESENT.format(layer=layer, kind="key"),
                   PRESENT.format(layer=layer, kind="value")]
        return self.op("GroupQueryAttention", inputs, name, outputs=outputs, domain=MS, **attrs)[0]

    def last_positions(self, *hidden: str) -> list[str]:
        """Each row's last valid position of (batch, sequence, hidden) -> (batch, 1, hidden).

        Rows are right-padded, so the last new token of row b sits at index
        min(seqlens_k[b], sequence - 1): a first prompt (no past) ends at
        seqlens_k[b]; a one-token step, or batch 1 with a past, ends at sequence - 1.
        """
        # The row length comes from the ids themselves (a sum of ones), not from Shape:
        # onnxruntime puts Shape and what it feeds on the CPU, and under CUDA a node off the
        # GPU adds a copy each step and rules out CUDA graphs.
        TP = self.onnx.TensorProto
        ids = self.op("Cast", [INPUT_IDS], "/last/Cast_ids", to=TP.INT32)
        ones = self.op("Add", [self.op("Mul", [ids, self.const([0], np.int32)], "/last/Mul"),
                               self.const([1], np.int32)], "/last/Add")
        seq = self.op("ReduceSum", [ones, self.const([1])], "/last/ReduceSum", keepdims=1)
        last_col = self.op("Sub", [seq, self.const([1], np.int32)], "/last/Sub")  # (batch, 1)
        lens = self.op("Unsqueeze", [SEQLENS_K, self.const([1])], "/last/Unsqueeze")
        index = self.op("Cast", [self.op("Min", [lens, last_col], "/last/Min")], "/last/Cast",
                        to=TP.INT64)  # (batch, 1)
        picked = []
        for i, h in enumerate(hidden):
            # (batch, hidden)
            rows = self.op("GatherND", [h, index], f"/last/GatherND_{i}", batch_dims=1)
            picked.append(self.op("Unsqueeze", [rows, self.const([1])], f"/last/Unsqueeze_{i}"))
        return picked

    def lm_head(self, hidden: str, weight_t: str) -> None:
        """(batch, 1, hidden) @ (hidden, vocab) -> the graph output `logits`."""
        self.op("MatMul", [hidden, weight_t], "/lm_head/MatMul", outputs=[LOGITS])
