"""A graph from someone's own exporter whose tensor types the runtime cannot hold (bfloat16:
numpy has no such type) is refused on load, naming the type, not run with float32 buffers
into an onnxruntime error mid-text (nor reported by `tinygen info` as float32)."""

import io
import json
import re
import shutil

import numpy as np
import pytest

from tinygen import ModelFormatError, TextGenerator
from tinygen.cli import main
from tinygen_tinymodel import model_dir as embedded_model_dir

VOCAB = 320


def concat_graph_model(folder, kv_type: int, logits_type: int):
    """A one-layer concat-cache folder: its logits are a Gather, its present its past."""
    import onnx
    from onnx import TensorProto, helper

    folder.mkdir()
    np_type = helper.tensor_dtype_to_np_dtype(logits_type)
    table = helper.make_tensor("table", logits_type, [VOCAB, VOCAB],
                               vals=np.zeros(VOCAB * VOCAB, np_type).tobytes(), raw=True)
    kv = lambda name: helper.make_tensor_value_info(name, kv_type, ["b", 1, "p", 4])  # noqa: E731
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["logits"]),
         helper.make_node("Identity", ["past_key_values.0.key"], ["present.0.key"]),
         helper.make_node("Identity", ["past_key_values.0.value"], ["present.0.value"]),
         helper.make_node("Identity", ["attention_mask"], ["mask"])],
        "tiny",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "t"]),
         kv("past_key_values.0.key"), kv("past_key_values.0.value")],
        [helper.make_tensor_value_info("logits", logits_type, ["b", "s", VOCAB]),
         kv("present.0.key"), kv("present.0.value"),
         helper.make_tensor_value_info("mask", TensorProto.INT64, ["b", "t"])],
        [table])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(folder / "model.onnx"))
    shutil.copy(embedded_model_dir() / "tokenizer.json", folder)
    (folder / "tinygen.json").write_text(json.dumps({
        "format_version": 1, "architecture": "custom", "num_layers": 1, "num_attention_heads": 1,
        "num_kv_heads": 1, "head_size": 4, "vocab_size": VOCAB, "context_window": 64,
        "eos_token_ids": [0]}))
    return folder


def test_a_float32_graph_of_ones_own_loads(tmp_path):
    from onnx import TensorProto

    model = concat_graph_model(tmp_path / "model", TensorProto.FLOAT, TensorProto.FLOAT)
    assert TextGenerator(model, device="cpu").model.kv_dtype is np.float32


@pytest.mark.parametrize("kv,logits,what", [
    ("BFLOAT16", "FLOAT", "KV cache input 'past_key_values.0.key'"),
    ("FLOAT", "BFLOAT16", "logits output 'logits'"),
])
def test_a_bfloat16_graph_is_refused_on_load(tmp_path, kv, logits, what):
    from onnx import TensorProto

    model = concat_graph_model(tmp_path / "model", getattr(TensorProto, kv),
                               getattr(TensorProto, logits))
    message = (f"the graph's {what} is tensor(bfloat16), a type tinygen does not run "
               f"(float32, float16")
    with pytest.raises(ModelFormatError, match=re.escape(message)):
        TextGenerator(model, device="cpu")
    out, err = io.StringIO(), io.StringIO()
    assert main(["info", "--model", str(model)], out=out, err=err) == 2
    assert err.getvalue().count("\n") == 1 and message in err.getvalue() and out.getvalue() == ""
