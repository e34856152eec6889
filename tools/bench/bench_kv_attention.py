"""What a long KV cache costs onnxruntime's GroupQueryAttention, by the buffers' type.

    .venv/bin/python tools/bench/bench_kv_attention.py                 # GPT-2-124M shape
    .venv/bin/python tools/bench/bench_kv_attention.py --heads 9 --kv-heads 3 --layers 30

Times one decode step through `--layers` GroupQueryAttention nodes alone (no weights),
their past and present bound to one buffer each as the runtime binds them, at two
positions, for float32, int8 and 4-bit buffers, with a scale per channel or one per
tensor. The step's cost added between the positions is what the cache costs: the
bytes it reads, and the kernel's work per position. Prints a table; the numbers
behind docs/benchmarks.md's "4-bit and per-tensor KV buffers".
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/
from script_errors import ArgumentParser, run_main  # noqa: E402

# bits -> (ONNX type of the buffers, numpy type, codes per byte, largest code)
KINDS = {32: (TensorProto.FLOAT, np.float32, 1, None),
         8: (TensorProto.INT8, np.int8, 1, 127),
         4: (TensorProto.UINT8, np.uint8, 2, 7)}


def build(bits: int, scales: str, args) -> tuple[ort.InferenceSession, ort.IOBinding, np.ndarray,
                                                 np.ndarray, dict]:
    onnx_type, dtype, per_byte, top = KINDS[bits]
    heads, kv_heads, head, capacity = args.heads, args.kv_heads, args.head_size, args.capacity
    width = head // per_byte
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1, (heads if n == "q" else kv_heads) * head])
              for n in "qkv"]
    inputs += [helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [1]),
               helper.make_tensor_value_info("total", TensorProto.INT32, [])]
    nodes, outputs, weights = [], [], []
    for layer in range(args.layers):
        past = [f"past_key_{layer}", f"past_value_{layer}"]
        inputs += [helper.make_tensor_value_info(n, onnx_type, [1, kv_heads, capacity, width]) for n in past]
        extra, attrs = [], {}
        if top is not None:  # quantized buffers: the scales are inputs 12 and 13
            size = kv_heads * head if scales == "channel" else 1
            names = [f"k_scale_{layer}", f"v_scale_{layer}"]
            weights += [numpy_helper.from_array(np.full(size, 1.0 / top, np.float32), n) for n in names]
            extra = [""] * 5 + names
            kind = "PER_CHANNEL" if scales == "channel" else "PER_TENSOR"
            attrs = dict(k_quant_type=kind, v_quant_type=kind, kv_cache_bit_width=bits)
        query = "q" if layer == 0 else f"out_{layer - 1}"
        nodes.append(helper.make_node(
            "GroupQueryAttention", [query, "k", "v", *past, "seqlens_k", "total", *extra],
            [f"out_{layer}", f"present_key_{layer}", f"present_value_{layer}"],
            domain="com.microsoft", num_heads=heads, kv_num_heads=kv_heads, **attrs))
        outputs += [helper.make_tensor_value_info(f"present_{n}_{layer}", onnx_type, None) for n in ("key", "value")]
    outputs.append(helper.make_tensor_value_info(f"out_{args.layers - 1}", TensorProto.FLOAT, None))
    model = helper.make_model(helper.make_graph(nodes, "attention", inputs, outputs, weights),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    binding, rng = session.io_binding(), np.random.default_rng(0)
    for name in "qkv":
        binding.bind_cpu_input(name, rng.uniform(-1, 1, (1, 1, (heads if name == "q" else kv_heads) * head))
                               .astype(np.float32))
    seqlens, total = np.zeros(1, np.int32), np.zeros((), np.int32)
    binding.bind_cpu_input("seqlens_k", seqlens)
    binding.bind_cpu_input("total", total)
    buffers = {}  # (kind, layer) -> the array under the bound buffer
    for layer in range(args.layers):
        for kind in ("key", "value"):
            shape = (1, kv_heads, capacity, width)
            data = rng.uniform(-1, 1, shape) if top is None else rng.integers(0, 100, shape)
            buffers[kind, layer] = data = data.astype(dtype)
            buffer = ort.OrtValue.ortvalue_from_numpy(data)
            binding.bind_ortvalue_input(f"past_{kind}_{layer}", buffer)
            binding.bind_ortvalue_output(f"present_{kind}_{layer}", buffer)  # in place
    binding.bind_output(f"out_{args.layers - 1}")
    return session, binding, seqlens, total, buffers


MATMUL = (32, "MatMul form")  # the standard-op attention's row in the table


def grown_capacity(position: int) -> int:
    """Slots a buffer that grows in steps of 64 holds when it takes `position`."""
    return -(-(position + 1) // 64) * 64


class MatMulAttention:
    """Decode attention as TensorScatter, MatMul, Softmax, MatMul over float32 buffers."""

    def __init__(self, args):
        heads, kv_heads, head = args.heads, args.kv_heads, args.head_size
        self.args = args
        group = heads // kv_heads
        value_info = helper.make_tensor_value_info
        inputs = [value_info(n, TensorProto.FLOAT, [1, 1, (heads if n == "q" else kv_heads) * head])
                  for n in "qkv"]
        inputs += [value_info("position", TensorProto.INT64, [1]),
                   value_info("mask", TensorProto.FLOAT, [1, 1, 1, "capacity"])]
        shapes = [("q_shape", [1, kv_heads, group, head]), ("k_shape", [1, kv_heads, head, 1]),
                  ("v_shape", [1, kv_heads, 1, head]), ("out_shape", [1, 1, heads * head])]
        weights = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in shapes]
        weights.append(numpy_helper.from_array(np.array(head ** -0.5, np.float32), "scale"))
        nodes = [helper.make_node("Reshape", ["k", "k_shape"], ["k_new"]),
                 helper.make_node("Reshape", ["v", "v_shape"], ["v_new"])]
        outputs = []
        for layer in range(args.layers):
            keys, values = f"past_key_{layer}", f"past_value_{layer}"
            inputs += [value_info(keys, TensorProto.FLOAT, [1, kv_heads, head, "capacity"]),
                       value_info(values, TensorProto.FLOAT, [1, kv_heads, "capacity", head])]
            query = "q" if layer == 0 else f"out_{layer - 1}"
            n = lambda name: f"{name}_{layer}"  # noqa: E731
            nodes += [
                helper.make_node("TensorScatter", [keys, "k_new", "position"], [n("present_key")], axis=-1),
                helper.make_node("TensorScatter", [values, "v_new", "position"], [n("present_value")],
                                 axis=-2),
                helper.make_node("Reshape", [query, "q_shape"], [n("q")]),
                helper.make_node("Mul", [n("q"), "scale"], [n("q_scaled")]),
                helper.make_node("MatMul", [n("q_scaled"), n("present_key")], [n("scores")]),
                helper.make_node("Add", [n("scores"), "mask"], [n("masked")]),
                helper.make_node("Softmax", [n("masked")], [n("weights")], axis=-1),
                helper.make_node("MatMul", [n("weights"), n("present_value")], [n("heads")]),
                helper.make_node("Reshape", [n("heads"), "out_shape"], [n("out")])]
            outputs += [value_info(n(f"present_{kind}"), TensorProto.FLOAT, None) for kind in ("key", "value")]
        outputs.append(value_info(f"out_{args.layers - 1}", TensorProto.FLOAT, None))
        model = helper.make_model(helper.make_graph(nodes, "attention", inputs, outputs, weights),
                                  opset_imports=[helper.make_opsetid("", 24)])
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        # Unfused, the scale stays a Mul of the query (an export folds it into the query's
        # projection): fused into the MatMul as alpha != 1, MLAS packs every key instead of
        # running its one-row kernel, three times slower here.
        self.session = ort.InferenceSession(model.SerializeToString(), options,
                                            providers=["CPUExecutionProvider"],
                                            disabled_optimizers=["MatMulScaleFusion"])
        rng = np.random.default_rng(0)
        self.new = {name: rng.uniform(-1, 1, (1, 1, (heads if name == "q" else kv_heads) * head))
                    .astype(np.float32) for name in "qkv"}
        self.bindings: dict[int, ort.IOBinding] = {}
        self.keep: list = []  # the arrays under the bound OrtValues

    def binding(self, position: int, keys: list[np.ndarray] | None = None,
                values: list[np.ndarray] | None = None) -> ort.IOBinding:
        """Buffers of position + 1 rounded up to 64 slots, random or the given ones
        (keys (kv_heads, head, capacity), values (kv_heads, capacity, head) per layer)."""
        if keys is None and position in self.bindings:
            return self.bindings[position]
        a = self.args
        capacity = grown_capacity(position)
        bound, rng = self.session.io_binding(), np.random.default_rng(position)
        mask = np.zeros((1, 1, 1, capacity), np.float32)
        mask[..., position + 1:] = -np.inf
        where = np.array([position], np.int64)
        arrays = [mask, where, *self.new.values()]
        bound.bind_cpu_input("mask", mask)
        bound.bind_cpu_input("position", where)
        for name, array in self.new.items():
            bound.bind_cpu_input(name, array)
        for layer in range(a.layers):
            for kind, shape in (("key", (1, a.kv_heads, a.head_size, capacity)),
                                ("value", (1, a.kv_heads, capacity, a.head_size))):
                given = keys if kind == "key" else values
                data = (rng.uniform(-1, 1, shape) if given is None else given[layer][None])
                data = np.ascontiguousarray(data, np.float32)
                buffer = ort.OrtValue.ortvalue_from_numpy(data)
                bound.bind_ortvalue_input(f"past_{kind}_{layer}", buffer)
                bound.bind_ortvalue_output(f"present_{kind}_{layer}", buffer)  # in place
                arrays += [data, buffer]
        bound.bind_output(f"out_{a.layers - 1}")
        self.keep.append(arrays)
        if keys is None:
            self.bindings[position] = bound
        return bound

    def difference(self, engine, position: int) -> float:
        """Largest difference from the float32 GroupQueryAttention engine's output at
        `position`, over the same keys, values and new tokens."""
        session, binding, seqlens, total, buffers = engine
        for name, array in self.new.items():
            binding.bind_cpu_input(name, array)
        capacity = grown_capacity(position)
        keys = [buffers["key", layer][0, :, :capacity].transpose(0, 2, 1)
                for layer in range(self.args.layers)]
        values = [buffers["value", layer][0, :, :capacity] for layer in range(self.args.layers)]
        ours = self.binding(position, keys, values)  # copies, before the runs write `position`
        seqlens[0], total[()] = position, position + 1
        session.run_with_iobinding(binding)
        self.session.run_with_iobinding(ours)
        expected, got = binding.get_outputs()[-1].numpy(), ours.get_outputs()[-1].numpy()
        return float(np.abs(expected - got).max())


def step_ms(engine, position: int, steps: int) -> float:
    if isinstance(engine, MatMulAttention):
        session, binding = engine.session, engine.binding(position)
    else:
        session, binding, seqlens, total, _ = engine
        seqlens[0], total[()] = position, position + 1
    session.run_with_iobinding(binding)
    start = time.perf_counter()
    for _ in range(steps):
        session.run_with_iobinding(binding)
    return (time.perf_counter() - start) / steps * 1e3


def main() -> None:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=12, help="GroupQueryAttention nodes a step runs")
    p.add_argument("--heads", type=int, default=12, help="query heads")
    p.add_argument("--kv-heads", type=int, default=12, help="key and value heads")
    p.add_argument("--head-size", type=int, default=64, help="channels per head")
    p.add_argument("--capacity", type=int, default=1024, help="positions each buffer holds")
    p.add_argument("--positions", type=int, nargs=2, default=(32, 1000), metavar=("NEAR", "FAR"),
                   help="the two positions a step is timed at (default: 32 1000)")
    p.add_argument("--rounds", type=int, default=5, help="the kinds take turns; medians are shown")
    p.add_argument("--steps", type=int, default=40, help="decode steps timed per round")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    args = p.parse_args()
    for name in ("layers", "heads", "kv_heads", "head_size", "capacity", "rounds", "steps",
                 "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.heads % args.kv_heads:
        p.error(f"--heads ({args.heads}) must be a multiple of --kv-heads ({args.kv_heads})")
    if args.head_size % 8:
        p.error(f"--head-size must be a multiple of 8 (GroupQueryAttention's kernels), "
                f"got {args.head_size}")
    if not all(0 <= position < args.capacity for position in args.positions):
        p.error(f"--positions must be between 0 and --capacity - 1 ({args.capacity - 1}), "
                f"got {' '.join(map(str, args.positions))}")
    kinds = [(32, "-"), (8, "channel"), (4, "channel"), (8, "tensor"), (4, "tensor")]
    engines = {kind: build(*kind, args) for kind in kinds}
    matmul = engines[MATMUL] = MatMulAttention(args)
    kinds.append(MATMUL)
    times: dict = {}
    for _ in range(args.rounds):  # interleaved, so a slow spell hits every kind alike
        for kind in kinds:
            for position in args.positions:
                times.setdefault((kind, position), []).append(step_ms(engines[kind], position, args.steps))
    near, far = args.positions
    print(f"{args.layers} GroupQueryAttention layers, {args.heads} heads ({args.kv_heads} KV) of "
          f"{args.head_size}, {args.threads} threads; ms a decode step, median of {args.rounds} rounds\n")
    print(f"| KV buffers | scales | at {near} | at {far} | added |")
    print("|---|---|---:|---:|---:|")
    for bits, scales in kinds:
        a, b = (statistics.median(times[((bits, scales), pos)]) for pos in args.positions)
        print(f"| {'float32' if bits == 32 else f'{bits}-bit'} | {scales} | {a:.2f} | {b:.2f} | {b - a:.2f} |")
    difference = max(matmul.difference(engines[32, "-"], position) for position in args.positions)
    print(f"\nMatMul form against GroupQueryAttention (float32): largest difference {difference:.1e}")


if __name__ == "__main__":
    run_main(main)
