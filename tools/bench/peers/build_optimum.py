"""optimum's models for the benchmark, built inside the optimum venv (its exporter and quantizer).

    python build_optimum.py export SRC OUT     # optimum-cli export onnx: text-generation-with-past
    python build_optimum.py int8 ONNX_DIR OUT  # ORTQuantizer: dynamic int8, AVX2 config, per tensor

OUT is written under a temporary name and renamed into place when complete.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

KEEP = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
        "special_tokens_map.json", "vocab.json", "merges.txt", "chat_template.jinja")


def export(src: Path, out: Path) -> None:
    from optimum.exporters.onnx import main_export

    main_export(str(src), output=str(out), task="text-generation-with-past")
    for name in KEEP:  # the runtime side wants the tokenizer next to the graph
        if (src / name).is_file() and not (out / name).is_file():
            shutil.copy2(src / name, out / name)


def int8(onnx_dir: Path, out: Path) -> None:
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    quantizer = ORTQuantizer.from_pretrained(onnx_dir, file_name="model.onnx")
    config = AutoQuantizationConfig.avx2(is_static=False, per_channel=False)
    scratch = out.with_name(out.name + ".q")
    shutil.rmtree(scratch, ignore_errors=True)
    quantizer.quantize(save_dir=scratch, quantization_config=config)
    out.mkdir()
    shutil.move(scratch / "model_quantized.onnx", out / "model.onnx")
    shutil.rmtree(scratch)
    for name in KEEP:
        if (onnx_dir / name).is_file():
            shutil.copy2(onnx_dir / name, out / name)


def main() -> None:
    what, source, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    {"export": export, "int8": int8}[what](source, tmp)
    tmp.rename(out)


if __name__ == "__main__":
    main()
