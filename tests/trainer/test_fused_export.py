"""`tinygen-train export --graph fused`: our own graph (GroupQueryAttention over one in-place KV
buffer per layer, last-position logits) for the tiny GPT-2 and Llama (GQA) models.

The float32 exports come from tests/trainer/conftest.py's `onnx_result`, which is the
fused graph now that fused is the default for both architectures.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from generation_checks import assert_batch_is_alone_and_seeds_repeat
from tinygen import TextGenerator
from tinygen.errors import TinygenError
from tinygen.manifest import load_manifest
from tinygen_trainer.cli import main
from tinygen_trainer.export import ExportConfig, pipeline, run_export


def _ops(path):
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def test_fused_is_the_default_for_gpt2_and_llama(onnx_result, tiny_source_dir):
    manifest = load_manifest(onnx_result.path)
    assert manifest == onnx_result.manifest
    assert manifest.kv_cache == "shared" and manifest.quantization is None
    assert manifest.inputs["seqlens_k"] == "seqlens_k"
    assert manifest.inputs["total_sequence_length"] == "total_sequence_length"
    assert manifest.inputs["attention_mask"] is None
    config = json.loads((tiny_source_dir / "config.json").read_text())
    learned_positions = config["model_type"] == "gpt2"
    assert (manifest.inputs["position_ids"] == "position_ids") is learned_positions

    ops = _ops(onnx_result.path / "model.onnx")
    assert ops.count("GroupQueryAttention") == manifest.num_layers
    assert "Concat" not in ops  # nothing grows per step
    graph = onnx.load(str(onnx_result.path / "model.onnx")).graph
    logits = next(o for o in graph.output if o.name == "logits")
    dims = [d.dim_value or d.dim_param for d in logits.type.tensor_type.shape.dim]
    assert dims == ["batch", 1, manifest.vocab_size]  # the last position only
    # past and present are the same buffer, so they must have the same shape
    shapes = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
              for v in [*graph.input, *graph.output]}
    for past, present in zip(manifest.past_names(), manifest.present_names()):
        assert shapes[past] == shapes[present] == ["batch", manifest.num_kv_heads, "capacity",
                                                   manifest.head_size]

    report, = onnx_result.reports
    assert report.exact and report.max_logit_diff < 1e-3


def test_the_optimum_graph_on_request(tiny_gpt2_dir, tmp_path):
    result = run_export(ExportConfig(src=tiny_gpt2_dir, out=tmp_path / "out", graph="optimum"))
    assert result.manifest.kv_cache == "concat"
    assert result.manifest.inputs["attention_mask"] == "attention_mask"
    assert "GroupQueryAttention" not in _ops(result.path / "model.onnx")
    assert result.reports[0].exact


def test_int8_of_the_optimum_graph_is_dynamic(tiny_gpt2_dir, tmp_path):
    """optimum's graph has no MatMulNBits path here: its int8 is onnxruntime's dynamic kind."""
    result = run_export(ExportConfig(src=tiny_gpt2_dir, out=tmp_path / "out", graph="optimum",
                                     quantize="int8"))
    assert result.manifest.kv_cache == "concat" and result.manifest.quantization == "int8"
    ops = set(_ops(result.path / "model.onnx"))
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul"} and "MatMulNBits" not in ops
    assert [r.label for r in result.reports][-1] == "int8"


@pytest.fixture(scope="module")
def int4_result(tiny_source_dir, tmp_path_factory):
    return run_export(ExportConfig(src=tiny_source_dir, out=tmp_path_factory.mktemp("int4") / "m",
                                   quantize="int4"))


def test_int4_fused_graphs_use_matmulnbits(int4_result, onnx_result, model_bytes):
    manifest = load_manifest(int4_result.path)
    assert manifest.kv_cache == "shared" and manifest.quantization == "int4"
    model = onnx.load(str(int4_result.path / "model.onnx"))
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    # QKV, output projection, two MLP matrices per layer (Llama: gate+up packed), and the LM head
    assert len(nbits) == 4 * manifest.num_layers + 1
    assert all(next(a.i for a in n.attribute if a.name == "bits") == 4 for n in nbits)
    weights = {i.name for i in model.graph.initializer}
    assert not [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    assert model_bytes(int4_result.path) < model_bytes(onnx_result.path)
    # the tied embedding reads the head's 4-bit rows: no float32 copy of the matrix is left
    assert "GatherBlockQuantized" in _ops(int4_result.path / "model.onnx")
    table = (manifest.num_attention_heads * manifest.head_size, manifest.vocab_size)
    assert not [i for i in model.graph.initializer
                if tuple(i.dims) in (table, table[::-1]) and i.data_type == onnx.TensorProto.FLOAT]
    fp32, quantized = int4_result.reports
    assert fp32.exact and quantized.label == "int4" and np.isfinite(quantized.max_logit_diff)


def test_int8_fused_graphs(int8_result):
    """Both architectures: 8-bit MatMulNBits, whose activation scales are per row and block, so
    a text made in a batch is the text made alone (onnxruntime's dynamic quantization, GPT-2's
    int8 before, takes one scale over the whole batch)."""
    manifest = load_manifest(int8_result.path)
    assert manifest.kv_cache == "shared" and manifest.quantization == "int8"
    model = onnx.load(str(int8_result.path / "model.onnx"))
    ops = {n.op_type for n in model.graph.node}
    assert "GroupQueryAttention" in ops and "GatherBlockQuantized" in ops
    assert not ops & {"MatMulInteger", "DynamicQuantizeMatMul", "MatMul"}
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    # each weight its largest power of two that divides K (64, 128 or 256 in the tiny models),
    # up to 256 for GPT-2 and 64 for Llama (quantize.py)
    largest = 256 if manifest.architecture == "gpt2" else 64
    assert all(_attr(n, "bits") == 8 and _attr(n, "block_size") == min(_attr(n, "K"), largest)
               for n in nbits)
    assert len({_attr(n, "block_size") for n in nbits}) == (2 if manifest.architecture == "gpt2" else 1)
    assert_batch_is_alone_and_seeds_repeat(TextGenerator(int8_result.path, device="cpu"))


def _attr(node, name):
    return next(onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name)


@pytest.mark.parametrize("bits, k, largest, block", [
    (8, 128, None, 64), (8, 768, 256, 256), (8, 384, 256, 128), (8, 96, None, 32), (8, 40, 256, 32),
    (4, 128, None, 32), (4, 48, None, 16)])
def test_weights_per_scale_follow_the_width_and_fit_k(tmp_path, bits, k, largest, block):
    """8-bit weights take a scale per up to 64 (GPT-2's up to 256), 4-bit weights per up to 32:
    the largest power of two that divides K, so no block is padded; a K that 16 does not divide
    is padded to blocks of 32. The result still computes x @ W."""
    from onnx import TensorProto, helper

    from tinygen_trainer.export.fused.quantize import quantize_nbits

    weight = np.random.default_rng(0).normal(size=(k, 16)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
        [numpy_helper.from_array(weight, "w")])
    path = tmp_path / "model.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
    quantize_nbits(path, bits=bits, block_size=largest, tie_embedding=False)
    [node] = [n for n in onnx.load(str(path)).graph.node if n.op_type == "MatMulNBits"]
    assert (_attr(node, "bits"), _attr(node, "block_size")) == (bits, block)
    import onnxruntime as ort

    x = np.random.default_rng(1).normal(size=(1, k)).astype(np.float32)
    [y] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    exact = x @ weight
    assert np.abs(y - exact).max() < (0.05 if bits == 8 else 0.5) * np.abs(exact).max()


@pytest.mark.parametrize("names, sizes", [
    (["a", "b"], {"a": 256, "b": 64}),  # each weight its own
    (["a", "a"], {"a": 64}),  # the quantizer could not tell them apart: the smallest for both
    (["", "b"], {"": 64, "b": 64}),
])
def test_block_sizes_per_weight(names, sizes):
    from onnx import TensorProto, helper

    from tinygen_trainer.export.fused.quantize import block_sizes

    weights = [numpy_helper.from_array(np.zeros((k, 8), np.float32), f"w{k}") for k in (768, 192)]
    nodes = [helper.make_node("MatMul", ["x", w.name], [f"y{i}"], name=name)
             for i, (name, w) in enumerate(zip(names, weights))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [], weights)
    assert block_sizes(helper.make_model(graph), 256) == sizes


def test_8bit_blocks_of_a_graph_with_external_data(onnx_result, tmp_path):
    """Graphs over 2 GB keep their weights in a side file: each block size's pass and the
    save carry that layout, and the graph still loads and runs."""
    import onnxruntime as ort

    from tinygen_trainer.export.fused.quantize import quantize_nbits
    from tinygen_trainer.export.onnx_export import external_data_files

    path = tmp_path / "model.onnx"
    onnx.save(onnx.load(str(onnx_result.path / "model.onnx")), str(path),
              save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx_data", size_threshold=0)
    quantize_nbits(path, bits=8, block_size=256)
    data = external_data_files(path)
    assert data and "model.onnx_data" not in data
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model.onnx", *data])
    model = onnx.load(str(path))
    assert {_attr(n, "block_size") for n in model.graph.node if n.op_type == "MatMulNBits"} == \
        ({64, 256} if load_manifest(onnx_result.path).architecture == "gpt2" else {64, 128})
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_int4_needs_the_fused_graph(tiny_gpt2_dir, tmp_path):
    with pytest.raises(TinygenError, match="int4 needs the fused graph"):
        run_export(ExportConfig(src=tiny_gpt2_dir, out=tmp_path / "out", graph="optimum",
                                quantize="int4"))
    assert not (tmp_path / "out").exists()


def test_other_architectures_have_no_fused_graph(tiny_gpt2_dir, tmp_path):
    import shutil

    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    src = tmp_path / "neox"
    config = GPTNeoXConfig(vocab_size=320, hidden_size=32, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=64)
    GPTNeoXForCausalLM(config).save_pretrained(src)
    shutil.copy(tiny_gpt2_dir / "tokenizer.json", src / "tokenizer.json")
    with pytest.raises(TinygenError, match="no fused graph for 'gpt_neox' models; export with "
                                           "--graph optimum"):
        run_export(ExportConfig(src=src, out=tmp_path / "out", graph="fused"))
    source = pipeline.read_source(src)
    assert pipeline._graph_kind(ExportConfig(src=src, out=tmp_path / "o2"), source,
                                pipeline.base_manifest(source, None)) == "optimum"


def test_verification_rejects_a_broken_fused_graph(tiny_llama_dir, tmp_path, monkeypatch):
    real_export = pipeline.export_fused

    def broken_export(model, manifest, dest):
        manifest = real_export(model, manifest, dest)
        graph = onnx.load(str(dest))
        init = next(i for i in graph.graph.initializer if i.name.endswith("qkv_proj.weight"))
        weights = numpy_helper.to_array(init)
        noise = np.random.default_rng(0).normal(0, weights.std(), weights.shape)
        noise = noise.astype(weights.dtype)
        init.CopyFrom(numpy_helper.from_array(weights + noise, init.name))
        onnx.save(graph, str(dest))
        return manifest

    monkeypatch.setattr(pipeline, "export_fused", broken_export)
    with pytest.raises(TinygenError, match="verification failed: the ONNX graph"):
        run_export(ExportConfig(src=tiny_llama_dir, out=tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("options, message", [
    ({"graph": "tflite"}, "unknown graph 'tflite'; choose one of: fused, optimum"),
    ({"graph": "fused", "format": "torchscript"}, "--graph fused works only with --format onnx"),
])
def test_bad_graph_options_are_refused(tiny_gpt2_dir, tmp_path, options, message):
    with pytest.raises(TinygenError, match=message):
        ExportConfig(src=tiny_gpt2_dir, out=tmp_path / "out", **options)


def test_cli_graph_flag(tiny_gpt2_dir, tmp_path, capsys):
    assert main(["export", str(tiny_gpt2_dir), str(tmp_path / "out"), "--graph", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown graph 'nope'" in err
    assert main(["export", str(tiny_gpt2_dir), str(tmp_path / "out"), "--graph", "fused",
                 "--no-verify"]) == 0
    assert "writing the fused ONNX graph" in capsys.readouterr().out
    assert load_manifest(tmp_path / "out").kv_cache == "shared"


def _dequantized_int4(model, node):
    """The (K, N) float weights a 4-bit symmetric MatMulNBits node computes with."""
    tensors = {t.name: t for t in model.graph.initializer}
    attrs = {a.name: a.i for a in node.attribute}
    k, n, block = attrs["K"], attrs["N"], attrs["block_size"]
    packed = numpy_helper.to_array(tensors[node.input[1]]).reshape(n, k // block, block // 2)
    codes = np.empty((n, k // block, block), np.int8)
    codes[..., 0::2], codes[..., 1::2] = packed & 0x0F, packed >> 4  # low nibble first
    scales = numpy_helper.to_array(tensors[node.input[2]]).reshape(n, k // block, 1)
    return ((codes.astype(np.float32) - 8) * scales).reshape(n, k).T


def test_int4_blocks_refit_to_beat_round_to_nearest(int4_result, onnx_result):
    """Every 4-bit block's scale is refit for the least squared error: the weights the kernel
    reconstructs are closer to the float ones than round-to-nearest's."""
    model = onnx.load(str(int4_result.path / "model.onnx"))
    floats = {t.name: numpy_helper.to_array(t)
              for t in onnx.load(str(onnx_result.path / "model.onnx")).graph.initializer}
    checked, ours_total, rtn_total = 0, 0.0, 0.0
    for node in model.graph.node:
        weight = floats.get(node.input[1].removesuffix("_Q4")) if node.op_type == "MatMulNBits" \
            else None
        if weight is None:
            continue
        assert len(node.input) < 4 or not node.input[3]  # symmetric: no zero points
        ours = _dequantized_int4(model, node)
        k, n = weight.shape
        blocks = weight.T.reshape(n, -1, 32)
        peak = np.take_along_axis(blocks, np.abs(blocks).argmax(-1)[..., None], -1)
        rtn_scale = np.where(peak == 0, 1, peak) / -8
        rtn = (np.clip(np.rint(blocks / rtn_scale), -8, 7) * rtn_scale).reshape(n, k).T
        ours_err, rtn_err = np.square(ours - weight).sum(), np.square(rtn - weight).sum()
        assert ours_err <= rtn_err * (1 + 1e-5) and ours_err < 0.01 * np.square(weight).sum()
        checked, ours_total, rtn_total = checked + 1, ours_total + ours_err, rtn_total + rtn_err
    assert checked >= 4 * load_manifest(int4_result.path).num_layers
    assert ours_total < 0.95 * rtn_total, f"refit {ours_total:.4g}, round-to-nearest {rtn_total:.4g}"
