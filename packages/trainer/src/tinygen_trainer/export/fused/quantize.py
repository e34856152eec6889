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
So GPT-2's int8 is onnxruntime's dynamic quantization and int4 is this module;
Llama's int8 is this module too (8-bit; pipeline.py says why). ACCURACY_LEVEL 4
(int8 activations, integer dot products) because the float path (level 0) is
several times slower on this CPU.

Zero points: 4-bit blocks keep them (asymmetric: 16 levels over the block's range,
not its largest magnitude), 8-bit blocks do without. An integer zero point shifts
the whole block by up to half a step, and with 256 levels that shared offset costs
more than the range it saves: SmolLM2-135M held-out perplexity (24 blocks x 256,
fp32 32.24) is 32.47 asymmetric and 32.26 symmetric at 8 bits, but 42.41
asymmetric and 46.47 symmetric at 4 bits (8 blocks, fp32 33.46); speed measured
the same either way.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..onnx_export import external_data_files, remove_onnx
from .tied_embedding import share_head_with_embedding

BLOCK_SIZE = 32
ACCURACY_LEVEL = 4  # int8 activations: integer kernels (see the module docstring)


def quantize_nbits(path: Path, bits: int = 4, block_size: int = BLOCK_SIZE,
                   accuracy_level: int = ACCURACY_LEVEL, tie_embedding: bool = True) -> None:
    """Replace the float32 graph at `path` with its `bits`-bit (4 or 8) weight-only version.

    tie_embedding: a tied token embedding reads the quantized head (tied_embedding.py)."""
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
    quantizer = MatMulNBitsQuantizer(onnx.load(str(path)), bits=bits, block_size=block_size,
                                     is_symmetric=bits == 8, accuracy_level=accuracy_level)
    logger = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    node_level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        quantizer.process()
    finally:
        logger.setLevel(node_level)
    model = quantizer.model.model
    if tie_embedding:
        share_head_with_embedding(model)
    remove_onnx(path)
    if large:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(path))
