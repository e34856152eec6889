"""The benchmark models: GPT-2-124M-shaped, random weights, built here and cached.

Nothing comes from a model hub. Speed does not depend on the weights' values or
on which strings the tokenizer holds, only on the shapes, so both are synthetic:

    work_dir/gpt2-124m/source/   transformers checkpoint + tokenizer (torch engine)
    work_dir/gpt2-124m/onnx/     optimum export with KV cache (tinygen, optimum)
    work_dir/gpt2-124m/onnx-int8/  the export with int8 dynamic quantization (tinygen)
    work_dir/gpt2-124m/fused[-int8|-int4|-fp16]/  `tinygen-train export --graph fused` (tinygen)

Each directory is built once; a `.complete` marker written last means a build
that was interrupted half-way is redone rather than trusted. A fused build's marker
holds a digest of the exporter's recipe (export_recipe()), so a changed quantizer
rebuilds it instead of timing the old graph.
"""

from __future__ import annotations

import shutil
from pathlib import Path

VOCAB_SIZE = 50257  # GPT-2: 256 byte symbols + 50000 merges + <|endoftext|>
EOS = "<|endoftext|>"
_DONE = ".complete"


def is_built(path: Path, recipe: str = "") -> bool:
    """Whether `path` holds a finished build of `recipe` (tools/teacher/smollm2.py's exports too)."""
    marker = path / _DONE
    return marker.is_file() and marker.read_text() == recipe


def mark_built(path: Path, recipe: str = "") -> None:
    """Written last: `path` is a finished build of `recipe`."""
    (path / _DONE).write_text(recipe)


def export_recipe() -> str:
    """sha256 of the exporter's modules that decide a fused graph's nodes and weights."""
    import hashlib

    import tinygen_trainer.export as export

    root = Path(export.__file__).parent
    digest = hashlib.sha256()
    for name in ("pipeline.py", "quantize.py", "fused/quantize.py", "fused/kv_int8.py",
                 "fused/float16.py", "fused/graph.py", "fused/gpt2.py", "fused/llama.py",
                 "fused/tied_embedding.py"):
        digest.update((root / name).read_bytes())
    return digest.hexdigest()


def _fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def build_tokenizer(path: Path) -> Path:
    """A valid byte-level BPE tokenizer.json with exactly VOCAB_SIZE entries.

    Shaped like GPT-2's: the 256 byte symbols (ids 0..255), then 50000 merges of
    two byte symbols (synthetic: pairs in a fixed order, not learned from text),
    then <|endoftext|> as id 50256. Every id decodes to bytes, so the runtime's
    streaming decoder works on whatever random ids the model generates.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # 256 one-char byte symbols
    vocab = {symbol: i for i, symbol in enumerate(alphabet)}
    merges = []
    n_merges = VOCAB_SIZE - len(alphabet) - 1
    for a in alphabet:
        for b in alphabet:
            if len(merges) == n_merges:
                break
            merges.append((a, b))
            vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(EOS, special=True)])
    size = tok.get_vocab_size(with_added_tokens=True)
    if size != VOCAB_SIZE or tok.token_to_id(EOS) != VOCAB_SIZE - 1:
        raise RuntimeError(f"synthetic tokenizer has {size} entries, expected {VOCAB_SIZE}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def build_source(path: Path, seed: int = 0) -> Path:
    """GPT2LMHeadModel with GPT2Config defaults (12 x 768, 12 heads, 1024 positions), random init."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    if is_built(path):
        return path
    _fresh(path)
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=VOCAB_SIZE, bos_token_id=VOCAB_SIZE - 1,
                        eos_token_id=VOCAB_SIZE - 1)
    GPT2LMHeadModel(config).eval().save_pretrained(path)
    tok_file = build_tokenizer(path / "tokenizer.json")
    PreTrainedTokenizerFast(tokenizer_file=str(tok_file), bos_token=EOS, eos_token=EOS) \
        .save_pretrained(path)
    mark_built(path)
    return path


def build_onnx(source: Path, path: Path) -> Path:
    """What `optimum-cli export onnx --task text-generation-with-past` writes."""
    from optimum.exporters.onnx import main_export

    if is_built(path):
        return path
    _fresh(path)
    main_export(str(source), output=str(path), task="text-generation-with-past")
    if not (path / "tokenizer.json").is_file():  # the runtime decodes ids with it
        shutil.copy2(source / "tokenizer.json", path / "tokenizer.json")
    mark_built(path)
    return path


def build_int8(onnx_dir: Path, path: Path) -> Path:
    """The export with weights quantized to int8 (onnxruntime dynamic quantization)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if is_built(path):
        return path
    _fresh(path)
    quantize_dynamic(onnx_dir / "model.onnx", path / "model.onnx", weight_type=QuantType.QInt8)
    for name in ("config.json", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "special_tokens_map.json"):
        if (onnx_dir / name).is_file():
            shutil.copy2(onnx_dir / name, path / name)
    mark_built(path)
    return path


def build_fused(source: Path, path: Path, quantize: str | None = None,
                kv_cache: str = "float32", dtype: str = "float32") -> Path:
    """`tinygen-train export --graph fused [--quantize int8|int4] [--kv-cache int8]
    [--dtype float16]`: our graph, in-place KV cache.

    The float32 graph is verified against PyTorch (32 greedy tokens) as every export is.
    """
    from tinygen_trainer.export import ExportConfig, run_export

    recipe = export_recipe()
    if is_built(path, recipe):
        return path
    if path.exists():
        shutil.rmtree(path)
    run_export(ExportConfig(src=source, out=path, graph="fused", quantize=quantize,
                            kv_cache=kv_cache, dtype=dtype),
               echo=lambda line: print(f"  {line}", flush=True))
    mark_built(path, recipe)
    return path


def gpt2_124m(work_dir: Path, int8: bool = False, fused: bool = False,
              int4: bool = False, kv8: bool = False) -> dict[str, Path]:
    """Build (or reuse) the benchmark model.

    Returns {"source", "onnx"} directories, plus "int8" (optimum graph, int8) with
    `int8`; "fused" with `fused`; "fused-int8" with `fused` and `int8`; "fused-int4" with `int4`;
    and with `kv8`, "fused-kv8" / "fused-int8-kv8" / "fused-int4-kv8" beside those three
    (int8 KV buffers).
    """
    root = Path(work_dir) / "gpt2-124m"
    dirs = {"source": build_source(root / "source")}
    dirs["onnx"] = build_onnx(dirs["source"], root / "onnx")
    if int8:
        dirs["int8"] = build_int8(dirs["onnx"], root / "onnx-int8")
    if fused:
        dirs["fused"] = build_fused(dirs["source"], root / "fused")
    if fused and int8:
        dirs["fused-int8"] = build_fused(dirs["source"], root / "fused-int8", quantize="int8")
    if int4:
        dirs["fused-int4"] = build_fused(dirs["source"], root / "fused-int4", quantize="int4")
    if kv8 and fused:
        dirs["fused-kv8"] = build_fused(dirs["source"], root / "fused-kv8", kv_cache="int8")
    for bits in ("int8", "int4"):
        if kv8 and f"fused-{bits}" in dirs:
            dirs[f"fused-{bits}-kv8"] = build_fused(dirs["source"], root / f"fused-{bits}-kv8",
                                                    quantize=bits, kv_cache="int8")
    return dirs
