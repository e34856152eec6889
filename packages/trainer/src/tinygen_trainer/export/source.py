"""A transformers causal-LM folder, checked before any work starts: the model being exported,
and the one place every command (train, teacher-cache, distill, export) loads a model folder from.

Every check here is about something the user can fix (wrong path, a classifier
instead of a language model, missing or truncated weights), so each failure is a
one-line TinygenError naming the folder or file.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tinygen.errors import TinygenError, first_line

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json",
                   "pytorch_model.bin.index.json")
REDO = "copy or save the model again"


@dataclass(frozen=True)
class SourceModel:
    path: Path
    config: dict[str, Any]  # config.json
    generation_config: dict[str, Any] | None  # generation_config.json, when present

    @property
    def architecture(self) -> str:
        return self.config["model_type"]

    def load_model(self):
        """The PyTorch model, float32 and in eval mode: what every export is checked against."""
        return load_causal_lm(self.path).eval()


def read_source(src: Path) -> SourceModel:
    if not src.exists():
        raise TinygenError(f"source model not found: {src}")
    if not src.is_dir():
        raise TinygenError(f"{src}: the source must be a transformers model directory, not a file")
    if not (src / "config.json").is_file():
        raise TinygenError({
            "export": f"{src} is already an exported tinygen model; export the transformers "
                      f"folder it came from (a trained run's --output, or the model you finetuned)",
            "run": f"{src}: a training run that did not finish (no model saved yet); finish it "
                   f"with the same command and --resume, or export one of its checkpoints "
                   f"({src / 'checkpoints'}/step-N)",
            "other": f"{src}: no config.json; the source must be a transformers model directory",
        }[folder_kind(src)])
    config = check_model_folder(src)
    gen_path = src / "generation_config.json"
    generation = _read_json(gen_path) if gen_path.is_file() else None
    return SourceModel(src, config, generation)


def folder_kind(folder: Path) -> Literal["export", "run", "other"]:
    """What a folder without config.json holds instead, for an error that says what to give:
    an exported tinygen model, a training run that has not saved its model yet, or other.
    Each command words the advice (export a checkpoint, give one) itself."""
    if (folder / "tinygen.json").is_file():
        return "export"
    if (folder / "checkpoints").is_dir():
        return "run"
    return "other"


def check_model_folder(folder: Path, label: str | None = None) -> dict[str, Any]:
    """config.json of the causal LM in `folder`, once loading it cannot trip on the folder:
    an LM-head architecture, and weights that are all there. Cheap (headers only), so every
    command runs it before its slow work. `label` names the folder in errors ("--teacher X")."""
    label = label or str(folder)
    if not (folder / "config.json").is_file():
        raise TinygenError(f"{label}: not a transformers model folder (no config.json)")
    config = _read_json(folder / "config.json")
    _check_causal_lm(label, config)
    _check_weights(folder, label)
    return config


def load_causal_lm(folder: Path, label: str | None = None):
    """The causal LM in `folder`, float32 (training keeps fp32 master weights; autocast does the
    low precision), checked first by check_model_folder."""
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    check_model_folder(folder, label)
    try:
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                    local_files_only=True)
    except (OSError, SafetensorError) as exc:  # damage the header checks cannot see
        raise TinygenError(f"{label or folder}: cannot load its weights ({first_line(exc)}); "
                           f"{REDO}") from None


def _check_weights(folder: Path, label: str) -> None:
    files = sorted(p for pattern in WEIGHT_PATTERNS for p in folder.glob(pattern))
    if not files:
        raise TinygenError(f"{label}: no model weights (*.safetensors or pytorch_model*.bin); "
                           f"{REDO}")
    for path in files:
        if path.name.endswith(".index.json"):  # sharded weights: every shard it names is there
            shards = set(_read_json(path).get("weight_map", {}).values())
            missing = sorted(name for name in shards if not (folder / name).is_file())
            if missing:
                raise TinygenError(f"{path}: names {missing[0]}, which is missing; {REDO}")
        elif not _whole(path):
            raise TinygenError(f"{path}: truncated or corrupt weights file "
                               f"({path.stat().st_size:,} bytes); {REDO}")


def _whole(path: Path) -> bool:
    """Whether a weights file holds all it says it does: what a cut-short copy lacks."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if path.suffix == ".bin":
            # torch.save's zip format keeps its directory at the end; the legacy pickle
            # format has no cheap check, so it is left to the loader.
            return head[:4] != b"PK\x03\x04" or zipfile.is_zipfile(path)
        # safetensors: an 8-byte header length, a JSON header, then the tensors' bytes.
        length = int.from_bytes(head, "little") if len(head) == 8 else size
        if 8 + length > size:
            return False
        try:
            header = json.loads(f.read(length))
            end = max((int(t["data_offsets"][1]) for name, t in header.items()
                       if name != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return False
    return 8 + length + end <= size


def _check_causal_lm(src: Path | str, config: dict[str, Any]) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = config.get("model_type")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise TinygenError(
            f"{src}: model_type {model_type!r} is not a causal language model transformers knows"
        )
    # A config of a causal family can still hold a classifier or a bare encoder
    # (BertForMaskedLM, GPT2Model): only an LM-head class has the weights we need.
    causal_classes = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    architectures = config.get("architectures") or []
    if architectures and not any(a in causal_classes for a in architectures):
        raise TinygenError(
            f"{src}: {architectures[0]} is not a causal language model "
            f"(expected e.g. {MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]})"
        )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TinygenError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise TinygenError(f"{path}: expected a JSON object")
    return data
