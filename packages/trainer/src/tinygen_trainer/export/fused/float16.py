"""The fused float32 graph as float16: half the bytes, and what CUDA's fused ops want.

onnxruntime's CUDA GroupQueryAttention runs only in float16 (or bfloat16): a float32
fused graph would send every attention node back to the CPU. Every float tensor
of the graph becomes float16: weights, the KV buffers (inputs and outputs), the
logits and the typed intermediate values. The runtime turns the logits back into
float32 for sampling.

On a CPU the float16 graph runs too (the tests check it there), but slower than
float32: x86 has no fast float16 matrix kernels in onnxruntime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..onnx_export import external_data_files, remove_onnx, write_onnx

# The largest finite float16: weights beyond it (none in a sane model) are clipped, not inf.
FLOAT16_MAX = float(np.finfo(np.float16).max)


def convert_to_float16(path: Path) -> None:
    """Rewrite the float32 graph at `path` in float16, in place."""
    import onnx
    from onnx import TensorProto, numpy_helper

    large = bool(external_data_files(path))
    model = onnx.load(str(path))
    graph = model.graph
    for i, tensor in enumerate(graph.initializer):
        if tensor.data_type == TensorProto.FLOAT:
            array = np.clip(numpy_helper.to_array(tensor), -FLOAT16_MAX, FLOAT16_MAX)
            graph.initializer[i].CopyFrom(numpy_helper.from_array(array.astype(np.float16),
                                                                  tensor.name))
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.FLOAT16
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16
    remove_onnx(path)
    write_onnx(model, path, external=large)  # half of a graph past 2 GB may still be past it
