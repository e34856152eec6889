"""tinygen.json edited by hand, or written by someone's own exporter from docs/model-format.md:
each mistake is one ModelFormatError that names the file and the key, never a traceback on
load or a typo silently ignored."""

import json
import re
import shutil

import pytest

from tinygen import ModelFormatError, TextGenerator
from tinygen.manifest import Manifest, load_manifest
from tinygen_tinymodel import model_dir as embedded_model_dir

from runtime_cli import run


def manifest_with(**changes) -> dict:
    return {**load_manifest(embedded_model_dir()).to_json(), **changes}


def edited(part: str, **names) -> dict:
    data = manifest_with()
    return {**data, part: {**data[part], **names}}


@pytest.mark.parametrize("part,key,pattern", [
    ("inputs", "past_key", "past_key_values.{layer_idx}.key"),  # KeyError
    ("outputs", "present_key", "present.{}.key"),  # IndexError
    ("inputs", "past_value", "past_key_values.{layer.value"),  # ValueError
])
def test_a_name_pattern_that_does_not_format_is_refused(part, key, pattern):
    with pytest.raises(ModelFormatError, match=re.escape(
            f"tinygen.json: '{part}': '{key}' must be a graph name with {{layer}} where the "
            f"layer index goes, got {pattern!r}")):
        Manifest.from_json(edited(part, **{key: pattern}))


@pytest.mark.parametrize("key", ["input_ids", "past_key", "past_value"])
def test_only_the_optional_inputs_may_be_null(key):
    with pytest.raises(ModelFormatError, match=re.escape(
            f"tinygen.json: 'inputs' must map names to strings: '{key}' is None (only "
            f"attention_mask, position_ids, seqlens_k, total_sequence_length may be null)")):
        Manifest.from_json(edited("inputs", **{key: None}))
    for optional in ("attention_mask", "position_ids"):
        assert Manifest.from_json(edited("inputs", **{optional: None})).inputs[optional] is None


@pytest.mark.parametrize("part,key", [("inputs", "position_id"), ("inputs", "seqlen_k"),
                                      ("outputs", "logit")])
def test_an_unknown_graph_name_key_is_refused_not_ignored(part, key):
    with pytest.raises(ModelFormatError, match=re.escape(
            f"tinygen.json: unknown key '{key}' in '{part}'")):
        Manifest.from_json(edited(part, **{key: "x"}))


def test_a_bad_pattern_in_a_model_folder_fails_in_one_line(tmp_path):
    model = shutil.copytree(embedded_model_dir(), tmp_path / "model")
    data = json.loads((model / "tinygen.json").read_text())
    data["inputs"]["past_key"] = "past_key_values.{layer_idx}.key"
    (model / "tinygen.json").write_text(json.dumps(data))
    code, out, err = run(["info", "--model", str(model)])
    assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{model / 'tinygen.json'}: 'inputs': 'past_key'" in err


@pytest.mark.parametrize("version", [0, -1])
def test_a_format_version_older_than_any_is_refused(version):
    with pytest.raises(ModelFormatError, match=re.escape(
            f"tinygen.json: format_version {version} is not one tinygen writes (1)")):
        Manifest.from_json(manifest_with(format_version=version))


@pytest.mark.parametrize("name", ["/etc/model.onnx", "../model.onnx", "sub/../../model.onnx"])
def test_a_file_outside_the_model_folder_is_refused(name):
    with pytest.raises(ModelFormatError, match=re.escape(
            f"tinygen.json: 'model_file' must name a file inside the model folder, got {name!r}")):
        Manifest.from_json(manifest_with(model_file=name))
    assert Manifest.from_json(manifest_with(model_file="onnx/model.onnx")).model_file == \
        "onnx/model.onnx"


def test_a_manifest_saved_with_a_byte_order_mark_loads(tmp_path):
    """Windows editors (Notepad before 2019, PowerShell's Out-File) write UTF-8 with a BOM."""
    model = shutil.copytree(embedded_model_dir(), tmp_path / "model")
    path = model / "tinygen.json"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert TextGenerator(model, device="cpu").manifest == load_manifest(embedded_model_dir())
