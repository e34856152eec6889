"""tinygen.json's 'files': the export records a fingerprint of each file the model reads, and a
load refuses a file that is not the one exported (a same-sized tokenizer.json or
model.onnx.data from another model loads and writes wrong text otherwise)."""

import json
import re
import shutil

import pytest

from tinygen import ModelFormatError, TextGenerator
from tinygen.file_digest import ends_digest
from tinygen.manifest import Manifest, load_manifest
from tinygen_trainer.export import ExportConfig, run_export

from runtime_cli import run

PROMPT = [5, 6, 7]


def refusal(path) -> str:
    return (f"{path}: not the file this model was exported with (its size or contents differ "
            f"from the record in tinygen.json); copy back the exported file, or export the model "
            f"again (to keep a file changed on purpose, remove its entry from 'files' in "
            f"tinygen.json)")


def manifest_data(folder) -> dict:
    return json.loads((folder / "tinygen.json").read_text())


def write_manifest(folder, data) -> None:
    (folder / "tinygen.json").write_text(json.dumps(data))


def greedy(folder) -> tuple[int, ...]:
    return TextGenerator(folder, device="cpu").generate(PROMPT, max_new_tokens=8,
                                                        do_sample=False)[0].token_ids


@pytest.fixture(scope="module")
def other_gpt2_export(tiny_gpt2_dir, tmp_path_factory):
    """The tiny GPT-2's shape and tokenizer with other weights, exported: each of its files has
    the size of exported_gpt2_dir's."""
    import torch
    from transformers import GPT2LMHeadModel

    src = tmp_path_factory.mktemp("other-gpt2") / "src"
    shutil.copytree(tiny_gpt2_dir, src)
    model = GPT2LMHeadModel.from_pretrained(src)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():  # the small ones too, which the graph file holds itself
            p.normal_(0.0, 0.3)
    model.save_pretrained(src)
    return run_export(ExportConfig(src=src, out=src.parent / "model", verify=False)).path


@pytest.fixture
def model(exported_gpt2_dir, tmp_path):
    return shutil.copytree(exported_gpt2_dir, tmp_path / "model")


def test_the_export_records_each_file_the_model_reads(exported_gpt2_dir):
    files = manifest_data(exported_gpt2_dir)["files"]
    assert sorted(files) == ["model.onnx", "model.onnx.data", "tokenizer.json"]
    assert files == {name: ends_digest(exported_gpt2_dir / name) for name in files}
    assert load_manifest(exported_gpt2_dir).files == files


def test_a_tokenizer_from_another_model_of_the_same_vocabulary_size_is_refused(
        model, exported_llama_dir):
    assert manifest_data(exported_llama_dir)["vocab_size"] == manifest_data(model)["vocab_size"]
    shutil.copyfile(exported_llama_dir / "tokenizer.json", model / "tokenizer.json")
    with pytest.raises(ModelFormatError, match=re.escape(refusal(model / "tokenizer.json"))):
        TextGenerator(model, device="cpu")
    code, out, err = run(["info", "--model", str(model)])
    assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{model / 'tokenizer.json'}: not the file this model was exported with" in err


@pytest.mark.parametrize("name", ["model.onnx.data", "model.onnx"])
def test_weights_from_another_export_of_the_same_shape_are_refused(model, other_gpt2_export, name):
    other = other_gpt2_export / name
    assert other.stat().st_size == (model / name).stat().st_size
    assert other.read_bytes() != (model / name).read_bytes()
    shutil.copyfile(other, model / name)
    with pytest.raises(ModelFormatError, match=re.escape(refusal(model / name))):
        TextGenerator(model, device="cpu")


def test_the_weights_swapped_in_change_the_text_when_their_entry_is_removed(
        model, other_gpt2_export, exported_gpt2_dir):
    """What the check stops: the other export's weights load and write other text."""
    shutil.copyfile(other_gpt2_export / "model.onnx.data", model / "model.onnx.data")
    data = manifest_data(model)
    del data["files"]["model.onnx.data"]  # how a deliberate change is accepted
    write_manifest(model, data)
    assert greedy(model) != greedy(exported_gpt2_dir)


def test_files_edited_by_hand_are_refused(model):
    import onnx

    graph = onnx.load(str(model / "model.onnx"), load_external_data=False)
    graph.doc_string = "edited"
    onnx.save(graph, str(model / "model.onnx"))
    with pytest.raises(ModelFormatError, match=re.escape(refusal(model / "model.onnx"))):
        TextGenerator(model, device="cpu")

    weights = bytearray((model / "model.onnx.data").read_bytes())
    weights[len(weights) // 2] ^= 1  # one bit of one weight, the size unchanged
    (model / "model.onnx.data").write_bytes(bytes(weights))
    data = manifest_data(model)
    del data["files"]["model.onnx"]
    write_manifest(model, data)
    with pytest.raises(ModelFormatError, match=re.escape(refusal(model / "model.onnx.data"))):
        TextGenerator(model, device="cpu")


def test_removing_the_entry_accepts_a_file_changed_on_purpose(model, exported_llama_dir):
    shutil.copyfile(exported_llama_dir / "tokenizer.json", model / "tokenizer.json")
    data = manifest_data(model)
    del data["files"]["tokenizer.json"]
    write_manifest(model, data)
    gen = TextGenerator(model, device="cpu")
    assert gen.tokenizer.encode("Once")[0] == 1  # the BOS the llama tokenizer prepends: in use


def test_a_manifest_without_the_key_loads_as_before(model, exported_llama_dir):
    data = manifest_data(model)
    assert "files" in data
    del data["files"]
    write_manifest(model, data)
    shutil.copyfile(exported_llama_dir / "tokenizer.json", model / "tokenizer.json")
    TextGenerator(model, device="cpu")
    assert "files" not in load_manifest(model).to_json()  # and stays without it when saved


def test_a_recorded_file_that_is_missing_is_named(model):
    (model / "notes.txt").write_text("kept with the model")
    data = manifest_data(model)
    data["files"]["notes.txt"] = ends_digest(model / "notes.txt")
    write_manifest(model, data)
    TextGenerator(model, device="cpu")  # any file may be recorded, and is checked
    (model / "notes.txt").unlink()
    with pytest.raises(ModelFormatError, match=re.escape(
            f"{model}: missing notes.txt, which tinygen.json's 'files' records; copy it with the "
            f"rest of the model folder (if the model no longer uses it, remove its entry from "
            f"'files')")):
        TextGenerator(model, device="cpu")


def test_a_missing_or_cut_weights_file_is_still_told_as_such(model):
    """The weights file's own check words it better than a fingerprint can."""
    whole = (model / "model.onnx.data").stat().st_size
    (model / "model.onnx.data").write_bytes((model / "model.onnx.data").read_bytes()[:whole // 2])
    with pytest.raises(ModelFormatError, match=f"{whole // 2:,} bytes, but the graph reads "
                                               f"{whole:,}: a truncated copy"):
        TextGenerator(model, device="cpu")
    (model / "model.onnx.data").unlink()
    with pytest.raises(ModelFormatError, match="missing model.onnx.data, the file that holds its "
                                               "weights"):
        TextGenerator(model, device="cpu")


@pytest.mark.parametrize("files,message", [
    ({"../tokenizer.json": "0" * 16}, "'files': '../tokenizer.json' must name a file inside the "
                                      "model folder"),
    ({"/etc/passwd": "0" * 16}, "'files': '/etc/passwd' must name a file inside the model folder"),
    ({"tokenizer.json": "abc"}, "'files': 'tokenizer.json' must be a fingerprint of 16 hex digits, "
                                "as tinygen-train export writes, got 'abc'"),
    ({"tokenizer.json": 12}, "'files': 'tokenizer.json' must be a fingerprint of 16 hex digits"),
    (["tokenizer.json"], "'files' must be an object of file name to fingerprint, got list"),
])
def test_a_malformed_record_is_refused(exported_gpt2_dir, files, message):
    data = {**manifest_data(exported_gpt2_dir), "files": files}
    with pytest.raises(ModelFormatError, match=re.escape(f"tinygen.json: {message}")):
        Manifest.from_json(data)


def test_a_null_record_is_no_record(exported_gpt2_dir):
    data = {**manifest_data(exported_gpt2_dir), "files": None}
    assert Manifest.from_json(data).files is None


def test_the_record_is_of_the_final_files(tiny_gpt2_dir, tmp_path):
    """Quantizing rewrites model.onnx after the graph is written: the record is taken last, in
    the staging folder, before OUT appears. replacements.json is left out of it: users edit it."""
    src = shutil.copytree(tiny_gpt2_dir, tmp_path / "src")
    (src / "replacements.json").write_text(json.dumps(
        {"format_version": 1, "encode": [{"pattern": "THE END", "token": "<|endoftext|>"}]}))
    out = run_export(ExportConfig(src=src, out=tmp_path / "out", quantize="int8",
                                  verify=False)).path
    files = manifest_data(out)["files"]
    assert sorted(files) == ["model.onnx", "model.onnx.data", "tokenizer.json"]
    assert files == {name: ends_digest(out / name) for name in files}
    TextGenerator(out, device="cpu")
    (out / "replacements.json").write_text(json.dumps({"format_version": 1, "ban": []}))
    TextGenerator(out, device="cpu")
