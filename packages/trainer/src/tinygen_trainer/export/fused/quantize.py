"""Weight-only quantization of fused graphs: each MatMul with a constant weight becomes MatMulNBits.

onnxruntime's MatMulNBitsQuantizer stores each weight column in blocks of
BLOCK_SIZE values along K with one float scale per block (and, asymmetric, a zero
point), and the MatMulNBits kernel reads the packed weights directly, so a decode
step reads ~0.16x (4-bit) or ~0.29x (8-bit) the float32 bytes; batch-1 decoding is
bound by exactly those bytes. The LM head is a MatMul too (graph.DecoderGraph.lm_head),
so it is quantized like the rest, and a tied token embedding then gathers the head's
packed rows (tied_embedding.py).

Measured on this project's CPU (AMD EPYC, AVX2, no VNNI; onnxruntime 1.31, 2 threads;
docs/benchmarks.md, "Fused graph"), GPT-2-124M shape, ms per decode step at batch 1 / 8:

    float32                                   18.1 / 27.5
    int4, block 32, int8 activations (ours)    4.3 / 15.3   perplexity +0.38%
    int4, block 128                            3.7 / 13.7   perplexity +0.78%
    int8 MatMulNBits, block 32                 6.9 / 22.6   perplexity -0.01%
    int8 dynamic (export/quantize.py)          5.8 / 11.7   perplexity +0.12%

(perplexity: a trained 4-layer GPT-2 on held-out text, tools/bench/perplexity.py.)
Dynamic int8 takes one activation scale over the whole batch, though, so a text made in a
batch would not be the one made alone; and on a later, slower instance of the same machine
(docs/benchmarks.md, "GPT-2's int8 in blocks of 256", 2026-11-23) 8-bit blocks of 256 beat
it at batch 1, interleaved: fp32 19.44, dynamic 8.09, blocks of 64 7.70, blocks of 256 7.09
ms (2.74x fp32), at 0.68x dynamic's batch-8 throughput (still 1.15x fp32's) and a slower
prompt (512 tokens: 1.08 s against dynamic's 0.64 and fp32's 0.79). Held-out
perplexity of a 4-layer GPT-2 trained here for 200 steps (fp32 200.41): blocks of 256
+0.005%, dynamic +0.009%. So every fused int8 is this module, GPT-2's in blocks of up to 256
(INT8_BLOCK_SIZE). ACCURACY_LEVEL 4 (int8 activations, integer dot products) because the
float path (level 0) is several times slower on this CPU.

Symmetric blocks, no zero points, at both widths: the kernels are faster without them
(SmolLM2-135M int4 decode step 20.5 -> 18.0 ms, the same as onnxruntime-genai's own
symmetric int4, measured interleaved under load), and an integer zero point shifts a
whole block by up to half a step, which at 8 bits costs more than the range it saves.
Round-to-nearest symmetric int4 loses some accuracy, so each 4-bit block's scale is then
refit for the least squared error (refit_int4_scales). SmolLM2-135M held-out perplexity,
24 blocks x 256 tokens, fp32 32.24:

    int8 asymmetric 32.47, symmetric 32.26, symmetric in blocks of 64: 32.28
    int4 asymmetric 42.72, symmetric 43.28, symmetric with refit scales 42.67;
         blocks of 64 (refit) 50.98
    onnxruntime-genai's builder (symmetric, blocks of 32): int8 32.29, int4 43.27

(the 4-layer GPT-2 above, fp32 111.96: int4 asymmetric 112.16, refit symmetric 112.49).
So 8-bit weights go in blocks of 64: the same perplexity as blocks of 32 but a float scale
per 64 bytes instead of per 32, and a SmolLM2 decode step 8.39 -> 7.84 ms (onnxruntime-genai's
8-bit graph 8.39, the three interleaved). Not 256 for Llama: with its MLP down projection
(K 1536) in blocks of 256 SmolLM2 gives 32.41 against 32.28, as its activations' outlier
channels then share a block's scale with more of their neighbours.
4-bit weights stay in blocks of 32: at 64 a block's one scale fits 4-bit codes much worse.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..onnx_export import external_data_files, remove_onnx, write_onnx
from .tied_embedding import share_head_with_embedding

BLOCK_SIZE = {4: 32, 8: 64}  # most weights per scale, by bit width (see the module docstring)
# GPT-2's 8-bit weights take blocks of up to 256: as accurate there, and faster (module docstring).
INT8_BLOCK_SIZE = {"gpt2": 256}
ACCURACY_LEVEL = 4  # int8 activations: integer kernels (see the module docstring)


def quantize_nbits(path: Path, bits: int = 4, block_size: int | None = None,
                   accuracy_level: int = ACCURACY_LEVEL, tie_embedding: bool = True) -> None:
    """Replace the float32 graph at `path` with its `bits`-bit (4 or 8) weight-only version.

    block_size: the most weights per scale (default BLOCK_SIZE[bits]); each weight takes the
    largest power of two up to it that divides its input size (block_sizes()). tie_embedding: a
    tied token embedding reads the quantized head (tied_embedding.py)."""
    import onnx

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        # Its import calls logging.basicConfig(level=INFO), which would leave the whole
        # process logging at INFO; and it logs every node it quantizes.
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    finally:
        root.handlers[:], root.level = handlers, level
    large = bool(external_data_files(path))
    model = onnx.load(str(path))
    blocks = block_sizes(model, block_size or BLOCK_SIZE[bits])
    # The quantizer rewrites the model in place: keep the float weights the refit starts from.
    float_weights = _matmul_weights(model) if bits == 4 else {}
    logger = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    node_level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        for block in sorted(set(blocks.values())):  # one pass per block size, the others left out
            others = [name for name, b in blocks.items() if b != block]
            quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block, is_symmetric=True,
                                             accuracy_level=accuracy_level, nodes_to_exclude=others)
            quantizer.process()
            model = quantizer.model.model
    finally:
        logger.setLevel(node_level)
    if bits == 4:
        refit_int4_scales(model, float_weights)
    if tie_embedding:
        share_head_with_embedding(model)
    remove_onnx(path)
    write_onnx(model, path, external=large)


def block_sizes(model, largest: int) -> dict[str, int]:
    """Node name -> weights per scale, for every MatMul whose weight (K, N) is a constant.

    The largest power of two up to `largest` that divides K: a padded last block would keep a
    tied embedding from reading the head's rows, and costs a block of zeros. A K that 16 does
    not divide gets 32 (padded). Unnamed or same-named nodes cannot be told apart, so then every
    weight gets the smallest size any would get."""
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    sizes = {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and len(shapes.get(node.input[1], ())) == 2:
            k = shapes[node.input[1]][0]
            block = largest
            while block > 16 and k % block:
                block //= 2
            sizes[node.name] = block if k % block == 0 else 32
    names = [n.name for n in model.graph.node if n.op_type == "MatMul"]
    if "" in sizes or len(names) != len(set(names)):
        smallest = min(sizes.values(), default=largest)
        sizes = {name: smallest for name in sizes}
    return sizes


def _matmul_weights(model) -> dict:
    """name -> float array (K, N) of every MatMul weight that is a constant."""
    from onnx import numpy_helper

    names = {node.input[1] for node in model.graph.node if node.op_type == "MatMul"}
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer
            if t.name in names and len(t.dims) == 2}


# Candidate divisors for a block's scale: its largest-magnitude weight maps to code d (the
# sign picks which end of [-8, 7]). 8 is round-to-nearest; smaller |d| clip that weight.
_DIVISORS = [d / 4 for d in range(-36, -25)] + [d / 4 for d in range(26, 37)]


def refit_int4_scales(model, float_weights: dict) -> int:
    """Give every symmetric 4-bit MatMulNBits block the scale with the least squared error.

    MatMulNBitsQuantizer's round-to-nearest maps each block's largest magnitude to -8 and
    rounds the rest; a slightly smaller scale, clipping that one weight, often fits the
    other 31 better. Each block tries _DIVISORS and keeps the scale whose codes
    reconstruct it best. `model` (quantized) is changed in place; `float_weights` maps each
    MatMul weight's name to the float array it was made from. Returns the number of weights
    refit.
    """
    import numpy as np
    from onnx import numpy_helper

    tensors = {t.name: t for t in model.graph.initializer}
    done = 0
    for node in model.graph.node:
        if node.op_type != "MatMulNBits" or (len(node.input) > 3 and node.input[3]):
            continue  # not 4-bit symmetric (zero points): leave it as quantized
        packed, scales = node.input[1], node.input[2]
        source = float_weights.get(packed.removesuffix("_Q4"))
        if not packed.endswith("_Q4") or source is None or packed not in tensors:
            continue
        weight = source.astype(np.float32)  # (K, N)
        k, n = weight.shape
        block_size = next(a.i for a in node.attribute if a.name == "block_size")
        if k % block_size:
            continue  # the quantizer padded K: its layout is not plain blocks
        codes = np.empty((n, k // block_size, block_size // 2), np.uint8)
        best = np.empty((n, k // block_size), np.float32)
        for lo in range(0, n, 4096):  # rows at a time: bounded temporaries for the LM head
            blocks = weight[:, lo:lo + 4096].T.reshape(-1, k // block_size, block_size)
            q, best[lo:lo + 4096] = _best_fit(blocks)
            codes[lo:lo + 4096] = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
        tensors[packed].CopyFrom(numpy_helper.from_array(codes, packed))
        tensors[scales].CopyFrom(numpy_helper.from_array(best, scales))
        done += 1
    return done


def _best_fit(blocks):
    """blocks (rows, n_blocks, block) -> codes 0..15 (uint8, zero point 8) and scales."""
    import numpy as np

    index = np.abs(blocks).argmax(axis=-1)[..., None]
    peak = np.take_along_axis(blocks, index, axis=-1)[..., 0]
    peak = np.where(peak == 0, 1.0, peak)  # an all-zero block: any scale gives zeros
    best_err = np.full(peak.shape, np.inf, np.float32)
    best_scale = peak / -8.0
    for d in _DIVISORS:
        scale = peak / d
        q = np.clip(np.rint(blocks / scale[..., None]), -8, 7)
        err = np.square(blocks - q * scale[..., None]).sum(axis=-1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_scale = np.where(better, scale, best_scale)
    q = np.clip(np.rint(blocks / best_scale[..., None]), -8, 7) + 8
    return q.astype(np.uint8), best_scale.astype(np.float32)
