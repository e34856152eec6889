"""`tinygen-train export`: ONNX, int8 and TorchScript exports of tiny GPT-2 and Llama (GQA) models.

The expensive exports are session fixtures (tests/trainer/conftest.py); each
runs the real pipeline, verification included.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from tinygen import TextGenerator
from tinygen.errors import TinygenError
from tinygen.manifest import load_manifest
from tinygen_trainer.cli import main
from tinygen_trainer.export import ExportConfig, export_model, pipeline, run_export
from tinygen_trainer.export.assets import write_tokenizer
from tinygen_trainer.export.contract import generation_defaults
from tinygen_trainer.export.torchscript import TRACE_BATCH, TRACE_PAST

STEPS = 32


def _hf_config(src):
    return json.loads((src / "config.json").read_text())


def _reference_model(src):
    return AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()


# -- ONNX ---------------------------------------------------------------------

def test_onnx_export_writes_a_tinygen_model_dir(onnx_result, tiny_source_dir):
    out = onnx_result.path
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model.onnx.data", "tinygen.json",
                                                   "tokenizer.json"]
    assert (out / "tokenizer.json").read_bytes() == \
        (tiny_source_dir / "tokenizer.json").read_bytes()

    manifest = load_manifest(out)
    config = _hf_config(tiny_source_dir)
    heads = config.get("num_attention_heads", config.get("n_head"))
    assert manifest.num_layers == config.get("num_hidden_layers", config.get("n_layer")) == 2
    assert manifest.num_attention_heads == heads == 4
    assert manifest.num_kv_heads == config.get("num_key_value_heads", heads)
    assert manifest.head_size == 16
    assert manifest.context_window == 128
    assert manifest.vocab_size == config["vocab_size"]
    assert manifest.eos_token_ids == (config["eos_token_id"],)
    assert manifest.quantization is None
    assert (manifest.dtype, manifest.model_file) == ("float32", "model.onnx")

    # The graph carries the cache the manifest describes: 2 KV heads under Llama's GQA.
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "model.onnx"))
    inputs = {i.name: i.shape for i in session.get_inputs()}
    assert [inputs[name][1] for name in manifest.past_names()] == [manifest.num_kv_heads] * 4
    assert {o.name for o in session.get_outputs()} == {"logits", *manifest.present_names()}

    report, = onnx_result.reports
    assert (report.matched, report.steps) == (STEPS, STEPS)
    assert report.line().startswith(
        "verified: 32/32 greedy tokens match PyTorch, max |logit diff| ")
    assert report.max_logit_diff < 1e-3


def test_export_model_prints_the_verification_line(tiny_gpt2_dir, tmp_path, capsys):
    path = export_model(tiny_gpt2_dir, tmp_path / "out")
    assert path == tmp_path / "out"
    stdout = capsys.readouterr().out
    assert "verified: 32/32 greedy tokens match PyTorch, max |logit diff| " in stdout


@pytest.mark.parametrize("options", [["--graph", "optimum"], ["--format", "torchscript"]])
def test_export_prints_no_library_noise(tiny_gpt2_dir, tmp_path, options):
    """transformers and optimum logged lines no user can act on (`torch_dtype` is deprecated,
    tied-weight initializers, `loss_type=None`). A fresh process: transformers says each
    line once per process, so an earlier test's export would hide it here."""
    code = "import sys; from tinygen_trainer.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", code, "export", str(tiny_gpt2_dir),
                           str(tmp_path / "out"), *options],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "wrote " in done.stdout
    assert done.stderr == ""


def test_only_the_known_noise_is_dropped_and_only_during_the_export():
    import io
    import logging

    from transformers.utils import logging as transformers_logging

    from tinygen_trainer.export.noise import library_noise_dropped

    written = io.StringIO()
    handler = logging.StreamHandler(written)  # as transformers' own, on its library logger
    transformers_logging.get_logger().addHandler(handler)
    logger = transformers_logging.get_logger("transformers.modeling_utils")
    try:
        with library_noise_dropped():
            logger.warning("`torch_dtype` is deprecated! Use `dtype` instead!")
            logger.warning("You are using the default legacy behaviour of the <class 'transformers."
                           "models.llama.tokenization_llama_fast.LlamaTokenizerFast'>. This is "
                           "expected, and simply means ...")  # a Mistral source's tokenizer
            logger.warning("Some weights of GPT2LMHeadModel were not initialized")  # actionable
        logger.warning("`torch_dtype` is deprecated! Use `dtype` instead!")
    finally:
        transformers_logging.get_logger().removeHandler(handler)
    assert written.getvalue() == ("Some weights of GPT2LMHeadModel were not initialized\n"
                                  "`torch_dtype` is deprecated! Use `dtype` instead!\n")


def test_export_replaces_an_earlier_export(tiny_gpt2_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "tinygen.json").write_text('{"model_file": "old.onnx"}')
    (out / "old.onnx").write_text("from the last export")
    (out / "config.json").write_text("{}")  # a side file an optimum export writes
    run_export(ExportConfig(src=tiny_gpt2_dir, out=out, verify=False))
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model.onnx.data", "tinygen.json",
                                                   "tokenizer.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging left behind


def test_replacements_are_copied_and_named(tiny_gpt2_dir, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(tiny_gpt2_dir, src)
    (src / "replacements.json").write_text(json.dumps(
        {"format_version": 1, "encode": [{"pattern": "THE END", "token": "<|endoftext|>"}]}))
    out = tmp_path / "out"
    run_export(ExportConfig(src=src, out=out, verify=False))
    assert load_manifest(out).replacements_file == "replacements.json"
    assert (out / "replacements.json").read_bytes() == (src / "replacements.json").read_bytes()


def test_generation_defaults_keep_only_options_tinygen_has():
    hf = {"do_sample": True, "temperature": 0.7, "top_k": 50, "top_p": 5.0, "max_length": 20,
          "bos_token_id": 0, "repetition_penalty": None}
    assert generation_defaults(hf) == {"do_sample": True, "temperature": 0.7, "top_k": 50}


def test_generation_defaults_carry_stop_strings_and_suppressed_tokens_under_tinygen_names():
    assert generation_defaults({"stop_strings": "\n\n", "suppress_tokens": [3, 7]}) == \
        {"stop": ["\n\n"], "exclude_ids": [3, 7]}
    assert generation_defaults({"stop_strings": ["END", "##"]}) == {"stop": ["END", "##"]}
    assert generation_defaults({"stop_strings": [""]}) == {}  # tinygen refuses an empty stop


@pytest.mark.parametrize("add_bos", [False, True])
def test_prompts_are_tokenized_as_transformers_does_when_the_config_sets_bos(
        tiny_llama_dir, tmp_path, add_bos):
    """Llama's tokenizer class rewrites tokenizer.json's BOS template from add_bos_token when
    transformers loads it; the file copied as is kept the BOS that add_bos_token false drops."""
    src = shutil.copytree(tiny_llama_dir, tmp_path / "src")
    config = json.loads((src / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="LlamaTokenizerFast", add_bos_token=add_bos)
    (src / "tokenizer_config.json").write_text(json.dumps(config))
    out = export_model(src, tmp_path / "model")
    text = "To be, or not to be"
    expected = AutoTokenizer.from_pretrained(src)(text).input_ids
    assert TextGenerator(out, device="cpu").tokenizer.encode(text) == expected
    assert (expected[0] == 1) == add_bos  # <s> is id 1


def test_a_models_stop_strings_become_the_runtimes_default_stop(tiny_gpt2_dir, tmp_path):
    src = shutil.copytree(tiny_gpt2_dir, tmp_path / "src")
    (src / "generation_config.json").write_text(json.dumps({"stop_strings": "\n"}))
    out = export_model(src, tmp_path / "model", verify=False)
    assert TextGenerator(out, device="cpu").defaults.stop == ("\n",)


# -- int8 ---------------------------------------------------------------------

def _mode(path):
    return path.stat().st_mode & 0o777


def test_the_weights_file_is_as_readable_as_the_graph(onnx_result, int8_result):
    # onnx writes external data 0600 whatever the umask: a served or packaged folder needs more.
    for out in (onnx_result.path, int8_result.path):
        assert _mode(out / "model.onnx.data") == _mode(out / "model.onnx") == \
            _mode(out / "tinygen.json")


def test_int8_export_is_smaller_and_reported(int8_result, onnx_result, model_bytes):
    out = int8_result.path
    assert model_bytes(out) < model_bytes(onnx_result.path)
    manifest = load_manifest(out)
    assert manifest.quantization == "int8"
    graph = onnx.load(str(out / "model.onnx")).graph
    int8_types = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    assert any(i.data_type in int8_types for i in graph.initializer)

    fp32, int8 = int8_result.reports
    assert fp32.exact  # the float32 graph passed the strict check before quantizing
    assert int8.label == "int8" and int8.steps == STEPS and 0 <= int8.matched <= STEPS
    assert int8.line().startswith("int8: ") and np.isfinite(int8.max_logit_diff)


def test_int8_of_a_graph_with_external_data(onnx_result, tmp_path):
    """Graphs over 2 GB keep their weights in a side file; quantizing must carry that layout."""
    import onnxruntime as ort

    from tinygen_trainer.export.onnx_export import external_data_files
    from tinygen_trainer.export.quantize import quantize_int8

    path = tmp_path / "model.onnx"
    onnx.save(onnx.load(str(onnx_result.path / "model.onnx")), str(path),
              save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx_data", size_threshold=0)
    quantize_int8(path)
    data = external_data_files(path)
    assert data and "model.onnx_data" not in data  # the float32 weights are gone...
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model.onnx", *data])
    ort.InferenceSession(str(path))  # ...and the int8 ones load from beside the graph


# -- TorchScript --------------------------------------------------------------

def _script_step(module, ids, past, past_len, mask=None, positions=None):
    ids = torch.as_tensor(ids)
    batch, new = ids.shape
    if mask is None:
        mask = torch.ones(batch, past_len + new, dtype=torch.long)
    if positions is None:
        positions = torch.arange(past_len, past_len + new).expand(batch, new)
    with torch.no_grad():
        logits, *present = module(ids, mask, positions, *past)
    return logits, present


def _empty_past(manifest, batch=1):
    return [torch.zeros(batch, manifest.num_kv_heads, 0, manifest.head_size)
            for _ in manifest.past_names()]


def test_torchscript_greedy_decoding_equals_generate(torchscript_result, tiny_source_dir):
    out = torchscript_result.path
    assert sorted(p.name for p in out.iterdir()) == ["model.pt", "tinygen.json", "tokenizer.json"]
    manifest = load_manifest(out)
    assert manifest.model_file == "model.pt"
    assert torchscript_result.reports[0].line().startswith("verified: 32/32 ")

    model = _reference_model(tiny_source_dir)
    prompt = AutoTokenizer.from_pretrained(tiny_source_dir)("The quick brown fox").input_ids
    eos = list(manifest.eos_token_ids)
    config = GenerationConfig(do_sample=False, max_new_tokens=STEPS, min_new_tokens=STEPS,
                              use_cache=True, eos_token_id=eos, pad_token_id=eos[0])
    with torch.no_grad():
        expected = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt)),
                                  generation_config=config, use_model_defaults=False)
    expected = expected[0, len(prompt):].tolist()

    module = torch.jit.load(str(out / "model.pt"))
    past, past_len, feed, tokens = _empty_past(manifest), 0, prompt, []
    for _ in range(STEPS):
        logits, past = _script_step(module, [feed], past, past_len)
        past_len += len(feed)
        scores = logits[0, -1].clone()
        scores[eos] = -float("inf")  # what min_new_tokens does in generate
        tokens.append(int(scores.argmax()))
        feed = [tokens[-1]]
    assert tokens == expected
    assert past[0].shape == (1, manifest.num_kv_heads, len(prompt) + STEPS - 1, manifest.head_size)


@pytest.mark.parametrize("chunks", [(5, 1, 4, 2), (1, 1, 9)])
def test_torchscript_trace_works_at_other_past_lengths(torchscript_result, tiny_source_dir, chunks):
    manifest = torchscript_result.manifest
    past_lengths = list(np.cumsum((0,) + chunks[:-1]))
    assert TRACE_PAST not in past_lengths  # the trace was recorded with another past length
    ids = torch.randint(0, manifest.vocab_size, (1, sum(chunks)),
                        generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = _reference_model(tiny_source_dir)(ids).logits

    module = torch.jit.load(str(torchscript_result.path / "model.pt"))
    past, start, pieces = _empty_past(manifest), 0, []
    for n in chunks:
        logits, past = _script_step(module, ids[:, start:start + n], past, start)
        pieces.append(logits)
        start += n
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-4, rtol=1e-4)


def test_torchscript_handles_left_padded_batches(torchscript_result, tiny_source_dir):
    manifest = torchscript_result.manifest
    batch = 3
    assert batch != TRACE_BATCH
    ids = torch.randint(0, manifest.vocab_size, (batch, 6),
                        generator=torch.Generator().manual_seed(2))
    mask = torch.ones(batch, 6, dtype=torch.long)
    mask[0, :2] = 0  # row 0 is left-padded by two
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    model = _reference_model(tiny_source_dir)
    with torch.no_grad():
        expected = model(ids, attention_mask=mask, position_ids=positions).logits

    module = torch.jit.load(str(torchscript_result.path / "model.pt"))
    prefill, past = _script_step(module, ids[:, :4], _empty_past(manifest, batch), 0,
                                 mask[:, :4], positions[:, :4])
    step, _ = _script_step(module, ids[:, 4:], past, 4, mask, positions[:, 4:])
    got = torch.cat([prefill, step], dim=1)
    real = mask.bool()  # padded positions' outputs are meaningless in both
    torch.testing.assert_close(got[real], expected[real], atol=1e-4, rtol=1e-4)


# -- verification can fail -----------------------------------------------------

def _perturb_largest_initializer(path):
    model = onnx.load(str(path))
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    weights = numpy_helper.to_array(init)
    noise = np.random.default_rng(0).normal(0, weights.std(), weights.shape).astype(weights.dtype)
    init.CopyFrom(numpy_helper.from_array(weights + noise, init.name))
    onnx.save(model, str(path))


def test_verification_rejects_a_broken_onnx_graph(tiny_gpt2_dir, tmp_path, monkeypatch):
    real_export = pipeline.export_onnx

    def broken_export(src, dest):
        signature = real_export(src, dest)
        _perturb_largest_initializer(dest)
        return signature

    monkeypatch.setattr(pipeline, "export_onnx", broken_export)
    out = tmp_path / "out"
    out.mkdir()
    (out / "tinygen.json").write_text('{"model_file": "marker"}')
    (out / "marker").write_text("the earlier export")
    with pytest.raises(TinygenError, match="verification failed: the ONNX graph") as info:
        run_export(ExportConfig(src=tiny_gpt2_dir, out=out, graph="optimum"))
    assert "\n" not in str(info.value)
    # OUT is untouched and the staging directory is gone.
    assert (out / "marker").read_text() == "the earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_verification_rejects_a_torchscript_of_another_model(tiny_llama_dir, tmp_path, monkeypatch):
    real_export = pipeline.export_torchscript

    def other_model_export(model, manifest, dest):
        other = copy.deepcopy(model)
        torch.manual_seed(3)
        with torch.no_grad():
            for p in other.parameters():
                p.add_(torch.randn_like(p) * 0.3)
        real_export(other, manifest, dest)

    monkeypatch.setattr(pipeline, "export_torchscript", other_model_export)
    with pytest.raises(TinygenError, match="verification failed: the TorchScript module"):
        run_export(ExportConfig(src=tiny_llama_dir, out=tmp_path / "out", format="torchscript"))
    assert not (tmp_path / "out").exists()


# -- bad input -----------------------------------------------------------------

def _copy_without(src, dest, *names):
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(*names))
    return dest


def _exported(folder):
    folder.mkdir()
    (folder / "tinygen.json").write_text("{}")
    (folder / "model.onnx").write_bytes(b"")
    return folder


@pytest.mark.parametrize("make_src, message", [
    (lambda tmp, gpt2: tmp / "missing", "source model not found"),
    (lambda tmp, gpt2: _copy_without(gpt2, tmp / "src", "config.json"), "no config.json"),
    (lambda tmp, gpt2: gpt2 / "config.json", "not a file"),
    (lambda tmp, gpt2: _exported(tmp / "exported"), "is already an exported tinygen model; export the"),
    (lambda tmp, gpt2: _copy_without(gpt2, tmp / "src", "*.safetensors"), "no model weights"),
    (lambda tmp, gpt2: _copy_without(gpt2, tmp / "src", "tokenizer*", "special_tokens_map.json"),
     "no tokenizer"),
    # save_pretrained writes tokenizer_config.json for any model: alone it is no vocabulary
    (lambda tmp, gpt2: _copy_without(gpt2, tmp / "src", "tokenizer.json", "special_tokens_map.json"),
     "no tokenizer"),
])
def test_bad_sources_are_one_line_errors(tiny_gpt2_dir, tmp_path, make_src, message):
    src = make_src(tmp_path, tiny_gpt2_dir)
    with pytest.raises(TinygenError, match=message) as info:
        run_export(ExportConfig(src=src, out=tmp_path / "out"))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("architectures, model_type, message", [
    (["BertForMaskedLM"], "bert", "BertForMaskedLM is not a causal language model"),
    (["GPT2Model"], "gpt2", "GPT2Model is not a causal language model"),
    (["ViTForImageClassification"], "vit", "'vit' is not a causal language model"),
])
def test_a_model_that_is_not_a_causal_lm_is_refused(tiny_gpt2_dir, tmp_path, architectures,
                                                    model_type, message):
    src = _copy_without(tiny_gpt2_dir, tmp_path / "src")
    config = {**_hf_config(src), "architectures": architectures, "model_type": model_type}
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(TinygenError, match=message):
        run_export(ExportConfig(src=src, out=tmp_path / "out"))


def test_replacements_naming_an_unknown_token_are_refused(tiny_gpt2_dir, tmp_path):
    src = _copy_without(tiny_gpt2_dir, tmp_path / "src")
    (src / "replacements.json").write_text(json.dumps({"ban": ["<|nope|>"]}))
    with pytest.raises(TinygenError, match="'<|nope|>'"):
        run_export(ExportConfig(src=src, out=tmp_path / "out"))


@pytest.mark.parametrize("options, message", [
    ({"quantize": "int3"}, "unknown quantization 'int3'; choose one of: int8, int4"),
    ({"format": "tflite"}, "unknown format 'tflite'; choose one of: onnx, torchscript"),
    ({"format": "torchscript", "quantize": "int8"}, "works only with --format onnx"),
])
def test_bad_options_are_refused_by_the_config(tiny_gpt2_dir, tmp_path, options, message):
    with pytest.raises(TinygenError, match=message):
        ExportConfig(src=tiny_gpt2_dir, out=tmp_path / "out", **options)


def test_a_non_empty_directory_without_manifest_is_not_overwritten(tiny_gpt2_dir, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(TinygenError, match="not empty and has no tinygen.json"):
        run_export(ExportConfig(src=tiny_gpt2_dir, out=out))
    assert (out / "thesis.tex").read_text() == "years of work"


def test_an_earlier_export_with_the_users_files_beside_it_is_not_replaced(tiny_gpt2_dir, tmp_path):
    out = tmp_path / "model"
    run_export(ExportConfig(src=tiny_gpt2_dir, out=out))
    run_export(ExportConfig(src=tiny_gpt2_dir, out=out, quantize="int8"))  # its own files: replaced
    (out / "notes.txt").write_text("mine")
    with pytest.raises(TinygenError, match="holds notes.txt beside the model it would replace"):
        run_export(ExportConfig(src=tiny_gpt2_dir, out=out))
    assert (out / "notes.txt").read_text() == "mine"


def test_an_output_directory_holding_the_source_is_refused(tiny_gpt2_dir, tmp_path):
    out = tmp_path / "old-export"
    src = _copy_without(tiny_gpt2_dir, out / "src")
    (out / "tinygen.json").write_text("{}")  # replacing OUT would delete SRC
    with pytest.raises(TinygenError, match="must not contain the source"):
        run_export(ExportConfig(src=src, out=out))
    assert (src / "config.json").is_file()


def test_the_current_folder_as_output_is_refused_before_any_work(tiny_gpt2_dir, tmp_path,
                                                                 monkeypatch, capsys):
    """`tinygen-train export SRC .` did the whole export, then could not move it into place."""
    here = tmp_path / "d"
    (here / "sub").mkdir(parents=True)
    monkeypatch.chdir(here / "sub")
    for out in (".", "./"):
        assert main(["export", str(tiny_gpt2_dir), out]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"tinygen-train: error: {Path(out)} is the current folder or holds it, and an "
                              f"export replaces its output folder whole; give a folder inside it"), err
    assert sorted(p.name for p in here.rglob("*")) == ["sub"]


def test_a_broken_tokenizer_is_named_where_it_is(tiny_gpt2_dir, tmp_path):
    """It was named as its copy in the export's staging folder, deleted by then."""
    src = _copy_without(tiny_gpt2_dir, tmp_path / "src")
    (src / "tokenizer.json").write_text('{"x": 1}')
    with pytest.raises(TinygenError) as info:
        run_export(ExportConfig(src=src, out=tmp_path / "out"))
    assert str(info.value).startswith(f"{src / 'tokenizer.json'}: not a loadable tokenizers file (")


def test_slow_tokenizer_files_become_tokenizer_json(tiny_gpt2_dir, tmp_path):
    from tokenizers import Tokenizer

    src = _copy_without(tiny_gpt2_dir, tmp_path / "src", "tokenizer*", "special_tokens_map.json")
    # Only vocab.json + merges.txt, as a slow GPT-2 tokenizer ships.
    Tokenizer.from_file(str(tiny_gpt2_dir / "tokenizer.json")).model.save(str(src))
    dest = tmp_path / "dest"
    dest.mkdir()
    written = write_tokenizer(src, dest)
    original = Tokenizer.from_file(str(tiny_gpt2_dir / "tokenizer.json"))
    text = "The quick brown fox jumps over the lazy dog."
    assert Tokenizer.from_file(str(written)).encode(text).ids == original.encode(text).ids


# -- CLI -----------------------------------------------------------------------

def test_cli_export(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["export", str(tiny_llama_dir), str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "verified: 32/32 greedy tokens match PyTorch" in stdout
    assert load_manifest(out).num_kv_heads == 2


@pytest.mark.parametrize("args, message", [
    (["--quantize", "int3"], "unknown quantization 'int3'"),
    (["--format", "tflite"], "unknown format 'tflite'"),
    (["--format", "torchscript", "--quantize", "int8"], "works only with --format onnx"),
])
def test_cli_bad_options_exit_2_with_one_line(tiny_gpt2_dir, tmp_path, capsys, args, message):
    assert main(["export", str(tiny_gpt2_dir), str(tmp_path / "out"), *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("tinygen-train: error: ") and message in captured.err


def test_cli_missing_source_exits_2(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "source model not found" in err


def test_cli_no_verify_skips_the_check(tiny_gpt2_dir, tmp_path, capsys):
    assert main(["export", str(tiny_gpt2_dir), str(tmp_path / "out"), "--no-verify"]) == 0
    assert "verified" not in capsys.readouterr().out


def test_a_head_size_onnxruntimes_attention_cannot_take_goes_to_optimum(tiny_gpt2_dir, tmp_path):
    """GroupQueryAttention needs heads of a multiple of 8: the default export crashed with a
    traceback (and with --no-verify wrote a model that crashed in tinygen)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    src = tmp_path / "src"
    shutil.copytree(tiny_gpt2_dir, src)
    config = GPT2Config.from_pretrained(src)
    config.n_embd = 48  # 4 heads of 12
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(src)
    _fused_refused_then_optimum(src, tmp_path, multiple=8, head_size=12)


def test_a_llama_head_size_rotary_attention_cannot_take_goes_to_optimum(tiny_llama_dir, tmp_path):
    """With rotary inside it, GroupQueryAttention needs heads of a multiple of 16: a Llama with
    heads of 24 exported a fused graph that crashed onnxruntime at its check (and in tinygen)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    src = tmp_path / "src"
    shutil.copytree(tiny_llama_dir, src)
    config = LlamaConfig.from_pretrained(src)
    config.hidden_size, config.num_attention_heads, config.num_key_value_heads = 96, 4, 2
    config.head_dim = 24
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(src)
    _fused_refused_then_optimum(src, tmp_path, multiple=16, head_size=24)


def _fused_refused_then_optimum(src, tmp_path, multiple: int, head_size: int) -> None:
    """--graph fused names the rule; the default export takes optimum's graph, which runs."""
    with pytest.raises(TinygenError, match=f"head size that is a multiple of {multiple}; this "
                                           f"model's is {head_size}: export with --graph optimum"):
        run_export(ExportConfig(src=src, out=tmp_path / "fused", graph="fused"))
    out = tmp_path / "auto"
    run_export(ExportConfig(src=src, out=out))  # verified against transformers, as every export
    assert load_manifest(out).kv_cache == "concat"  # optimum's
    assert len(TextGenerator(out).generate("Once", seed=1, max_new_tokens=4)[0].token_ids) == 4


def test_a_configuration_without_a_fused_graph_takes_the_optimum_one(tiny_gpt2_dir, tmp_path):
    """relu GPT-2 (like gelu Llama or a dynamic rope) has no fused graph: the default export
    refused; now it says so and exports the optimum graph, which matches transformers."""
    src = tmp_path / "src"
    shutil.copytree(tiny_gpt2_dir, src)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "activation_function": "relu"}))
    lines = []
    run_export(ExportConfig(src=src, out=tmp_path / "auto"), echo=lines.append)
    assert "GPT-2 activation 'relu' has no fused graph: exporting the optimum graph instead" in lines
    assert load_manifest(tmp_path / "auto").kv_cache == "concat"
    with pytest.raises(TinygenError, match="has no fused graph; export with --graph optimum"):
        run_export(ExportConfig(src=src, out=tmp_path / "refused", graph="fused"))
    with pytest.raises(TinygenError, match="has no fused graph, which --quantize int4 needs; export "
                                           "without it"):
        run_export(ExportConfig(src=src, out=tmp_path / "refused", quantize="int4"))


def test_an_option_only_the_fused_graph_has_names_the_head_size_that_rules_it_out(tiny_gpt2_dir,
                                                                                 tmp_path):
    """Not "drop --graph optimum", which the user did not give and which would not help."""
    from transformers import GPT2Config, GPT2LMHeadModel

    src = tmp_path / "src"
    shutil.copytree(tiny_gpt2_dir, src)
    config = GPT2Config.from_pretrained(src)
    config.n_embd = 48  # 4 heads of 12
    GPT2LMHeadModel(config).save_pretrained(src)
    with pytest.raises(TinygenError, match="--quantize int4 needs the fused graph; this model's "
                                           "head size, 12, is not a multiple of 8"):
        run_export(ExportConfig(src=src, out=tmp_path / "out", quantize="int4"))
