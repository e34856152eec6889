"""The model directory's manifest, `tinygen.json`: the contract between trainer and runtime.

Documented in docs/model-format.md. A directory written by
`optimum-cli export onnx --task text-generation-with-past` has no manifest; we
derive the same fields from its `config.json`, so both load through one path.
"""

from __future__ import annotations

import json
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any

from .atomic import atomic_write_text
from .errors import ModelFormatError
from .file_digest import ends_digest
from .weights_files import check_weights_files

FORMAT_VERSION = 1
MANIFEST_NAME = "tinygen.json"
KV_CACHE_KINDS = ("concat", "shared")

# Input/output names as optimum writes them; `{layer}` is the layer index.
DEFAULT_INPUTS = {
    "input_ids": "input_ids",
    "attention_mask": "attention_mask",
    "position_ids": "position_ids",
    "past_key": "past_key_values.{layer}.key",
    "past_value": "past_key_values.{layer}.value",
}
DEFAULT_OUTPUTS = {
    "logits": "logits",
    "present_key": "present.{layer}.key",
    "present_value": "present.{layer}.value",
}
# Beyond optimum's names, a "shared" graph's (shared_kv.py); the inputs that may be null.
SHARED_INPUTS = ("seqlens_k", "total_sequence_length")
NULLABLE_INPUTS = ("attention_mask", "position_ids", *SHARED_INPUTS)
PATTERNS = ("past_key", "past_value", "present_key", "present_value")


@dataclass(frozen=True)
class Manifest:
    architecture: str  # transformers model_type: "gpt2", "llama", ...
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int  # < num_attention_heads for grouped-query attention
    head_size: int
    vocab_size: int
    context_window: int  # positions the model was trained for
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None = None
    pad_token_id: int | None = None
    dtype: str = "float32"  # dtype of the KV cache and logits
    quantization: str | None = None  # None, "int8" or "int4" (weights only)
    # How the graph keeps its KV cache: "concat" (present = past + new, as optimum
    # exports) or "shared" (one buffer of context_window positions per layer that the
    # graph updates in place; see docs/model-format.md).
    kv_cache: str = "concat"
    model_file: str = "model.onnx"
    tokenizer_file: str = "tokenizer.json"
    replacements_file: str | None = None
    fields_file: str | None = None  # fields.json: record fields for context conditioning
    inputs: dict[str, str | None] = field(default_factory=lambda: dict(DEFAULT_INPUTS))
    outputs: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_OUTPUTS))
    # Defaults for tinygen.GenerationConfig; the caller's arguments override them.
    generation: dict[str, Any] = field(default_factory=dict)
    # File name -> ends_digest of the file as the export wrote it; None: no record (older
    # exports, other tools' folders). Checked on load: a same-sized file swapped in from
    # another model would otherwise load and write wrong text.
    files: dict[str, str] | None = None
    format_version: int = FORMAT_VERSION

    def past_names(self) -> list[str]:
        """Past-KV input names in the order key0, value0, key1, value1, ..."""
        return [
            self.inputs[kind].format(layer=i)
            for i in range(self.num_layers)
            for kind in ("past_key", "past_value")
        ]

    def present_names(self) -> list[str]:
        return [
            self.outputs[kind].format(layer=i)
            for i in range(self.num_layers)
            for kind in ("present_key", "present_value")
        ]

    # -- serialisation -------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["eos_token_ids"] = list(self.eos_token_ids)
        if data["files"] is None:  # as before the key existed, for tinygen versions without it
            del data["files"]
        return {"format_version": data.pop("format_version"), **data}

    def save(self, model_dir: str | os.PathLike) -> Path:
        """Write tinygen.json atomically (temp file + rename)."""
        path = Path(model_dir) / MANIFEST_NAME
        atomic_write_text(path, json.dumps(self.to_json(), indent=2) + "\n")
        return path

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = MANIFEST_NAME) -> "Manifest":
        if not isinstance(data, dict):
            raise ModelFormatError(f"{source}: expected a JSON object")
        version = data.get("format_version")
        if "format_version" not in data:
            raise ModelFormatError(f"{source}: missing integer 'format_version'")
        if not isinstance(version, int) or isinstance(version, bool):
            raise ModelFormatError(f"{source}: 'format_version' must be an integer, "
                                   f"got {version!r}")
        if version > FORMAT_VERSION:
            raise ModelFormatError(
                f"{source}: format_version {version} is newer than this tinygen reads "
                f"({FORMAT_VERSION}); upgrade with: pip install -U tinygen"
            )
        if version < 1:
            raise ModelFormatError(f"{source}: format_version {version} is not one tinygen writes "
                                   f"({FORMAT_VERSION}); set it to {FORMAT_VERSION}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelFormatError(f"{source}: unknown key '{unknown[0]}'")
        required = [f.name for f in fields(cls)
                    if f.default is MISSING and f.default_factory is MISSING]
        for name in required:
            if name not in data:
                raise ModelFormatError(f"{source}: missing key '{name}'")
        kwargs = dict(data)
        kwargs["eos_token_ids"] = tuple(_as_id_list(data["eos_token_ids"], source))
        for name, defaults in (("inputs", DEFAULT_INPUTS), ("outputs", DEFAULT_OUTPUTS)):
            names = data.get(name, {})
            if not isinstance(names, dict):
                raise ModelFormatError(f"{source}: '{name}' must be an object of graph names, "
                                       f"got {type(names).__name__}")
            # A typo ('position_id') would leave the default name in force, unnoticed.
            known = (*defaults, *SHARED_INPUTS) if name == "inputs" else tuple(defaults)
            unknown = [key for key in names if key not in known]
            if unknown:
                raise ModelFormatError(f"{source}: unknown key '{unknown[0]}' in '{name}' "
                                       f"(known: {', '.join(known)})")
            for key, value in names.items():
                if value is None and name == "inputs" and key in NULLABLE_INPUTS:
                    continue
                if not isinstance(value, str):
                    nullable = f" (only {', '.join(NULLABLE_INPUTS)} may be null)" \
                        if value is None and name == "inputs" else ""
                    raise ModelFormatError(f"{source}: '{name}' must map names to strings: "
                                           f"'{key}' is {value!r}{nullable}")
                # A pattern is formatted per layer on load: a stray brace was a traceback there.
                if key in PATTERNS and not _formats(value):
                    raise ModelFormatError(f"{source}: '{name}': '{key}' must be a graph name with "
                                           f"{{layer}} where the layer index goes, got {value!r}")
            kwargs[name] = {**defaults, **names}
        if not isinstance(data.get("generation", {}), dict):
            raise ModelFormatError(f"{source}: 'generation' must be an object of generation options, "
                                   f"got {type(data['generation']).__name__}")
        manifest = cls(**kwargs)
        manifest._check_types(source)
        return manifest

    def _check_types(self, source: str) -> None:
        for name in ("num_layers", "num_attention_heads", "num_kv_heads", "head_size",
                     "vocab_size", "context_window"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ModelFormatError(f"{source}: '{name}' must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_kv_heads:
            raise ModelFormatError(
                f"{source}: num_attention_heads ({self.num_attention_heads}) is not a multiple "
                f"of num_kv_heads ({self.num_kv_heads})"
            )
        if self.kv_cache not in KV_CACHE_KINDS:
            raise ModelFormatError(f"{source}: 'kv_cache' must be one of {', '.join(KV_CACHE_KINDS)}, "
                                   f"got {self.kv_cache!r}")
        if self.dtype not in ("float32", "float16", "bfloat16"):
            raise ModelFormatError(f"{source}: unsupported dtype '{self.dtype}'")
        if not isinstance(self.architecture, str) or not self.architecture:
            raise ModelFormatError(f"{source}: 'architecture' must be a model type name, got {self.architecture!r}")
        for name, optional in (("model_file", False), ("tokenizer_file", False),
                               ("replacements_file", True), ("fields_file", True)):
            value = getattr(self, name)
            if not ((isinstance(value, str) and value) or (optional and value is None)):
                raise ModelFormatError(f"{source}: '{name}' must be a file name, got {value!r}")
            if value is not None and _outside(value):
                raise ModelFormatError(f"{source}: '{name}' must name a file inside the model "
                                       f"folder, got {value!r}")
        for name in ("bos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if value is not None and not _is_token_id(value):
                raise ModelFormatError(f"{source}: '{name}' must be a token id (an integer >= 0) or null, "
                                       f"got {value!r}")
        # Out of the vocabulary, an end token would never end a text and a start token would
        # fail in the graph's embedding.
        for name, ids in (("eos_token_ids", self.eos_token_ids), ("bos_token_id", [self.bos_token_id]),
                          ("pad_token_id", [self.pad_token_id])):
            outside = [i for i in ids if i is not None and not 0 <= i < self.vocab_size]
            if outside:
                raise ModelFormatError(f"{source}: '{name}' has token id {outside[0]}, outside the "
                                       f"vocabulary (0..{self.vocab_size - 1})")
        if self.quantization is not None and not isinstance(self.quantization, str):
            raise ModelFormatError(f"{source}: 'quantization' must be a string or null, got {self.quantization!r}")
        if self.files is not None and not isinstance(self.files, dict):
            raise ModelFormatError(f"{source}: 'files' must be an object of file name to "
                                   f"fingerprint, got {type(self.files).__name__}")
        for name, digest in (self.files or {}).items():
            if _outside(name):
                raise ModelFormatError(f"{source}: 'files': '{name}' must name a file inside the "
                                       f"model folder")
            if not (isinstance(digest, str) and len(digest) == 16 and
                    all(c in "0123456789abcdef" for c in digest)):
                raise ModelFormatError(f"{source}: 'files': '{name}' must be a fingerprint of "
                                       f"16 hex digits, as tinygen-train export writes, got "
                                       f"{digest!r}")


def _kv_heads(config: dict[str, Any], heads: int) -> Any:
    """Key/value heads: num_key_value_heads, or Falcon's own keys, as transformers reads them
    (one head for multi-query attention unless new_decoder_architecture)."""
    if config.get("model_type") == "falcon":
        if config.get("new_decoder_architecture") or not config.get("multi_query", True):
            return config.get("num_kv_heads") or heads
        return 1
    return _first(config, "num_key_value_heads", default=heads)


def _as_id_list(value: Any, source: str) -> list[int]:
    if value is None:
        return []
    ids = value if isinstance(value, list) else [value]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ModelFormatError(f"{source}: token ids must be integers, got {value!r}")
    return ids


# -- directories without a manifest (optimum exports) ---------------------------

def _first(config: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    return default


def manifest_from_hf_config(config: dict[str, Any], generation_config: dict[str, Any] | None = None,
                            source: str = "config.json",
                            generation_source: str = "generation_config.json") -> Manifest:
    """Derive a manifest from a transformers `config.json` (optimum export or source model);
    `generation_source` names generation_config.json in the errors of the ids it gives."""
    gen = generation_config or {}
    arch = config.get("model_type")
    layers = _first(config, "num_hidden_layers", "n_layer", "num_layers")
    heads = _first(config, "num_attention_heads", "n_head")
    hidden = _first(config, "hidden_size", "n_embd", "d_model")
    window = _first(config, "max_position_embeddings", "n_positions", "n_ctx", "seq_length")
    shape = {"model_type": arch, "number of layers": layers, "number of attention heads": heads,
             "hidden size": hidden, "context window (max_position_embeddings)": window}
    missing = [what for what, value in shape.items() if not value]
    if missing and layers and not heads:  # Mamba, RWKV: a state, not attention over a cache
        raise ModelFormatError(f"{source}: a '{arch}' model has no attention heads, so no KV cache "
                               f"for tinygen to run it with; tinygen runs transformer decoders")
    if missing == ["context window (max_position_embeddings)"]:
        # ALiBi models (bloom, mpt) have no window in their config: positions are not embedded.
        raise ModelFormatError(f"{source}: no context window (max_position_embeddings) in it, as "
                               f"in models whose positions are not embedded (ALiBi: Bloom, MPT); "
                               f"set max_position_embeddings there to the longest text to run")
    if missing:
        raise ModelFormatError(f"{source}: cannot tell the model's shape: no {missing[0]} in it "
                               f"(tinygen runs models whose config gives model_type, layers, "
                               f"heads, hidden size and context window)")
    if config.get("vocab_size") is None:
        raise ModelFormatError(f"{source}: missing 'vocab_size'")

    def count(value: Any, what: str) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ModelFormatError(f"{source}: {what} must be a positive integer, got {value!r}")
        try:
            number = int(value)
        except (ValueError, OverflowError):
            number = 0
        if number < 1 or number != float(value):
            raise ModelFormatError(f"{source}: {what} must be a positive integer, got {value!r}")
        return number

    heads, hidden = count(heads, "the number of attention heads"), count(hidden, "the hidden size")
    kv_heads = _kv_heads(config, heads)
    head_size = _first(config, "head_dim", default=hidden // heads)
    eos = _first(gen, "eos_token_id", default=config.get("eos_token_id"))
    eos_source = generation_source if gen.get("eos_token_id") is not None else source  # for errors
    pad = _first(gen, "pad_token_id", default=config.get("pad_token_id"))
    bos = _first(gen, "bos_token_id", default=config.get("bos_token_id"))
    manifest = Manifest(
        architecture=str(arch),
        num_layers=count(layers, "the number of layers"),
        num_attention_heads=heads,
        num_kv_heads=count(kv_heads, "'num_key_value_heads'"),
        head_size=count(head_size, "'head_dim'"),
        vocab_size=count(config["vocab_size"], "'vocab_size'"),
        context_window=count(window, "the context window"),
        eos_token_ids=tuple(_as_id_list(eos, eos_source)),
        # Some configs say -1 for "none" (e.g. pad_token_id): anything but a token id is none.
        bos_token_id=bos if _is_token_id(bos) else None,
        pad_token_id=pad if _is_token_id(pad) else None,
    )
    manifest._check_types(source)
    return manifest


def _outside(name: str) -> bool:
    """Whether the path `name` leaves the model folder: absolute, on a drive, or through `..`."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return bool(parts) and (parts[0] == "/" or ".." in parts or ":" in parts[0])


def _formats(pattern: str) -> bool:
    try:
        pattern.format(layer=0)
    except (KeyError, IndexError, ValueError):
        return False
    return True


def _is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _read_json(path: Path) -> Any:
    try:
        # utf-8-sig: Windows editors save UTF-8 with a byte order mark, which json refuses.
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise ModelFormatError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise ModelFormatError(f"{path}: not UTF-8 text") from None


def _read_object(path: Path) -> dict[str, Any]:
    """_read_json of a file that must hold a JSON object (config.json, generation_config.json):
    a list there failed on its first key with an AttributeError."""
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ModelFormatError(f"{path}: expected a JSON object")
    return data


def _hub_hint(model_dir: Path) -> str:
    """For a name like a model hub's ("HuggingFaceTB/SmolLM2-135M", no such folder here): the
    runtime loads folders only, so say how to make one rather than leave it at not found."""
    parts = model_dir.parts
    if model_dir.is_absolute() or len(parts) != 2 or parts[0] in (".", "..") or Path(parts[0]).exists():
        return ""
    return (" (tinygen downloads nothing; with the model's files in a folder, make a runtime "
            "folder with 'tinygen-train export FOLDER OUT' and give OUT)")


def load_manifest(model_dir: str | os.PathLike) -> Manifest:
    """Read `tinygen.json`, or derive the manifest from an optimum export's config.json."""
    model_dir = Path(model_dir)
    if model_dir.is_file():
        raise ModelFormatError(f"{model_dir} is a file; give the model's folder ({model_dir.parent}), "
                               f"which holds model.onnx, tinygen.json and tokenizer.json")
    if not model_dir.is_dir():
        raise ModelFormatError(f"model directory not found: {model_dir}{_hub_hint(model_dir)}")
    path = model_dir / MANIFEST_NAME
    if path.is_dir():
        raise folder_not_file(path)
    if path.is_file():
        manifest = Manifest.from_json(_read_json(path), source=str(path))
    elif (model_dir / "config.json").is_file():
        gen_path = model_dir / "generation_config.json"
        manifest = manifest_from_hf_config(
            _read_object(model_dir / "config.json"),
            _read_object(gen_path) if gen_path.is_file() else None,
            source=str(model_dir / "config.json"), generation_source=str(gen_path),
        )
    else:
        raise ModelFormatError(
            f"{model_dir}: no {MANIFEST_NAME} or config.json; export a model with "
            f"'tinygen-train export SRC OUT'"
        )
    for name in (manifest.model_file, manifest.tokenizer_file):
        if (model_dir / name).is_dir():  # not "missing": it is there, as the wrong thing
            raise folder_not_file(model_dir / name)
        if not (model_dir / name).is_file():
            trained = not path.is_file() and any(model_dir.glob("*.safetensors"))
            hint = (f" (a transformers model folder: export it first, 'tinygen-train export "
                    f"{model_dir} OUT')") if trained and name == manifest.model_file else ""
            raise ModelFormatError(f"{model_dir}: missing {name}{hint}")
    if manifest.files:
        check_recorded_files(model_dir, manifest)
    return manifest


def folder_not_file(path: Path) -> ModelFormatError:
    """A model file that is a folder (a copy gone wrong, or an export into that name)."""
    return ModelFormatError(f"{path} is a folder, not a file; put the model's {path.name} file "
                            f"there (copy the model folder again)")


def check_recorded_files(model_dir: Path, manifest: Manifest) -> None:
    """Each file in the manifest's 'files' is there with the fingerprint the export recorded.

    The fingerprint is ends_digest (size and the bytes at both ends): a load reads ~5 MiB a
    file, not gigabytes of weights, and a file from another model differs in its size or at
    its ends (its first tensors, its vocabulary's start, ...)."""
    for name, digest in manifest.files.items():
        path = model_dir / name
        if path.is_file() and ends_digest(path) == digest:
            continue
        if manifest.model_file.endswith(".onnx"):  # a missing or cut weights file in its own words
            check_weights_files(model_dir / manifest.model_file)
        if path.is_dir():
            raise folder_not_file(path)
        if not path.is_file():
            raise ModelFormatError(f"{model_dir}: missing {name}, which {MANIFEST_NAME}'s 'files' "
                                   f"records; copy it with the rest of the model folder (if the "
                                   f"model no longer uses it, remove its entry from 'files')")
        raise ModelFormatError(f"{path}: not the file this model was exported with (its size or "
                               f"contents differ from the record in {MANIFEST_NAME}); copy back "
                               f"the exported file, or export the model again (to keep a file "
                               f"changed on purpose, remove its entry from 'files' in "
                               f"{MANIFEST_NAME})")
