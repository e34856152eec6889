"""int4 for fused graphs: each MatMul with a constant weight becomes MatMulNBits (weight-only).

onnxruntime's MatMulNBitsQuantizer stores each weight column in blocks of
BLOCK_SIZE values along K, one float scale and a 4-bit zero point per block, and
the MatMulNBits kernel reads the packed weights directly, so a decode step reads
~0.16x the float32 bytes; batch-1 decoding is bound by exactly those bytes. The LM
head is a MatMul too (graph.DecoderGraph.lm_head), so it is quantized like the
rest; the token embedding stays float32 (a Gather reads one column per token).

Measured on this project's CPU (AMD EPYC, AVX2, no VNNI; onnxruntime 1.31, 2 threads;
docs/benchmarks.md, "Fused graph"), GPT-2-124M shape, ms per decode step at batch 1 / 8:

    float32                                   18.1 / 27.5
    int4, block 32, int8 activations (ours)    4.3 / 15.3   perplexity +0.38%
    int4, block 128                            3.7 / 13.7   perplexity +0.78%
    int8 MatMulNBits, block 32                 6.9 / 22.6   perplexity -0.01%
    int8 dynamic (export/quantize.py)          5.8 / 11.7   perplexity +0.12%

(perplexity: a trained 4-layer GPT-2 on held-out text, tools/bench/perplexity.py.)
So int8 keeps onnxruntime's dynamic quantization, on fused graphs too, and int4 is
this module; ACCURACY_LEVEL 4 (int8 activations, integer dot products) because the
float path (level 0) is several times slower on this CPU.
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
                                     is_symmetric=False, accuracy_level=accuracy_level)
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
