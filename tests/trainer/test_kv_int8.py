"""`tinygen-train export --kv-cache int8`: 8-bit KV buffers with calibrated per-channel scales,
for the tiny GPT-2 (learned positions) and Llama (rotary keys, grouped-query attention)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tinygen import TextGenerator
from tinygen.errors import TinygenError
from tinygen.manifest import load_manifest
from tinygen.onnx_model import load_causal_lm
from tinygen_trainer.cli import main
from tinygen_trainer.export import ExportConfig, run_export
from tinygen_trainer.export.fused import kv_int8

PROMPTS = ["Once upon a time", "The quick brown fox jumps over", "To be"]


@pytest.fixture(scope="module")
def kv8_result(tiny_source_dir, tmp_path_factory):
    return run_export(ExportConfig(src=tiny_source_dir, kv_cache="int8",
                                   out=tmp_path_factory.mktemp("kv8") / "model"))


def _scales(model_dir):
    """{past input name: scale (kv_heads, head_size)} from the graph's GroupQueryAttention nodes."""
    graph = onnx.load(str(model_dir / "model.onnx")).graph
    m = load_manifest(model_dir)
    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    scales = {}
    for node in (n for n in graph.node if n.op_type == "GroupQueryAttention"):
        for past, scale in ((node.input[3], node.input[12]), (node.input[4], node.input[13])):
            scales[past] = weights[scale].reshape(m.num_kv_heads, m.head_size)
    return scales


def _teacher_forced(model_dir, ids):
    """Last-position logits after each of `ids`, and copies of the KV buffers' filled part."""
    lm = load_causal_lm(model_dir, load_manifest(model_dir), device="cpu")
    cache, logits = lm.empty_cache(1), []
    for t, token in enumerate(ids):
        out, cache = lm.forward(np.array([[token]]), np.ones((1, t + 1), np.int64),
                                np.array([[t]]), cache)
        logits.append(out[0, -1].copy())
    return np.array(logits), [np.array(b.numpy()[0, :, :len(ids)]) for b in cache]


def test_the_kv_buffers_are_int8_with_a_positive_scale_per_channel(kv8_result):
    manifest = kv8_result.manifest
    graph = onnx.load(str(kv8_result.path / "model.onnx")).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.output]}
    for name in manifest.past_names() + manifest.present_names():
        assert types[name] == onnx.TensorProto.INT8
    scales = _scales(kv8_result.path)
    assert sorted(scales) == sorted(manifest.past_names())
    assert all(np.all(s > 0) and np.isfinite(s).all() for s in scales.values())
    float_report, kv8_report = kv8_result.reports
    assert float_report.exact and kv8_report.label == "int8 KV"


def test_each_buffer_gets_the_range_calibration_saw(kv8_result, onnx_result):
    """Scales are the ranges of the float graph's own sampled text / 127, buffer by buffer."""
    manifest = onnx_result.manifest
    ranges = kv_int8.calibrate(onnx_result.path, manifest,
                               kv_int8.rotary_dim(onnx_result.path / "model.onnx"))
    scales = _scales(kv8_result.path)
    for name, bound in zip(manifest.past_names(), ranges):
        np.testing.assert_allclose(scales[name] * 127, bound, rtol=1e-6, err_msg=name)
    keys, values = ranges[0::2], ranges[1::2]
    assert not any(np.allclose(k, v) for k, v in zip(keys, values))


def test_the_first_layer_stores_keys_and_values_to_half_a_step(kv8_result, onnx_result):
    """Layer 0's keys and values come from the embeddings alone, the same in both graphs, so
    its int8 buffers must be the float buffers rounded to the nearest step of the scale
    (saturating outside the calibrated range)."""
    manifest = kv8_result.manifest
    ids = list(np.random.default_rng(1).integers(3, manifest.vocab_size, 40))
    _, floats = _teacher_forced(onnx_result.path, ids)
    _, ints = _teacher_forced(kv8_result.path, ids)
    scales = _scales(kv8_result.path)
    for index in range(2):  # layer 0's key, then value
        name = manifest.past_names()[index]
        step = scales[name][:, None, :]  # (kv_heads, 1, head_size) over (kv_heads, length, head)
        inside = np.abs(floats[index]) <= 127 * step
        assert inside.mean() > 0.99, name
        error = np.abs(ints[index] * step - floats[index])
        assert np.all(error[inside] <= 0.5001 * np.broadcast_to(step, error.shape)[inside]), name
        edge = np.where(floats[index] > 0, 127, -128)
        assert np.array_equal(ints[index][~inside], edge[~inside]), name


def test_logits_stay_close_to_the_float_graph(kv8_result, onnx_result):
    ids = list(np.random.default_rng(2).integers(3, kv8_result.manifest.vocab_size, 48))
    floats, _ = _teacher_forced(onnx_result.path, ids)
    ints, _ = _teacher_forced(kv8_result.path, ids)
    assert np.abs(ints - floats).mean() < 0.05 * floats.std()
    assert (ints.argmax(-1) == floats.argmax(-1)).mean() >= 0.8


def test_rotary_key_pairs_share_their_scale(kv8_result):
    manifest = kv8_result.manifest
    half = manifest.head_size // 2
    for name, scale in _scales(kv8_result.path).items():
        paired = np.array_equal(scale[:, :half], scale[:, half:])
        if manifest.architecture == "llama" and name.endswith(".key"):
            assert paired, name
        else:
            assert not paired, name  # values and learned-position keys: one scale per channel


def test_pair_norms_bound_every_rotation():
    rng = np.random.default_rng(0)
    keys = rng.normal(size=(500, 16)) * rng.uniform(0.1, 3, size=16)
    bound = np.abs(kv_int8.pair_norms(keys, 16)).max(axis=0)
    angle = rng.uniform(0, 2 * np.pi, size=(500, 8))
    x, y = keys[:, :8], keys[:, 8:]
    rotated = np.concatenate([x * np.cos(angle) - y * np.sin(angle),
                              x * np.sin(angle) + y * np.cos(angle)], axis=1)
    assert np.all(np.abs(rotated) <= bound + 1e-9)
    assert np.any(np.abs(rotated).max(axis=0) > np.abs(keys).max(axis=0))  # plain maxima would not


def test_the_runtime_generates_from_int8_buffers(kv8_result):
    gen = TextGenerator(kv8_result.path, device="cpu")
    assert gen.model.kv_dtype == np.int8
    batch = gen.generate(PROMPTS, do_sample=False, max_new_tokens=24)
    for prompt, out in zip(PROMPTS, batch):
        [alone] = gen.generate(prompt, do_sample=False, max_new_tokens=24)
        assert alone.token_ids == out.token_ids  # left-padded rows never read one another
    seeded = gen.generate(PROMPTS[0], n=3, seed=5, max_new_tokens=16, batch_size=3)
    [third] = gen.generate(PROMPTS[0], seed=7, max_new_tokens=16)
    assert third.token_ids == seeded[2].token_ids


def test_info_names_the_kv_buffers(kv8_result, onnx_result, capsys):
    from tinygen.cli import main as tinygen_main

    for model, kind in ((kv8_result.path, "int8"), (onnx_result.path, "float32")):
        assert tinygen_main(["info", "--model", str(model), "--device", "cpu"]) == 0
        assert f'"kv_buffers": "{kind}"' in capsys.readouterr().out


def test_int8_kv_with_int4_weights(tiny_gpt2_dir, tmp_path):
    out = tmp_path / "int4-kv8"
    assert main(["export", str(tiny_gpt2_dir), str(out), "--quantize", "int4",
                 "--kv-cache", "int8"]) == 0
    graph = onnx.load(str(out / "model.onnx")).graph
    assert "MatMulNBits" in {n.op_type for n in graph.node}
    assert graph.input[-1].type.tensor_type.elem_type == onnx.TensorProto.INT8
    assert load_manifest(out).quantization == "int4"
    [text] = TextGenerator(out, device="cpu").generate("To be", seed=1, max_new_tokens=8)
    assert len(text.token_ids) > 0


@pytest.mark.parametrize("options, message", [
    ({"kv_cache": "int4"}, "unknown KV cache 'int4'"),
    ({"kv_cache": "int8", "graph": "optimum"}, "--kv-cache int8 needs the fused graph"),
    ({"kv_cache": "int8", "format": "torchscript"}, "works only with --format onnx"),
])
def test_bad_kv_options_are_refused(tiny_gpt2_dir, tmp_path, options, message):
    with pytest.raises(TinygenError, match=message):
        run_export(ExportConfig(src=tiny_gpt2_dir, out=tmp_path / "out", **options))
    assert not (tmp_path / "out").exists()


def test_head_sizes_off_the_kernels_grid_are_refused(onnx_result):
    kv_int8.check_head_size(onnx_result.manifest)  # 16: fine
    with pytest.raises(TinygenError, match="multiple of 8; this model's is 12"):
        kv_int8.check_head_size(replace(onnx_result.manifest, head_size=12))
