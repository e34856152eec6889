"""8-bit KV buffers for fused graphs: a static scale per channel, calibrated on the model's text.

onnxruntime's GroupQueryAttention (1.31) keeps past and present as int8 when given
`k_quant_type`/`v_quant_type` "PER_CHANNEL" and a float scale per channel (kv_heads x
head_size); it rounds each new key and value to scale * [-128, 127], saturating, and
dequantizes inside attention. A step then reads a quarter of the cache's float32
bytes, which is what grows with the position, and a row of the window takes a
quarter of the memory. Prompts pay for it: the quantized kernel prefills slower.

Measured (docs/benchmarks.md, "8-bit KV buffers"), 2 threads, ms per decode step at
position 32 -> 1000, float32 KV vs int8 KV:

    GPT-2-124M shape, int8 weights   5.26 -> 8.16 (1.55x)   vs 5.31 -> 6.60 (1.24x)
    GPT-2-124M shape, int4 weights   3.64 -> 6.45 (1.77x)   vs 3.58 -> 4.76 (1.33x)
    SmolLM2-135M, int4 weights       4.72 -> 8.88 (1.88x)   vs 4.62 -> 7.36 (1.59x)
    prefill of 512 tokens, SmolLM2 int4: 865 ms vs 1244 ms
    SmolLM2-135M int8 held-out perplexity, 256 / 2048-token blocks: 32.28 / 20.70 vs 32.42 / 20.82

The scales need the range of each channel. No data comes with an export, so the
float graph writes its own: `CALIBRATION_ROWS` texts sampled from BOS at temperature
1 (seeded), whose keys and values are then sitting in the KV buffers. Sampled text
calibrated better than held-out text did (SmolLM2 int8 perplexity 32.35 vs 32.53).
Rotary keys are stored rotated: a pair of channels (j, j + rotary_dim / 2) turns with
the position, and 256 positions see little of a slow pair's turn, so both channels of
a pair get the largest norm the pair had, which no rotation exceeds (per-channel maxima
instead: perplexity 22.21 at 2048-token blocks).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tinygen.errors import TinygenError
from tinygen.manifest import Manifest

from .graph import GQA_HEAD_SIZE_MULTIPLE

CALIBRATION_ROWS = 8
CALIBRATION_TOKENS = 256
SEED = 0
HEAD_SIZE_MULTIPLE = GQA_HEAD_SIZE_MULTIPLE  # the fused graph's own rule: checked again for direct callers


def check_head_size(manifest: Manifest) -> None:
    if manifest.head_size % HEAD_SIZE_MULTIPLE:
        raise TinygenError(f"--kv-cache int8 needs a head size that is a multiple of "
                           f"{HEAD_SIZE_MULTIPLE}; this model's is {manifest.head_size}: "
                           f"export with --kv-cache float32")


def rotary_dim(model_path: Path) -> int | None:
    """The channels of each key head that GroupQueryAttention rotates; None without rotary."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    node = next(n for n in graph.node if n.op_type == "GroupQueryAttention")
    if not any(a.name == "do_rotary" and a.i for a in node.attribute):
        return None
    cos = next(i for i in graph.initializer if i.name == node.input[7])
    # The shape, not the values: those may sit in model.onnx.data, which was not loaded.
    return 2 * cos.dims[-1]  # (positions, rotary_dim / 2)


def calibrate(model_dir: Path, manifest: Manifest, rotary: int | None) -> list[np.ndarray]:
    """Each KV buffer's range per channel, (kv_heads, head_size), in Manifest.past_names()
    order, over text the float graph in `model_dir` samples itself. Keys of a rotary graph
    (`rotary`: rotary_dim) get their pairs' largest norm."""
    from tinygen.onnx_model import load_causal_lm
    from tinygen.processors import softmax

    lm = load_causal_lm(model_dir, manifest, device="cpu")
    rows, length = CALIBRATION_ROWS, min(CALIBRATION_TOKENS, manifest.context_window)
    start = manifest.bos_token_id
    if start is None:
        start = manifest.eos_token_ids[0] if manifest.eos_token_ids else 0
    rng = np.random.default_rng(SEED)
    ids = np.full((rows, 1), start, np.int64)
    cache = lm.empty_cache(rows)
    for t in range(length):
        logits, cache = lm.forward(ids, np.ones((rows, t + 1), np.int64),
                                   np.full((rows, 1), t, np.int64), cache)
        probs = softmax(logits[:, -1].astype(np.float64))
        # Inverse-CDF sampling, one uniform draw per row: seeded, vectorised.
        picks = (probs.cumsum(axis=-1) < rng.random((rows, 1))).sum(axis=-1)
        ids = np.minimum(picks, probs.shape[-1] - 1)[:, None].astype(np.int64)
    keys = {manifest.inputs["past_key"].format(layer=i) for i in range(manifest.num_layers)}
    ranges = []
    for name, buffer in zip(manifest.past_names(), cache):
        seen = buffer.numpy()[:, :, :length].astype(np.float32)  # (rows, kv_heads, length, head)
        if rotary and name in keys:
            seen = pair_norms(seen, rotary)
        ranges.append(np.abs(seen).max(axis=(0, 2)))
    return ranges


def pair_norms(keys: np.ndarray, rotary: int) -> np.ndarray:
    """Keys (..., head_size) with channels j and j + rotary / 2 (j < rotary / 2) both replaced
    by the pair's norm, the largest either channel can reach at any position."""
    half = rotary // 2
    out = keys.copy()
    norm = np.sqrt(keys[..., :half] ** 2 + keys[..., half:rotary] ** 2)
    out[..., :half] = out[..., half:rotary] = norm
    return out


def quantize_kv_cache(model_path: Path, manifest: Manifest, ranges: list[np.ndarray]) -> None:
    """Rewrite the fused graph at `model_path` for int8 KV buffers with scales from `ranges`."""
    import onnx
    from onnx import helper, numpy_helper

    check_head_size(manifest)
    model = onnx.load(str(model_path), load_external_data=False)  # weights stay where they are
    graph = model.graph
    kv_names = set(manifest.past_names()) | set(manifest.present_names())
    for value in [*graph.input, *graph.output]:
        if value.name in kv_names:
            value.type.tensor_type.elem_type = onnx.TensorProto.INT8
    by_past = dict(zip(manifest.past_names(), ranges))
    attention = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
    if len(attention) != manifest.num_layers:
        raise TinygenError(f"{model_path}: {len(attention)} GroupQueryAttention nodes for "
                           f"{manifest.num_layers} layers; not a fused graph")
    for node in attention:
        inputs = list(node.input) + [""] * (12 - len(node.input))
        key_range, value_range = by_past[inputs[3]], by_past[inputs[4]]
        scales = []
        for kind, bound in (("k", key_range), ("v", value_range)):
            name = f"{node.name}/{kind}_scale"
            scale = np.maximum(bound.reshape(-1), 1e-6) / 127.0
            graph.initializer.append(numpy_helper.from_array(scale.astype(np.float32), name))
            scales.append(name)
        del node.input[:]
        node.input.extend(inputs[:12] + scales)
        node.attribute.extend([helper.make_attribute("k_quant_type", "PER_CHANNEL"),
                               helper.make_attribute("v_quant_type", "PER_CHANNEL"),
                               helper.make_attribute("kv_cache_bit_width", 8)])
    onnx.save(model, str(model_path))

