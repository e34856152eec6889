"""Export a transformers causal LM to a tinygen model directory (ONNX, int8 ONNX or TorchScript).

    from tinygen_trainer.export import export_model
    export_model("my-gpt2", "my-gpt2-tinygen", quantize="int8")

Modules, one step each: `config` (ExportConfig), `source` (check SRC), `assets`
(tokenizer.json, replacements.json), `fused` (our own graph, in-place KV cache) /
`onnx_export` (optimum's graph) / `torchscript` (the model file), `quantize` (int8;
fused graphs: `fused.quantize`, and `fused.kv_int8` for 8-bit KV buffers), `contract`
(the manifest and the graph check), `verify` (greedy parity with PyTorch), `staging`
(atomic OUT), `pipeline` (the order of the steps); third-party errors become one line through
tinygen.errors.first_line.
"""

from .config import DTYPES, FORMATS, GRAPHS, KV_CACHES, QUANTIZATIONS, ExportConfig
from .pipeline import ExportResult, export_model, run_export
from .verify import VerifyReport

__all__ = ["DTYPES", "ExportConfig", "ExportResult", "FORMATS", "GRAPHS", "KV_CACHES", "QUANTIZATIONS",
           "VerifyReport", "export_model", "run_export"]
