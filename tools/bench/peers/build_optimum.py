"""optimum's models for the benchmark, built inside the optimum venv (its exporter and quantizer).

    python build_optimum.py export SRC OUT     # optimum-cli export onnx: text-generation-with-past
    python build_optimum.py int8 ONNX_DIR OUT  # ORTQuantizer: dynamic int8, AVX2 config, per tensor

OUT is written under a temporary name and renamed into place when complete.
"""

from __future__ import annotations

import argparse
import shutil
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


OPERATIONS = {"export": export, "int8": int8}


def main() -> None:
    # Plain argparse: this runs in the optimum venv, without tinygen (or tools/script_errors.py).
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("operation", choices=tuple(OPERATIONS),
                   help="export: SRC a Hugging Face model folder; int8: SRC optimum's ONNX export")
    p.add_argument("source", type=Path, metavar="SRC")
    p.add_argument("out", type=Path, metavar="OUT", help="the folder to write (must not exist)")
    args = p.parse_args()
    if not args.source.is_dir():
        p.error(f"{args.source}: no such folder")
    if args.out.exists():
        p.error(f"{args.out} exists; remove it or name another OUT")
    tmp = args.out.with_name(args.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    OPERATIONS[args.operation](args.source, tmp)
    tmp.rename(args.out)


if __name__ == "__main__":
    main()
