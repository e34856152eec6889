"""ExportConfig: every export option, documented once, validated once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tinygen.errors import TinygenError

FORMATS = ("onnx", "torchscript")
QUANTIZATIONS = ("int8", "int4")
GRAPHS = ("fused", "optimum")
KV_CACHES = ("float32", "int8")
DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class ExportConfig:
    # A transformers causal-LM directory (config.json, weights, tokenizer files).
    src: Path
    # The tinygen model directory to write; replaced only once the export has succeeded.
    out: Path
    # "onnx" (what the runtime runs) or "torchscript" (a traced torch.jit module).
    format: str = "onnx"
    # None keeps float32 weights. "int8" (ONNX only): 8-bit weight-only MatMulNBits for fused
    # graphs (activations scaled per row and block), onnxruntime dynamic quantization
    # (export/quantize.py) for optimum's graph; export/pipeline.py picks.
    # "int4" is 4-bit weight-only MatMulNBits (fused graphs only; export/fused/quantize.py).
    quantize: str | None = None
    # Compare 32 greedy tokens of the exported model against PyTorch before writing OUT.
    verify: bool = True
    # The ONNX graph: "fused" (ours: in-place KV cache, last-position logits; GPT-2 and Llama),
    # "optimum" (optimum's text-generation-with-past) or None: fused where it exists, else optimum.
    graph: str | None = None
    # The KV buffers: "float32", or "int8" with a scale per channel calibrated on text the model
    # samples itself (fused graphs only; export/fused/kv_int8.py): a quarter of the bytes per
    # position, so long texts decode faster, but prompts prefill slower.
    kv_cache: str = "float32"
    # The graph's float type: "float32", or "float16" (fused graphs only; export/fused/float16.py)
    # for CUDA, whose fused attention runs only in float16; on a CPU it is slower than float32.
    dtype: str = "float32"

    def __post_init__(self) -> None:
        # Accept str paths from Python callers; frozen, so set through object.__setattr__.
        object.__setattr__(self, "src", Path(self.src))
        object.__setattr__(self, "out", Path(self.out))
        if self.format not in FORMATS:
            raise TinygenError(
                f"unknown format '{self.format}'; choose one of: {', '.join(FORMATS)}"
            )
        if self.quantize is not None and self.quantize not in QUANTIZATIONS:
            raise TinygenError(
                f"unknown quantization '{self.quantize}'; choose one of: {', '.join(QUANTIZATIONS)}"
            )
        if self.quantize and self.format != "onnx":
            raise TinygenError(f"--quantize {self.quantize} works only with --format onnx")
        if self.graph is not None and self.graph not in GRAPHS:
            raise TinygenError(f"unknown graph '{self.graph}'; choose one of: {', '.join(GRAPHS)}")
        if self.graph and self.format != "onnx":
            raise TinygenError(f"--graph {self.graph} works only with --format onnx")
        if self.kv_cache not in KV_CACHES:
            raise TinygenError(f"unknown KV cache '{self.kv_cache}'; choose one of: "
                               f"{', '.join(KV_CACHES)}")
        if self.kv_cache != "float32" and self.format != "onnx":
            raise TinygenError(f"--kv-cache {self.kv_cache} works only with --format onnx")
        if self.dtype not in DTYPES:
            raise TinygenError(f"unknown dtype '{self.dtype}'; choose one of: {', '.join(DTYPES)}")
        if self.dtype != "float32" and (self.quantize or self.kv_cache != "float32"):
            option = f"--quantize {self.quantize}" if self.quantize else f"--kv-cache {self.kv_cache}"
            raise TinygenError(f"--dtype {self.dtype} does not combine with {option}; "
                               f"drop one of them")
        if self.dtype != "float32" and self.format != "onnx":
            raise TinygenError(f"--dtype {self.dtype} works only with --format onnx")
        if not isinstance(self.verify, bool):
            raise TinygenError(f"verify must be true or false, got {self.verify!r}")
