"""Llama (and look-alikes with the same weights: SmolLM, TinyLlama) as a fused graph.

RMSNorm folded with the residual adds (SkipSimplifiedLayerNormalization), Q/K/V
packed into one MatMul, GroupQueryAttention applying rotary embeddings itself
(do_rotary, with cos/sin tables computed here from the model's own inv_freq so
rope scaling variants come out right), gate and up packed into one MatMul.
"""

from __future__ import annotations

import numpy as np

from tinygen.errors import TinygenError

from .graph import INPUT_IDS, MS, DecoderGraph, NoFusedGraph

# Rope types whose frequencies do not depend on the sequence length: one table serves all steps.
STATIC_ROPE = ("default", "linear", "llama3", "yarn")


def build(model) -> DecoderGraph:
    """The fused graph of a transformers LlamaForCausalLM (float32, eval mode)."""
    c = model.config
    if getattr(c, "hidden_act", "silu") != "silu":
        raise NoFusedGraph(f"Llama activation '{c.hidden_act}' has no fused graph")
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    heads, kv_heads = c.num_attention_heads, c.num_key_value_heads
    head_size = getattr(c, "head_dim", None) or c.hidden_size // heads
    g = DecoderGraph("llama", state, c.num_hidden_layers, heads, kv_heads, head_size,
                     c.vocab_size, position_ids=False)
    eps = float(c.rms_norm_eps)
    rotary = _rotary_tables(g, model, c.max_position_embeddings)

    head_t = g.param("lm_head.weight_t", state["lm_head.weight"].T)
    out, inp = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    if out.data_ptr() == inp.data_ptr():
        residual = g.embed_tied(head_t)
    else:
        residual = g.op("Gather", [g.param("model.embed_tokens.weight"), INPUT_IDS],
                        "/embed/Gather")
    x = g.op("SimplifiedLayerNormalization",
             [residual, g.param("model.layers.0.input_layernorm.weight")],
             "/layers.0/input_layernorm/SimplifiedLayerNorm", axis=-1, epsilon=eps)

    for i in range(c.num_hidden_layers):
        p, name = f"model.layers.{i}.", f"/layers.{i}"
        attn = p + "self_attn."
        qkv_w = _packed(g, attn + "qkv_proj.weight", [attn + f"{k}_proj.weight" for k in "qkv"])
        qkv_b = _packed(g, attn + "qkv_proj.bias", [attn + f"{k}_proj.bias" for k in "qkv"])
        qkv = g.linear(x, qkv_w, qkv_b, f"{name}/attn/qkv")
        o = g.linear(g.attention(qkv, i, rotary=rotary),
                     g.param(attn + "o_proj.weight", state[attn + "o_proj.weight"].T),
                     g.param(attn + "o_proj.bias"), f"{name}/attn/o_proj")
        x, residual = _skip_norm(g, o, residual, p + "post_attention_layernorm", eps,
                                 f"{name}/post_attention_layernorm")
        mlp = p + "mlp."
        gate_up = g.linear(x, _packed(g, mlp + "gate_up_proj.weight",
                                      [mlp + "gate_proj.weight", mlp + "up_proj.weight"]),
                           _packed(g, mlp + "gate_up_proj.bias",
                                   [mlp + "gate_proj.bias", mlp + "up_proj.bias"]),
                           f"{name}/mlp/gate_up")
        half = state[mlp + "up_proj.weight"].shape[0]
        gate, up = g.op("Split", [gate_up, g.const([half, half])], f"{name}/mlp/Split",
                        outputs=2, axis=-1)
        silu = g.op("Mul", [gate, g.op("Sigmoid", [gate], f"{name}/mlp/Sigmoid")],
                    f"{name}/mlp/SiLU")
        down = g.linear(g.op("Mul", [silu, up], f"{name}/mlp/Mul"),
                        g.param(mlp + "down_proj.weight", state[mlp + "down_proj.weight"].T),
                        g.param(mlp + "down_proj.bias"), f"{name}/mlp/down")
        if i + 1 < c.num_hidden_layers:
            x, residual = _skip_norm(g, down, residual, f"model.layers.{i + 1}.input_layernorm",
                                     eps, f"/layers.{i + 1}/input_layernorm")
        else:
            # Only the last position of each row goes on to the final norm and the LM head.
            down, residual = g.last_positions(down, residual)
            x, _ = _skip_norm(g, down, residual, "model.norm", eps, "/norm")
    g.lm_head(x, head_t)
    return g


def _rotary_tables(g: DecoderGraph, model, window: int) -> tuple[str, str]:
    """cos/sin caches (window, rotary_dim / 2), as transformers' rotary embedding computes them."""
    rope = model.model.rotary_emb
    rope_type = getattr(rope, "rope_type", "default")
    if rope_type not in STATIC_ROPE:
        raise NoFusedGraph(f"rope type '{rope_type}' changes with the sequence length and has no "
                           f"fused graph")
    inv_freq = rope.inv_freq.detach().float().numpy()
    scaling = float(getattr(rope, "attention_scaling", 1.0))
    angles = np.arange(window, dtype=np.float32)[:, None] * inv_freq[None, :]  # float32, as HF
    return (g.param("rotary.cos_cache", np.cos(angles) * scaling),
            g.param("rotary.sin_cache", np.sin(angles) * scaling))


def _skip_norm(g: DecoderGraph, x: str, residual: str, norm: str, eps: float,
               name: str) -> tuple[str, str]:
    """RMSNorm(x + residual) and the new residual, in one op."""
    out = f"{name}/SkipSimplifiedLayerNorm"
    normed, _, _, total = g.op(
        "SkipSimplifiedLayerNormalization", [x, residual, g.param(norm + ".weight")],
        out, outputs=[f"{out}/output_0", "", "", f"{out}/output_3"], domain=MS, epsilon=eps)
    return normed, total


def _packed(g: DecoderGraph, name: str, parts: list[str]) -> str | None:
    """Linear weights (out, in) or biases side by side along `out`, stored as one (in, out)
    weight (or bias) called `name`; None when the model has none of them (no biases)."""
    present = [part in g.state for part in parts]
    if not any(present):
        return None
    if not all(present):
        raise TinygenError(f"{parts[present.index(False)]} is missing while its siblings exist")
    return g.param(name, np.concatenate([g.state[part] for part in parts]).T)
