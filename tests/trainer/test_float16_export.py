"""`tinygen-train export --dtype float16`: the fused graph in float16 (CUDA's fused attention
runs only in it), checked on the CPU against the float32 export of the same model."""

from __future__ import annotations

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
from generation_checks import PROMPTS, assert_batch_is_alone_and_seeds_repeat


@pytest.fixture(scope="module")
def fp16_result(tiny_source_dir, tmp_path_factory):
    return run_export(ExportConfig(src=tiny_source_dir, dtype="float16",
                                   out=tmp_path_factory.mktemp("fp16") / "model"))


def _prompt_logits(model_dir, ids):
    lm = load_causal_lm(model_dir, load_manifest(model_dir), device="cpu")
    logits, _ = lm.forward(np.array([ids]), np.ones((1, len(ids)), np.int64),
                           np.arange(len(ids))[None], lm.empty_cache(1))
    return logits[0, -1]


def test_every_float_tensor_is_float16(fp16_result):
    model = onnx.load(str(fp16_result.path / "model.onnx"))
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    weights = [t for t in model.graph.initializer if t.data_type in floats]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    typed = [v for v in [*model.graph.input, *model.graph.output, *model.graph.value_info]
             if v.type.tensor_type.elem_type in floats]
    assert typed and all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for v in typed)
    assert fp16_result.manifest.dtype == "float16"
    assert load_manifest(fp16_result.path).dtype == "float16"
    float_report, fp16_report = fp16_result.reports
    assert float_report.exact and fp16_report.label == "float16"


def test_weights_are_the_float32_weights_rounded(fp16_result, onnx_result):
    def weights(path):
        model = onnx.load(str(path / "model.onnx"))
        return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer
                if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)}

    half, full = weights(fp16_result.path), weights(onnx_result.path)
    assert sorted(half) == sorted(full)
    for name, array in full.items():
        np.testing.assert_array_equal(half[name], array.astype(np.float16), err_msg=name)


def test_logits_match_the_float32_graph_to_float16_precision(fp16_result, onnx_result):
    ids = list(range(3, 40))
    half = _prompt_logits(fp16_result.path, ids)
    full = _prompt_logits(onnx_result.path, ids)
    assert half.dtype == np.float32  # the runtime samples from float32
    scale = np.abs(full).max()
    assert np.abs(half - full).max() < 0.02 * scale
    assert np.abs(half - full).max() > 0  # it did run in float16
    assert np.argmax(half) == np.argmax(full)


def test_generation_runs_and_a_seed_repeats_it(fp16_result):
    assert_batch_is_alone_and_seeds_repeat(TextGenerator(fp16_result.path, device="cpu"))


@pytest.mark.parametrize("options, message", [
    (dict(quantize="int8"), "--dtype float16 does not combine with --quantize int8"),
    (dict(kv_cache="int8"), "--dtype float16 does not combine with --kv-cache int8"),
    (dict(graph="optimum"), "--dtype float16 needs the fused graph"),
    (dict(format="torchscript"), "--dtype float16 works only with --format onnx"),
])
def test_float16_refuses_what_it_does_not_combine_with(tiny_gpt2_dir, tmp_path, options,
                                                       message):
    with pytest.raises(TinygenError, match=message):
        run_export(ExportConfig(src=tiny_gpt2_dir, out=tmp_path / "m", dtype="float16",
                                **options))
    assert not (tmp_path / "m").exists()


def test_cli_takes_dtype_and_names_the_choices(tiny_gpt2_dir, tmp_path, capsys):
    assert main(["export", str(tiny_gpt2_dir), str(tmp_path / "m"), "--dtype", "bfloat8"]) != 0
    err = capsys.readouterr().err.strip()
    assert "unknown dtype 'bfloat8'; choose one of: float32, float16" in err
    assert len(err.splitlines()) == 1
