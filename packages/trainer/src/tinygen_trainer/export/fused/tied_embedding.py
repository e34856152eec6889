"""After weight-only quantization, the tied token embedding reads the LM head's quantized matrix.

The fused graph ties the embedding to the LM head (graph.embed_tied gathers columns
of the head's (hidden, vocab) matrix). MatMulNBits quantizes the head but leaves that
Gather reading the float32 matrix, so the file would carry both: for SmolLM2's
49,152 x 576 that is 113 MB of float32 beside the quantized copy, for the tiny
model's 49,152 x 256, 50 MB. MatMulNBits stores B as (vocab, blocks, bytes), one
row per token, which is what onnxruntime's GatherBlockQuantized reads, so the
embedding gathers and dequantizes rows of those very bytes and the float32 matrix
goes. The embedding is then the quantized one, as in llama.cpp's tied models.
"""

from __future__ import annotations

from .graph import INPUT_IDS, LOGITS, MS

EMBED_GATHER, EMBED_TRANSPOSE = "/embed/Gather", "/embed/Transpose"


def share_head_with_embedding(model) -> bool:
    """Rewire a quantized fused graph (onnx.ModelProto, in place); False if it has no tied head."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    by_name = {n.name: n for n in graph.node}
    gather, transpose = by_name.get(EMBED_GATHER), by_name.get(EMBED_TRANSPOSE)
    head = next((n for n in graph.node if n.op_type == "MatMulNBits" and LOGITS in n.output), None)
    if gather is None or transpose is None or head is None:
        return False
    attrs = {a.name: helper.get_attribute_value(a) for a in head.attribute}
    n, k, bits, block = attrs["N"], attrs["K"], attrs["bits"], attrs["block_size"]
    if k % block:
        return False  # a padded last block: rows of B would not be rows of the embedding
    def reshaped(source: str, cols: int, name: str) -> tuple[str, onnx.NodeProto]:
        dims = f"{name}/shape"
        graph.initializer.append(numpy_helper.from_array(np.array([n, cols], dtype=np.int64), dims))
        return f"{name}/output_0", helper.make_node("Reshape", [source, dims], [f"{name}/output_0"],
                                                    name=name)

    blocks = k // block
    data, data_node = reshaped(head.input[1], -1, "/embed/data/Reshape")
    scales, scales_node = reshaped(head.input[2], blocks, "/embed/scales/Reshape")
    inputs, new_nodes = [data, INPUT_IDS, scales], [data_node, scales_node]
    if len(head.input) > 3 and head.input[3]:
        zero_points, zp_node = reshaped(head.input[3], -1, "/embed/zero_points/Reshape")
        inputs.append(zero_points)
        new_nodes.append(zp_node)
    new_nodes.append(helper.make_node(
        "GatherBlockQuantized", inputs, [transpose.output[0]], name="/embed/GatherBlockQuantized",
        domain=MS, bits=bits, block_size=block, gather_axis=0, quantize_axis=1))

    table = gather.input[0]
    at = list(graph.node).index(gather)
    for node in (gather, transpose):
        graph.node.remove(node)
    for offset, node in enumerate(new_nodes):
        graph.node.insert(at + offset, node)
    if not any(table in node.input for node in graph.node):
        kept = [t for t in graph.initializer if t.name != table]
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return True
