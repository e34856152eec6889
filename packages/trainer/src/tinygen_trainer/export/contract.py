"""The manifest we write, and the check of the exported graph against it.

`tinygen.manifest` is the contract (docs/model-format.md); this module only
fills it in from the source's config and then makes sure the graph really has
every name and KV shape the manifest promises, so a model that exports but
cannot run under the runtime fails here rather than on a user's machine.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from tinygen.config import GenerationConfig
from tinygen.errors import TinygenError
from tinygen.manifest import Manifest, manifest_from_hf_config

from .source import SourceModel

# ONNX element type -> manifest dtype of the KV cache and logits.
ONNX_DTYPES = {"float": "float32", "float16": "float16", "bfloat16": "bfloat16"}


@dataclass(frozen=True)
class TensorSpec:
    elem_type: str  # "float", "float16", "int64", ...
    shape: tuple[int | str | None, ...]  # ints for fixed axes, names for dynamic ones


@dataclass(frozen=True)
class GraphSignature:
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]


def base_manifest(source: SourceModel, replacements_file: str | None) -> Manifest:
    manifest = manifest_from_hf_config(source.config, source.generation_config,
                                       source=str(source.path / "config.json"))
    return replace(manifest, replacements_file=replacements_file,
                   generation=generation_defaults(source.generation_config))


def traced_window(config: dict[str, Any], window: int) -> int:
    """The positions a traced graph gets right, of the model's `window`. longrope RoPE takes
    its short or its long factors by the sequence length, in a Python branch (transformers'
    dynamic_rope_update) that a trace records once, with the short ones of the short example
    it traces: past original_max_position_embeddings the graph's rotations are wrong (logits
    off by 13 on a tiny Llama), so the runtime must slide its window there."""
    rope = config.get("rope_scaling") or {}
    if not isinstance(rope, dict) or rope.get("rope_type", rope.get("type")) != "longrope":
        return window
    # transformers reads the config's own key (Phi-3 writes it there), else the rope's
    original = config.get("original_max_position_embeddings") or \
        rope.get("original_max_position_embeddings")
    return min(window, original) if isinstance(original, int) and original > 0 else window


# generation_config.json names -> tinygen's, where they differ.
HF_NAMES = {"stop_strings": "stop", "suppress_tokens": "exclude_ids"}


def generation_defaults(hf_generation: dict[str, Any] | None) -> dict[str, Any]:
    """The options in generation_config.json that tinygen's GenerationConfig also has.

    Only keys the file states explicitly: transformers' own defaults (greedy)
    differ from tinygen's (sampling), and carrying them would change behaviour
    the model author never asked for. A value tinygen would reject is dropped
    rather than written into a manifest the runtime could not load.
    """
    known = set(GenerationConfig.__dataclass_fields__)
    defaults = {}
    for key, value in (hf_generation or {}).items():
        key = HF_NAMES.get(key, key)
        if key == "stop" and isinstance(value, str):  # transformers takes one string or a list
            value = [value]
        if key not in known or value is None:
            continue
        try:
            GenerationConfig().merged(**{key: value})
        except TinygenError:
            continue
        defaults[key] = value
    return defaults


def check_graph(manifest: Manifest, graph: GraphSignature, where: str) -> Manifest:
    """The manifest, adjusted to the graph (dtype, position_ids), or a TinygenError.

    `where` names the model in messages. Raises when the graph lacks a name the
    manifest promises, needs an input the runtime never feeds, or has a KV
    cache of another shape than the config says.
    """
    unsupported = f"{manifest.architecture} models cannot be run by tinygen"
    need_in = [manifest.inputs["input_ids"], manifest.inputs["attention_mask"],
               *manifest.past_names()]
    need_out = [manifest.outputs["logits"], *manifest.present_names()]
    for name in need_in:
        if name not in graph.inputs:
            raise TinygenError(f"{where}: the graph has no input '{name}'; {unsupported}")
    for name in need_out:
        if name not in graph.outputs:
            raise TinygenError(f"{where}: the graph has no output '{name}'; {unsupported}")
    position_ids = manifest.inputs["position_ids"]
    if position_ids not in graph.inputs:  # some exports compute positions inside the graph
        manifest = replace(manifest, inputs={**manifest.inputs, "position_ids": None})
    fed = set(need_in) | {position_ids}
    extra = sorted(set(graph.inputs) - fed)
    if extra:
        raise TinygenError(f"{where}: the graph needs input '{extra[0]}', which the runtime "
                           f"does not feed; {unsupported}")

    past = graph.inputs[manifest.past_names()[0]]
    dtype = ONNX_DTYPES.get(past.elem_type)
    if dtype is None:
        raise TinygenError(f"{where}: KV cache of type {past.elem_type}; {unsupported}")
    check_kv_shape(manifest, past.shape, where)
    logits = graph.outputs[manifest.outputs["logits"]]
    vocab = logits.shape[-1] if logits.shape else None
    if isinstance(vocab, int) and vocab != manifest.vocab_size:
        raise TinygenError(f"{where}: logits are {vocab} wide but config.json says vocab_size "
                           f"{manifest.vocab_size}")
    return replace(manifest, dtype=dtype)


def check_kv_shape(manifest: Manifest, shape: tuple, where: str) -> None:
    """KV tensors are (batch, num_kv_heads, seq, head_size); fixed axes must match the manifest."""
    if len(shape) != 4:
        raise TinygenError(f"{where}: KV cache has {len(shape)} axes, expected "
                           f"(batch, kv_heads, seq, head_size)")
    heads, size = shape[1], shape[3]
    if (isinstance(heads, int) and heads != manifest.num_kv_heads) or \
            (isinstance(size, int) and size != manifest.head_size):
        raise TinygenError(f"{where}: KV cache is {heads} heads x {size}, but config.json gives "
                           f"{manifest.num_kv_heads} x {manifest.head_size}")
