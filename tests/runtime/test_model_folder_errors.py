"""A model folder whose files do not fit together, or are corrupt: one ModelFormatError on load
that names the file and what to fix, never an onnxruntime error or a traceback mid-text."""

import json
import re
import shutil

import pytest

from tinygen import ModelFormatError, TextGenerator
from tinygen.fields import FieldSchema
from tinygen.manifest import Manifest, load_manifest
from tinygen.replacements import Replacements
from tinygen_tinymodel import model_dir as embedded_model_dir

from runtime_cli import run


def with_manifest(source, tmp_path, **changes):
    """A copy of the model folder `source` whose manifest has `changes`."""
    model = shutil.copytree(source, tmp_path / "model")
    Manifest.from_json({**load_manifest(model).to_json(), **changes}).save(model)
    return model


# -- context_window against the graph's position tables ------------------------

@pytest.mark.parametrize("graph,table,positions", [
    ("embedded", "rotary cos_cache", 512),  # fused llama: GroupQueryAttention's cos_cache
    ("exported_gpt2_dir", "position table 'transformer.wpe.weight'", 128),  # fused gpt2
    ("optimum_gpt2_dir", "position table 'transformer.wpe.weight'", 128),  # concat cache
])
def test_a_window_longer_than_the_graph_holds_is_refused_on_load(graph, table, positions,
                                                                  request, tmp_path):
    source = embedded_model_dir() if graph == "embedded" else request.getfixturevalue(graph)
    model = with_manifest(source, tmp_path, context_window=positions * 2)
    with pytest.raises(ModelFormatError, match=re.escape(
            f"the graph's {table} holds {positions} positions, the manifest's context_window is "
            f"{positions * 2}; the manifest does not fit the graph (set context_window to "
            f"{positions} or less)")):
        TextGenerator(model, device="cpu")
    # A shorter window than the tables is fine: the model just slides sooner.
    shorter = {**load_manifest(model).to_json(), "context_window": positions // 2}
    Manifest.from_json(shorter).save(model)
    assert TextGenerator(model, device="cpu").manifest.context_window == positions // 2


def test_the_cli_says_the_window_does_not_fit_in_one_line(tmp_path):
    model = with_manifest(embedded_model_dir(), tmp_path, context_window=1024)
    code, out, err = run(["Once", "--model", str(model), "--max-new-tokens", "700", "--no-slide",
                          "--greedy"])
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "rotary cos_cache holds 512 positions" in err and "Traceback" not in err


def test_a_fixed_kv_buffer_length_must_be_the_window(tmp_path):
    import onnx

    model = with_manifest(embedded_model_dir(), tmp_path, context_window=256)
    graph = onnx.load(str(model / "model.onnx"))
    for value in [*graph.graph.input, *graph.graph.output]:
        if value.name.startswith(("past_key_values.", "present.")):
            value.type.tensor_type.shape.dim[2].dim_value = 512  # was the symbol "capacity"
    onnx.save(graph, str(model / "model.onnx"))
    with pytest.raises(ModelFormatError, match=re.escape(
            "the graph's KV buffers hold 512 positions, the manifest's context_window is 256")):
        TextGenerator(model, device="cpu")


def test_a_fused_graph_under_a_concat_manifest_says_which_it_wants(tmp_path):
    model = with_manifest(embedded_model_dir(), tmp_path, kv_cache="concat")
    with pytest.raises(ModelFormatError, match="kv_cache is 'concat', whose graph reads an attention "
                                               "mask, but it names no attention_mask input; .* wants "
                                               "kv_cache 'shared'"):
        TextGenerator(model, device="cpu")


# -- fields.json -----------------------------------------------------------------

@pytest.mark.parametrize("data,message", [
    ({"format_version": "x", "names": ["a", "b"]}, "'format_version' must be an integer, got 'x'"),
    ({"format_version": None, "names": ["a", "b"]},
     "'format_version' must be an integer, got None"),
    ({"names": ["a", "b"], "separator": 5}, "'separator' must be a string, got 5"),
    ({"names": "ab"}, "'names' must be a list of field names, got 'ab'"),
    ({"names": [["a"], ["b"]]}, "two or more distinct field names"),
    ({"format_version": 2, "names": ["a", "b"]}, "format_version 2 is newer"),
])
def test_a_corrupt_fields_file_names_itself_and_the_fault(tmp_path, data, message):
    path = tmp_path / "fields.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ModelFormatError, match=f"^{re.escape(str(path))}: .*{re.escape(message)}"):
        FieldSchema.load(path)


def test_a_model_folder_with_a_corrupt_fields_file_fails_in_one_line(tmp_path):
    model = with_manifest(embedded_model_dir(), tmp_path, fields_file="fields.json")
    (model / "fields.json").write_text(json.dumps({"names": ["a", "b"], "separator": 5}))
    code, out, err = run(["--context", "a=1,2", "--model", str(model), "--max-new-tokens", "4"])
    assert code == 2 and err.count("\n") == 1 and "'separator' must be a string" in err, err


# -- replacements files --------------------------------------------------------------

@pytest.mark.parametrize("data,message", [
    ({"encode": 5}, "'encode' must be a list of rules"),
    ({"encode": None}, "'encode' must be a list of rules"),
    ({"encode": {"pattern": "a", "token": "b"}}, "'encode' must be a list of rules"),
    ({"format_version": "1"}, "'format_version' must be an integer, got '1'"),
    ({"format_version": 2}, "format_version 2 is newer than this tinygen reads (1)"),
])
def test_a_corrupt_replacements_file_names_itself_and_the_fault(tmp_path, data, message):
    path = tmp_path / "r1.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ModelFormatError, match=f"^{re.escape(str(path))}: {re.escape(message)}"):
        Replacements.load(path)
    code, out, err = run(["x", "--replacements", str(path)])
    assert code == 2 and err.count("\n") == 1 and message in err, err


def test_a_replacements_path_that_is_a_folder_fails_in_one_line(tmp_path):
    with pytest.raises(ModelFormatError, match=f"^{re.escape(str(tmp_path))}: not a readable "
                                               f"replacements file"):
        Replacements.load(tmp_path)
    code, out, err = run(["x", "--replacements", str(tmp_path)])
    assert code == 2 and err.count("\n") == 1 and "not a readable replacements file" in err, err


def test_a_corrupt_replacements_file_in_the_model_folder_fails_in_one_line(tmp_path):
    model = shutil.copytree(embedded_model_dir(), tmp_path / "model")
    (model / "replacements.json").write_text(json.dumps({"encode": None}))
    code, out, err = run(["x", "--model", str(model)])
    assert code == 2 and err.count("\n") == 1, err
    assert f"{model / 'replacements.json'}: 'encode' must be a list of rules" in err


def test_an_unknown_token_is_blamed_on_the_file_that_names_it(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"ban": ["<|nope|>"]}))
    with pytest.raises(ModelFormatError, match=f"^{re.escape(str(path))}: 'ban' names token "
                                               f"'<\\|nope\\|>'"):
        TextGenerator(replacements=path)


def test_manifest_format_version_of_the_wrong_type_says_so():
    data = load_manifest(embedded_model_dir()).to_json()
    with pytest.raises(ModelFormatError, match="'format_version' must be an integer, got '1'"):
        Manifest.from_json({**data, "format_version": "1"})
    with pytest.raises(ModelFormatError, match="missing integer 'format_version'"):
        Manifest.from_json({k: v for k, v in data.items() if k != "format_version"})


@pytest.mark.parametrize("data,message", [
    (b"\xff\xfe", "not valid JSON"),
    (b'{"ban": ["<|nope|>"]}', "names token '<|nope|>', which is not in the tokenizer's vocabulary"),
    (None, "replacements file not found"),
])
def test_a_bad_replacements_file_with_the_embedded_model_is_the_users_to_fix(tmp_path, data, message):
    """The embedded model is fine: the error names the user's file, and says nothing of reinstalling."""
    path = tmp_path / "mine.json"
    if data is not None:
        path.write_bytes(data)
    code, out, err = run(["Hi", "--replacements", str(path)])
    assert code == 2 and out == "" and err.count("\n") == 1
    assert str(path) in err and message in err and "reinstall" not in err


@pytest.mark.parametrize("size", [0, 100])
def test_a_truncated_model_file_says_what_to_do(tmp_path, size):
    model = shutil.copytree(embedded_model_dir(), tmp_path / "model")
    with open(model / "model.onnx", "r+b") as file:
        file.truncate(size)
    code, out, err = run(["info", "--model", str(model)])
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert f"{model / 'model.onnx'}: not a loadable ONNX model (" in err
    assert err.rstrip().endswith("); copy the model folder again or export it again"), err


def test_a_tokenizer_with_ids_past_the_vocabulary_is_named(optimum_gpt2_dir, tmp_path):
    """Another model's tokenizer.json, larger than this model's vocabulary: its ids past it
    reached onnxruntime, whose failure said to export the model again."""
    from tokenizers import Tokenizer

    model = tmp_path / "model"
    shutil.copytree(optimum_gpt2_dir, model)
    vocab = load_manifest(model).vocab_size
    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    last = vocab - tok.get_vocab_size()  # <extra{last}> gets the id `vocab`, one past the end
    tok.add_tokens([f"<extra{i}>" for i in range(last + 1)])
    tok.save(str(model / "tokenizer.json"))
    gen = TextGenerator(model)
    assert gen.generate("Once", seed=1, max_new_tokens=2)  # ids inside the vocabulary: fine
    with pytest.raises(ModelFormatError) as info:
        gen.generate(f"Once <extra{last}>", max_new_tokens=2)
    assert str(info.value) == (
        f"tokenizer.json: it gives the prompt token id {vocab}, outside the model's vocabulary "
        f"(0..{vocab - 1}): it is another model's tokenizer; put the model's own tokenizer.json "
        f"in its folder")
