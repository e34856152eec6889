"""Model shapes for training from scratch, each with a learning rate known to work for it.

GPT-2 shapes follow the released models (Radford et al. 2019); the Llama ones
follow SmolLM2 (grouped-query attention, tied embeddings). Dropout is 0 as in
nanoGPT: for pretraining with plenty of data it only slows learning. The `cpu-`
and `-tiny` shapes train in minutes on a laptop.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

GPT2_NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    architecture: str  # "gpt2" or "llama"
    # Arguments of transformers' GPT2Config / LlamaConfig, vocabulary and special ids aside.
    shape: Mapping[str, Any]
    learning_rate: float

    @property
    def context_window(self) -> int:
        key = "n_positions" if self.architecture == "gpt2" else "max_position_embeddings"
        return int(self.shape[key])

    def build_config(self, vocab_size: int, eos_id: int):
        """The transformers config for this shape and a tokenizer of `vocab_size` ids."""
        if self.architecture == "gpt2":
            from transformers import GPT2Config

            return GPT2Config(vocab_size=vocab_size, bos_token_id=eos_id, eos_token_id=eos_id,
                              **self.shape)
        from transformers import LlamaConfig

        return LlamaConfig(vocab_size=vocab_size, bos_token_id=eos_id, eos_token_id=eos_id,
                           **self.shape)


def _gpt2(name: str, description: str, layers: int, heads: int, dims: int, positions: int,
          lr: float) -> Preset:
    shape = {"n_layer": layers, "n_head": heads, "n_embd": dims, "n_positions": positions,
             **GPT2_NO_DROPOUT}
    return Preset(name, description, "gpt2", MappingProxyType(shape), lr)


def _llama(name: str, description: str, layers: int, heads: int, kv_heads: int, dims: int,
           intermediate: int, positions: int, lr: float) -> Preset:
    shape = {
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "hidden_size": dims, "intermediate_size": intermediate,
        "max_position_embeddings": positions, "tie_word_embeddings": True, "rope_theta": 10000.0,
    }
    return Preset(name, description, "llama", MappingProxyType(shape), lr)


PRESETS: Mapping[str, Preset] = MappingProxyType({p.name: p for p in (
    _gpt2("cpu-tiny", "GPT-2 shape, 2 layers x 64 dims: tests and quick CPU experiments",
          2, 4, 64, 256, 2e-3),
    _gpt2("cpu-small", "GPT-2 shape, 4 layers x 256 dims (~3M + embeddings): hours on a CPU",
          4, 4, 256, 512, 1e-3),
    _gpt2("gpt2-124m", "GPT-2 small: 12 layers x 768 dims", 12, 12, 768, 1024, 6e-4),
    _gpt2("gpt2-355m", "GPT-2 medium: 24 layers x 1024 dims", 24, 16, 1024, 1024, 3e-4),
    _gpt2("gpt2-774m", "GPT-2 large: 36 layers x 1280 dims", 36, 20, 1280, 1024, 2.5e-4),
    _llama("cpu-llama", "Llama shape, 4 layers x 256 dims, grouped-query attention: a student "
           "for SmolLM2-family teachers (the embedded tiny model)", 4, 4, 2, 256, 768, 512, 2e-3),
    _llama("llama-tiny", "Llama shape, 2 layers x 64 dims, grouped-query attention: tests",
           2, 4, 2, 64, 128, 256, 2e-3),
    _llama("llama-135m", "SmolLM2-135M shape: 30 layers x 576 dims, 9 heads / 3 KV heads",
           30, 9, 3, 576, 1536, 2048, 3e-3),
)})
