"""The model being exported: a transformers causal-LM directory, checked before any work starts.

Every check here is about something the user can fix (wrong path, a classifier
instead of a language model, missing weights), so each failure is a one-line
TinygenError naming the directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinygen.errors import TinygenError

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json",
                   "pytorch_model.bin.index.json")


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
        import torch
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(self.path, dtype=torch.float32,
                                                     local_files_only=True)
        return model.eval()


def read_source(src: Path) -> SourceModel:
    if not src.exists():
        raise TinygenError(f"source model not found: {src}")
    if not src.is_dir():
        raise TinygenError(f"{src}: the source must be a transformers model directory, not a file")
    if not (src / "config.json").is_file() and (src / "tinygen.json").is_file():
        raise TinygenError(f"{src} is already an exported tinygen model; export the transformers folder "
                           f"it came from (a trained run's --output, or the model you finetuned)")
    if not (src / "config.json").is_file():
        raise TinygenError(
            f"{src}: no config.json; the source must be a transformers model directory"
        )
    config = _read_json(src / "config.json")
    _check_causal_lm(src, config)
    if not any(any(src.glob(p)) for p in WEIGHT_PATTERNS):
        raise TinygenError(f"{src}: no model weights (*.safetensors or pytorch_model*.bin)")
    gen_path = src / "generation_config.json"
    generation = _read_json(gen_path) if gen_path.is_file() else None
    return SourceModel(src, config, generation)


def _check_causal_lm(src: Path, config: dict[str, Any]) -> None:
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
