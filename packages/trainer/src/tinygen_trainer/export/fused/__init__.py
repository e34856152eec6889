"""Our own fused ONNX graphs (kv_cache "shared"), one thin module per architecture.

`graph` holds the shared building blocks and the graph's input/output contract;
`gpt2` and `llama` map a transformers model's weights onto them; `quantize`
turns the float32 graph's MatMuls into onnxruntime's MatMulNBits (int8, int4).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from tinygen.errors import TinygenError
from tinygen.manifest import Manifest

from ..contract import GraphSignature, check_kv_shape
from . import gpt2, llama
from .graph import (GQA_HEAD_SIZE_MULTIPLE, GQA_ROTARY_HEAD_SIZE_MULTIPLE, INPUT_IDS, LOGITS, PAST,
                    POSITION_IDS, PRESENT, SEQLENS_K, TOTAL_SEQUENCE_LENGTH)

# transformers model_type -> builder(model) -> DecoderGraph
BUILDERS = {"gpt2": gpt2.build, "llama": llama.build}


def supports_fused(architecture: str) -> bool:
    return architecture in BUILDERS


def head_size_multiple(architecture: str) -> int:
    """What the fused graph's head size must be a multiple of (GroupQueryAttention's rule)."""
    return GQA_ROTARY_HEAD_SIZE_MULTIPLE if architecture == "llama" else GQA_HEAD_SIZE_MULTIPLE


def export_fused(model, manifest: Manifest, dest: Path) -> Manifest:
    """Write the fused graph of `model` (a transformers causal LM) to `dest`; its manifest.

    Only for architectures with a builder: pipeline._graph_kind refuses the others."""
    graph = BUILDERS[manifest.architecture](model)
    graph.save(dest)
    position_ids = POSITION_IDS if any(i.name == POSITION_IDS for i in graph.inputs) else None
    return replace(
        manifest, kv_cache="shared", dtype="float32",
        inputs={"input_ids": INPUT_IDS, "attention_mask": None, "position_ids": position_ids,
                "past_key": PAST.replace("{kind}", "key"),
                "past_value": PAST.replace("{kind}", "value"),
                SEQLENS_K: SEQLENS_K, TOTAL_SEQUENCE_LENGTH: TOTAL_SEQUENCE_LENGTH},
        outputs={"logits": LOGITS, "present_key": PRESENT.replace("{kind}", "key"),
                 "present_value": PRESENT.replace("{kind}", "value")},
    )


def check_fused_graph(manifest: Manifest, graph: GraphSignature, where: str) -> Manifest:
    """The fused graph has every name the manifest promises and nothing the runtime won't feed."""
    keys = ("input_ids", "position_ids", SEQLENS_K, TOTAL_SEQUENCE_LENGTH)
    fed = [manifest.inputs[k] for k in keys if manifest.inputs.get(k)] + manifest.past_names()
    for name in fed:
        if name not in graph.inputs:
            raise TinygenError(f"{where}: the fused graph has no input '{name}'")
    extra = sorted(set(graph.inputs) - set(fed))
    if extra:
        raise TinygenError(f"{where}: the fused graph needs input '{extra[0]}', which the runtime "
                           f"does not feed")
    for name in [manifest.outputs["logits"], *manifest.present_names()]:
        if name not in graph.outputs:
            raise TinygenError(f"{where}: the fused graph has no output '{name}'")
    check_kv_shape(manifest, graph.inputs[manifest.past_names()[0]].shape, where)
    return manifest
