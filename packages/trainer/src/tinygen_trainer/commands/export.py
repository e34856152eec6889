"""`tinygen-train export SRC OUT`: a transformers causal LM to a tinygen model directory."""

from __future__ import annotations

import argparse

HELP = ("Export a transformers causal LM (GPT-2, Llama, ...) to a tinygen model directory: "
        "ONNX with KV cache (float32 or float16, or int8 / int4 weights, optionally 8-bit KV buffers; "
        "a fused graph keeps its weights in model.onnx.data beside it: ship the whole folder) or "
        "TorchScript (for torch.jit.load in PyTorch; the tinygen runtime runs ONNX only), "
        "checked against PyTorch.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tinygen_trainer.export import DTYPES, FORMATS, GRAPHS, KV_CACHES, QUANTIZATIONS

    parser.add_argument("src", metavar="SRC",
                        help="transformers model directory (config.json, weights, tokenizer)")
    parser.add_argument("out", metavar="OUT",
                        help="model directory to write (an earlier export there is replaced)")
    # Choices are validated by ExportConfig, not argparse, so a bad value is one
    # TinygenError line like every other user error.
    parser.add_argument("--format", default="onnx", metavar="FORMAT",
                        help=f"model file format: {' or '.join(FORMATS)}")
    parser.add_argument("--quantize", default=None, metavar="TYPE",
                        help=f"quantize the weights: {', '.join(QUANTIZATIONS)} (ONNX float32 only; "
                             f"int4 on the fused graph)")
    parser.add_argument("--graph", default=None, metavar="GRAPH",
                        help=f"ONNX graph: {' or '.join(GRAPHS)} (default: fused for GPT-2 and Llama, "
                             f"whose KV cache it updates in place; optimum for the rest)")
    parser.add_argument("--kv-cache", default="float32", metavar="TYPE",
                        help=f"KV buffers: {' or '.join(KV_CACHES)} (fused graph; int8: a quarter "
                             f"of the memory, faster late in long texts, slower prompts)")
    parser.add_argument("--dtype", default="float32", metavar="TYPE",
                        help=f"float type of the graph: {' or '.join(DTYPES)} (fused graph; float16 "
                             f"for CUDA, whose fused attention runs only in it; slower on a CPU)")
    parser.add_argument("--verify", default=True, action=argparse.BooleanOptionalAction,
                        help="check the export against PyTorch over 32 greedy tokens: a float graph must give "
                             "the same tokens, a quantized one finite logits (its matches are printed)")


def run(args: argparse.Namespace) -> int:
    from tinygen_trainer.export import ExportConfig, run_export

    config = ExportConfig(src=args.src, out=args.out, format=args.format, quantize=args.quantize,
                          verify=args.verify, graph=args.graph, kv_cache=args.kv_cache,
                          dtype=args.dtype)
    run_export(config, echo=print)
    return 0
