"""GPT-2 as a fused graph: LayerNorm, packed QKV, GroupQueryAttention (MHA), FastGelu MLP.

Each residual add is folded into the next norm (SkipLayerNormalization returns
both the normalized value and the new residual), the MLP bias into FastGelu and
the projection biases into the SkipLayerNormalization after them. Positions are
learned, so the graph takes position_ids and GroupQueryAttention does no rotary.
"""

from __future__ import annotations

import math


from .graph import INPUT_IDS, MS, POSITION_IDS, DecoderGraph, NoFusedGraph

# transformers' activation names -> contrib op computing act(x + bias): tanh GELUs are FastGelu.
ACTIVATIONS = {"gelu_new": "FastGelu", "gelu_pytorch_tanh": "FastGelu", "gelu_fast": "FastGelu",
               "gelu": "BiasGelu"}


def build(model) -> DecoderGraph:
    """The fused graph of a transformers GPT2LMHeadModel (float32, eval mode)."""
    c = model.config
    if c.activation_function not in ACTIVATIONS:
        raise NoFusedGraph(f"GPT-2 activation '{c.activation_function}' has no fused graph")
    if getattr(c, "scale_attn_by_inverse_layer_idx", False):
        # transformers itself scales this only on its eager path, not the default SDPA one.
        raise NoFusedGraph("GPT-2 with scale_attn_by_inverse_layer_idx has no fused graph")
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    head_size = c.n_embd // c.n_head
    g = DecoderGraph("gpt2", state, c.n_layer, c.n_head, c.n_head, head_size, c.vocab_size,
                     position_ids=True)
    eps = float(c.layer_norm_epsilon)
    act = ACTIVATIONS[c.activation_function]

    head_t = g.param("lm_head.weight_t", state["lm_head.weight"].T)
    if _tied(model):
        tokens = g.embed_tied(head_t)
    else:
        tokens = g.op("Gather", [g.param("transformer.wte.weight"), INPUT_IDS], "/embed/Gather")
    positions = g.op("Gather", [g.param("transformer.wpe.weight"), POSITION_IDS],
                     "/embed/positions/Gather")
    residual = g.op("Add", [tokens, positions], "/embed/Add")
    x = g.op("LayerNormalization", [residual, g.param("transformer.h.0.ln_1.weight"),
                                    g.param("transformer.h.0.ln_1.bias")],
             "/layers.0/ln_1/LayerNormalization", axis=-1, epsilon=eps)

    for i in range(c.n_layer):
        p, name = f"transformer.h.{i}.", f"/layers.{i}"
        qkv = g.linear(x, g.param(p + "attn.c_attn.weight"), g.param(p + "attn.c_attn.bias"),
                       f"{name}/attn/qkv")
        attn = g.attention(qkv, i, scale=_attention_scale(c, i, head_size))
        proj = g.linear(attn, g.param(p + "attn.c_proj.weight"), None, f"{name}/attn/o_proj")
        x, residual = _skip_norm(g, proj, residual, p + "ln_2", p + "attn.c_proj.bias", eps,
                                 f"{name}/ln_2")
        fc = g.linear(x, g.param(p + "mlp.c_fc.weight"), None, f"{name}/mlp/fc")
        h = g.op(act, [fc, g.param(p + "mlp.c_fc.bias")], f"{name}/mlp/{act}", domain=MS)
        mlp = g.linear(h, g.param(p + "mlp.c_proj.weight"), None, f"{name}/mlp/proj")
        if i + 1 < c.n_layer:
            x, residual = _skip_norm(g, mlp, residual, f"transformer.h.{i + 1}.ln_1",
                                     p + "mlp.c_proj.bias", eps, f"/layers.{i + 1}/ln_1")
        else:
            # Only the last position of each row goes on to the final norm and the LM head.
            mlp, residual = g.last_positions(mlp, residual)
            x, _ = _skip_norm(g, mlp, residual, "transformer.ln_f", p + "mlp.c_proj.bias", eps,
                              "/ln_f")
    g.lm_head(x, head_t)
    return g


def _skip_norm(g: DecoderGraph, x: str, residual: str, norm: str, bias: str, eps: float,
               name: str) -> tuple[str, str]:
    """LayerNorm(x + bias + residual) and the new residual x + bias + residual, in one op."""
    out = f"{name}/SkipLayerNorm"
    normed, _, _, total = g.op(
        "SkipLayerNormalization",
        [x, residual, g.param(norm + ".weight"), g.param(norm + ".bias"), g.param(bias)],
        out, outputs=[f"{out}/output_0", "", "", f"{out}/output_3"], domain=MS, epsilon=eps)
    return normed, total


def _attention_scale(config, layer: int, head_size: int) -> float | None:
    """GPT-2's scaling options as GroupQueryAttention's `scale` (None: its default 1/sqrt(d))."""
    scale = 1.0 / math.sqrt(head_size) if config.scale_attn_weights else 1.0
    if config.scale_attn_by_inverse_layer_idx:
        scale /= layer + 1
    return None if scale == 1.0 / math.sqrt(head_size) else scale


def _tied(model) -> bool:
    out = model.get_output_embeddings().weight
    return out.data_ptr() == model.get_input_embeddings().weight.data_ptr()
