"""TorchScript export: the transformers model traced with a flat KV cache.

The traced module's signature, all tensors (batch B, new tokens S, past P):

    forward(input_ids (B, S) int64, attention_mask (B, P + S) int64,
            position_ids (B, S) int64, *past) -> (logits (B, S, vocab), *present)

`past` is key0, value0, key1, value1, ... (the manifest's past_names() order),
each (B, num_kv_heads, P, head_size); `present` is the same with P + S. Start
with P = 0 (empty tensors) for the prompt.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from tinygen.errors import TinygenError
from tinygen.manifest import Manifest

from .contract import check_kv_shape

MODEL_FILE = "model.pt"
# The example the trace records: non-empty past so the cache-concatenation path
# is the one traced, and sizes > 1 so no axis is specialised to a broadcast 1.
TRACE_BATCH, TRACE_PAST, TRACE_NEW = 2, 3, 2
# transformers' RoPE types behind @dynamic_rope_update (modeling_rope_utils.py).
DYNAMIC_ROPE = ("dynamic", "longrope")


def _wrapper_class():
    import torch
    from transformers import DynamicCache

    class FlatKVCausalLM(torch.nn.Module):
        """A causal LM whose cache goes in and out as flat tensors, which tracing can record."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids, *past):
            cache = DynamicCache.from_legacy_cache(tuple(zip(past[0::2], past[1::2])))
            out = self.model(input_ids=input_ids,
                             attention_mask=self._mask(attention_mask, input_ids),
                             position_ids=position_ids, past_key_values=cache, use_cache=True,
                             return_dict=True)
            present = [t for layer in out.past_key_values.to_legacy_cache() for t in layer]
            return (out.logits, *present)

        def _mask(self, attention_mask, input_ids):
            """The additive causal + padding mask, (B, 1, S, P + S).

            transformers 4.57 builds masks with torch.vmap, which torch.jit.trace
            cannot record; a ready 4D mask is used as it is. Additive floats rather
            than booleans: a fully padded query row then softmaxes to uniform
            instead of NaN under SDPA.
            """
            new, total = input_ids.shape[1], attention_mask.shape[1]
            query_pos = torch.arange(new, device=input_ids.device) + (total - new)
            key_pos = torch.arange(total, device=input_ids.device)
            causal = key_pos[None, :] <= query_pos[:, None]  # (S, P + S)
            allowed = causal[None, None] & attention_mask[:, None, None, :].bool()
            dtype = self.model.dtype
            zeros = torch.zeros(allowed.shape, dtype=dtype, device=input_ids.device)
            return zeros.masked_fill(~allowed, torch.finfo(dtype).min)

    return FlatKVCausalLM


def check_traceable(config: dict) -> None:
    """Refuse what a trace cannot record: attention through a sliding window (our mask is plain
    causal), and RoPE whose frequencies change with the sequence length (transformers picks
    them in a Python branch, which the trace records once, at the traced length: past the
    model's original window the module would silently use the wrong ones)."""
    sliding = config.get("sliding_window") is not None and config.get("use_sliding_window", True)
    if sliding or "sliding_attention" in (config.get("layer_types") or []):
        raise TinygenError(f"{config.get('model_type')}: sliding-window attention is not supported "
                           f"by the TorchScript export; use --format onnx")
    rope = config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type"))
    if rope_type in DYNAMIC_ROPE:
        raise TinygenError(f"{config.get('model_type')}: rope type '{rope_type}' changes with the "
                           f"sequence length, which a TorchScript trace cannot follow; use "
                           f"--format onnx")


def export_torchscript(model, manifest: Manifest, dest: Path) -> None:
    """Trace `model` (float32, eval) into `dest`; checks the traced outputs against the manifest."""
    import torch
    from torch.jit import TracerWarning

    check_traceable(model.config.to_dict())
    module = _wrapper_class()(model).eval()
    example = example_inputs(manifest, TRACE_BATCH, TRACE_PAST, TRACE_NEW)
    with torch.no_grad(), warnings.catch_warnings():
        # Every shape-dependent Python branch warns; the generalisation to other
        # lengths is what verification (and tests) check numerically.
        warnings.simplefilter("ignore", TracerWarning)
        traced = torch.jit.trace(module, example, check_trace=False)
        logits, *present = traced(*example)
    where = f"TorchScript export of {manifest.architecture}"
    if len(present) != 2 * manifest.num_layers:
        raise TinygenError(
            f"{where}: {len(present)} cache tensors, expected {2 * manifest.num_layers}"
        )
    for tensor in present:
        check_kv_shape(manifest, tuple(tensor.shape), where)
    if logits.shape[-1] != manifest.vocab_size:
        raise TinygenError(
            f"{where}: logits are {logits.shape[-1]} wide, config says {manifest.vocab_size}"
        )
    torch.jit.save(traced, str(dest))


def example_inputs(manifest: Manifest, batch: int, past: int, new: int) -> tuple:
    """Random inputs of the traced signature: ids, mask, positions, then the flat past."""
    import torch

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, manifest.vocab_size, (batch, new), generator=generator)
    mask = torch.ones(batch, past + new, dtype=torch.long)
    positions = torch.arange(past, past + new).expand(batch, new)
    kv = [torch.randn(batch, manifest.num_kv_heads, past, manifest.head_size, generator=generator)
          for _ in manifest.past_names()]
    return (ids, mask, positions, *kv)
