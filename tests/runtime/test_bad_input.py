"""Missing, corrupt or mismatched model files, and bad prompts: one clear TinygenError each."""

import json
import shutil

import pytest

from tinygen import ModelFormatError, TextGenerator, TinygenError
from tinygen.manifest import Manifest, load_manifest


@pytest.fixture
def model_copy(optimum_gpt2_dir, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(optimum_gpt2_dir, target)
    return target


def test_missing_directory(optimum_gpt2_dir):
    with pytest.raises(ModelFormatError, match="model directory not found"):
        TextGenerator("/no/such/model")
    with pytest.raises(ModelFormatError, match=r"model.onnx is a file; give the model's folder \("):
        TextGenerator(optimum_gpt2_dir / "model.onnx")


def test_a_model_hub_name_is_told_there_is_no_download(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelFormatError, match=r"^model directory not found: HuggingFaceTB/"
                       r"SmolLM2-135M \(tinygen downloads nothing; .*'tinygen-train export "
                       r"FOLDER OUT' and give OUT\)$"):
        TextGenerator("HuggingFaceTB/SmolLM2-135M")
    (tmp_path / "runs").mkdir()  # a folder of the user's own: a plain typo, no hub talk
    with pytest.raises(ModelFormatError, match=r"^model directory not found: runs/modle$"):
        TextGenerator("runs/modle")


def test_directory_without_manifest_or_config(tmp_path):
    with pytest.raises(ModelFormatError, match="no tinygen.json or config.json"):
        TextGenerator(tmp_path)


@pytest.mark.parametrize("name", ["model.onnx", "tokenizer.json"])
def test_missing_file(model_copy, name):
    (model_copy / name).unlink()
    with pytest.raises(ModelFormatError, match=f"missing {name}"):
        TextGenerator(model_copy)


def test_a_transformers_folder_is_told_to_export(tiny_gpt2_dir):
    with pytest.raises(ModelFormatError, match=r"missing model.onnx \(a transformers model folder: "
                                               r"export it first, 'tinygen-train export .* OUT'\)"):
        TextGenerator(tiny_gpt2_dir)


def test_corrupt_onnx(model_copy):
    data = (model_copy / "model.onnx").read_bytes()
    (model_copy / "model.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelFormatError, match="not a loadable ONNX model"):
        TextGenerator(model_copy)


def test_corrupt_tokenizer(model_copy):
    (model_copy / "tokenizer.json").write_text("{ not json")
    with pytest.raises(ModelFormatError, match="not a loadable tokenizer.json"):
        TextGenerator(model_copy)


def test_corrupt_config(model_copy):
    (model_copy / "config.json").write_text("{ broken")
    with pytest.raises(ModelFormatError, match="not valid JSON"):
        TextGenerator(model_copy)


def test_manifest_that_disagrees_with_the_graph(model_copy):
    manifest = load_manifest(model_copy)
    Manifest.from_json({**manifest.to_json(), "num_kv_heads": 2}).save(model_copy)
    with pytest.raises(ModelFormatError, match="KV cache is 4 heads x 16, manifest says 2 x 16"):
        TextGenerator(model_copy)
    Manifest.from_json({**manifest.to_json(), "num_layers": 3}).save(model_copy)
    with pytest.raises(ModelFormatError, match="no input 'past_key_values.2.key'"):
        TextGenerator(model_copy)


@pytest.mark.parametrize("graph", ["optimum", "fused"])
def test_a_manifest_promising_less_than_the_graph_needs(graph, optimum_gpt2_dir, exported_llama_dir,
                                                         tmp_path):
    """Fewer layers than the graph has, or another vocabulary width: one line on load,
    not an onnxruntime error at the first run."""
    source = optimum_gpt2_dir if graph == "optimum" else exported_llama_dir
    model = shutil.copytree(source, tmp_path / "model")
    manifest = load_manifest(model)
    Manifest.from_json({**manifest.to_json(), "num_layers": manifest.num_layers - 1}).save(model)
    with pytest.raises(ModelFormatError, match=f"graph input 'past_key_values.{manifest.num_layers - 1}"
                                               r"\.key' is not one the manifest names"):
        TextGenerator(model)
    Manifest.from_json({**manifest.to_json(), "vocab_size": manifest.vocab_size + 1}).save(model)
    with pytest.raises(ModelFormatError, match=f"logits are {manifest.vocab_size} wide, the manifest's "
                                               f"vocab_size is {manifest.vocab_size + 1}"):
        TextGenerator(model)


def test_a_torchscript_export_is_refused_with_what_to_do(optimum_gpt2_dir, tmp_path):
    model = shutil.copytree(optimum_gpt2_dir, tmp_path / "model")
    (model / "model.pt").write_bytes(b"PK\x03\x04 not onnx")
    manifest = load_manifest(model)
    Manifest.from_json({**manifest.to_json(), "model_file": "model.pt"}).save(model)
    with pytest.raises(ModelFormatError, match="TorchScript module.*export with --format onnx"):
        TextGenerator(model)


def test_manifest_round_trip_and_validation(model_copy):
    manifest = load_manifest(model_copy)
    assert Manifest.from_json(json.loads(json.dumps(manifest.to_json()))) == manifest
    data = manifest.to_json()
    with pytest.raises(ModelFormatError, match="unknown key 'colour'"):
        Manifest.from_json({**data, "colour": "blue"})
    with pytest.raises(ModelFormatError, match="newer than this tinygen reads"):
        Manifest.from_json({**data, "format_version": 99})
    with pytest.raises(ModelFormatError, match="missing key 'vocab_size'"):
        Manifest.from_json({k: v for k, v in data.items() if k != "vocab_size"})
    with pytest.raises(ModelFormatError, match="'num_layers' must be a positive integer"):
        Manifest.from_json({**data, "num_layers": 0})
    vocab = data["vocab_size"]
    for key, value in (("eos_token_ids", [vocab]), ("bos_token_id", vocab), ("pad_token_id", vocab)):
        with pytest.raises(ModelFormatError, match=f"'{key}' has token id {vocab}, outside the "
                                                   f"vocabulary \\(0..{vocab - 1}\\)"):
            Manifest.from_json({**data, key: value})


def test_prompt_longer_than_the_window(optimum_gpt2_dir):
    gen = TextGenerator(optimum_gpt2_dir)
    with pytest.raises(TinygenError, match=r"prompt is \d+ tokens; the model's window is 128 tokens"):
        gen.generate("Once upon a time " * 100)


@pytest.mark.parametrize("options,message", [
    ({"top_p": 1.2}, "top_p must be in"),
    ({"temperature": -0.5}, "temperature must be a finite number >= 0"),
    ({"temperature": float("inf")}, "temperature must be a finite number >= 0"),
    ({"n": 0}, "n must be an integer >= 1"),
    ({"top_k": -1}, "top_k must be an integer >= 0"),
    ({"typical_p": 0}, "typical_p must be in"),
    ({"repetition_penalty": 0}, "repetition_penalty must be a finite number > 0"),
    ({"repetition_penalty": float("inf")}, "repetition_penalty must be a finite number > 0"),
    ({"tempreature": 0.5}, "unknown generation option 'tempreature'"),
    ({"seed": -3}, "seed must be >= 0"),
    ({"exclude_strings": ["zzqq-no-token"]}, "exclude_strings: 'zzqq-no-token' is not a token of this model"),
])
def test_bad_generation_options(optimum_gpt2_dir, options, message):
    gen = TextGenerator(optimum_gpt2_dir)
    with pytest.raises(TinygenError, match=message):
        gen.generate("Hi", **options)


@pytest.mark.parametrize("call,message", [
    (lambda gen: gen.generate("caf\udce9"), r"the prompt is not UTF-8 text \(at character 3\); give it as UTF-8"),
    (lambda gen: gen.generate(["Hi", "\udce9"]), r"the prompt is not UTF-8 text \(at character 0\)"),
    (lambda gen: gen.generate("Hi", stop=["\udce9"]), "stop '.udce9' is not UTF-8 text"),
    (lambda gen: gen.generate("Hi", exclude_chars="\udce9"), "exclude_chars is not UTF-8 text"),
    (lambda gen: gen.generate(b"Hi"), "a prompt must be a string, a list of token ids or a list of "
                                      "prompts, got bytes"),
    (lambda gen: gen.generate(5), "a prompt must be .* got int"),
    (lambda gen: gen.next_token_probs(["a", "b"]), "next_token_probs takes one prompt"),
    (lambda gen: gen.stream(["a", "b"]), "stream takes one prompt"),
    # A number was "stream takes one prompt ..., not a list of prompts"; ids not all ints were
    # "a list of prompts" too, or "a prompt must be ... a list of token ids, got list".
    (lambda gen: gen.stream(5), "^a prompt must be a string or a list of token ids, got int$"),
    (lambda gen: gen.next_token_probs(5),
     "^a prompt must be a string or a list of token ids, got int$"),
    (lambda gen: gen.stream([1.5]), "^token ids must be integers, got 1.5$"),
    (lambda gen: gen.generate([[1, True]]), "^token ids must be integers, got True$"),
])
def test_prompts_that_are_not_text_are_refused_by_name(optimum_gpt2_dir, call, message):
    """Bytes that were not UTF-8 reach Python as lone surrogates, which the tokenizer refuses
    with a TypeError; bytes as a prompt would iterate as token ids."""
    with pytest.raises(TinygenError, match=message):
        call(TextGenerator(optimum_gpt2_dir))


def test_an_empty_model_path_is_not_the_current_folder():
    with pytest.raises(TinygenError, match="model must be a model folder's path .* got an empty string"):
        TextGenerator("")


def test_paths_of_the_wrong_type_are_refused_by_name(optimum_gpt2_dir, tmp_path):
    """Path(5) is a TypeError that names no parameter."""
    gen = TextGenerator(optimum_gpt2_dir)
    for call, message in [
            (lambda: TextGenerator(model=5), "model must be a model folder's path (or None for the "
                                             "embedded model), got 5"),
            (lambda: TextGenerator(replacements=5.0), "replacements must be a replacements.json path "
                                                      "(or None for the model's own), got 5.0"),
            (lambda: gen.generate_to_file(5, "Hi"), "path must be the path of the file to write, got 5"),
            (lambda: gen.generate("Hi", dedupe=0.5, dedupe_against=[tmp_path]),
             f"dedupe_against must be a token cache's path, got [{tmp_path!r}]")]:
        with pytest.raises(TinygenError) as info:
            call()
        assert str(info.value) == message


def test_token_ids_outside_the_vocabulary(optimum_gpt2_dir):
    gen = TextGenerator(optimum_gpt2_dir)
    with pytest.raises(TinygenError, match="token id 99999 is outside the vocabulary"):
        gen.generate([1, 99999])


def test_missing_embedded_model_names_the_install_command(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tinymodel(name, *args, **kwargs):
        if name == "tinygen_tinymodel":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tinymodel)
    with pytest.raises(TinygenError, match="pip install tinygen-tinymodel"):
        TextGenerator()


def test_numpy_values_and_a_none_prompt_are_what_they_hold(optimum_gpt2_dir, tmp_path):
    """Seeds from a numpy Generator and token ids from argmax are common arguments."""
    import numpy as np

    gen = TextGenerator(optimum_gpt2_dir)
    plain = gen.generate([[5, 6], "Hi"], n=2, seed=3, max_new_tokens=4, top_k=5)
    numpy = gen.generate([np.array([5, 6]), "Hi"], n=np.int64(2), seed=np.int64(3),
                         max_new_tokens=np.int32(4), top_k=np.int64(5))
    assert list(numpy) == list(plain)
    assert gen.generate(None, seed=1, max_new_tokens=4) == gen.generate("", seed=1, max_new_tokens=4)
    assert gen.next_token_probs("Hi", top_n=np.int64(3)) == gen.next_token_probs("Hi", top_n=3)
    gen.generate_to_file(tmp_path / "t.txt", np.array([5, 6]), n=np.int64(2), seed=np.uint8(4),
                         max_new_tokens=np.int64(3))
    assert json.loads((tmp_path / "t.txt.tinygen.json").read_text())["texts"] == 2


@pytest.mark.parametrize("top_n", [0, -1, "3", 2.5, True])
def test_top_n_is_checked(optimum_gpt2_dir, top_n):
    with pytest.raises(TinygenError, match=f"top_n must be an integer >= 1, got {top_n!r}"):
        TextGenerator(optimum_gpt2_dir).next_token_probs("Hi", top_n=top_n)


# -- a fused export's weights file (model.onnx.data) -----------------------------------

@pytest.fixture
def fused_copy(exported_llama_dir, tmp_path):
    target = tmp_path / "fused"
    shutil.copytree(exported_llama_dir, target)
    assert (target / "model.onnx.data").is_file()
    return target


def test_a_folder_copied_without_its_weights_file(fused_copy):
    (fused_copy / "model.onnx.data").unlink()
    with pytest.raises(ModelFormatError, match="missing model.onnx.data, the file that holds its "
                                               "weights") as info:
        TextGenerator(fused_copy)
    assert "\n" not in str(info.value)


def test_a_truncated_weights_file(fused_copy):
    data = fused_copy / "model.onnx.data"
    whole = data.stat().st_size
    data.write_bytes(data.read_bytes()[: whole // 2])
    with pytest.raises(ModelFormatError, match=f"{whole // 2:,} bytes, but the graph reads "
                                               f"{whole:,}: a truncated copy"):
        TextGenerator(fused_copy)


def test_a_weights_file_outside_the_folder_is_refused(fused_copy):
    import onnx

    graph = onnx.load(str(fused_copy / "model.onnx"), load_external_data=False)
    for tensor in graph.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../elsewhere/model.onnx.data"
    onnx.save(graph, str(fused_copy / "model.onnx"))
    with pytest.raises(ModelFormatError, match="its weights file '../elsewhere/model.onnx.data' "
                                               "lies outside the model folder"):
        TextGenerator(fused_copy)


def test_the_whole_copy_loads_and_generates(fused_copy, exported_llama_dir):
    ids = [5, 6, 7]
    ours = TextGenerator(fused_copy).generate(ids, do_sample=False, max_new_tokens=4)[0]
    assert ours.token_ids == TextGenerator(exported_llama_dir).generate(
        ids, do_sample=False, max_new_tokens=4)[0].token_ids


def test_more_threads_than_cpus_is_refused_before_onnxruntime_makes_them(optimum_gpt2_dir):
    """onnxruntime creates every intra-op thread asked for: --threads 100000 took 10 GB."""
    import os

    too_many = (os.cpu_count() or 1) + 1
    with pytest.raises(TinygenError, match=f"threads must be at most {too_many - 1}, the CPUs this "
                                           f"machine has .*got {too_many}"):
        TextGenerator(optimum_gpt2_dir, threads=too_many)
    assert TextGenerator(optimum_gpt2_dir, threads=too_many - 1).generate("Hi", max_new_tokens=2, seed=0)


def test_a_huge_n_starts_at_once_and_holds_only_its_batch(optimum_gpt2_dir, tmp_path):
    """-n 99999999999999999999 was killed for memory building every row's prompt and seed
    before the first text: rows and seeds are made batch by batch."""
    import threading

    class AfterChecks(threading.Event):  # `_cancel` that says stop after a few decode steps
        def __init__(self, checks):
            super().__init__()
            self.left = checks

        def is_set(self):
            self.left -= 1
            return self.left < 0

    gen = TextGenerator(optimum_gpt2_dir)
    for greedy in (False, True):
        with pytest.raises(TinygenError, match="generation cancelled"):
            gen.generate("Hi", n=10**20, seed=3, do_sample=not greedy, max_new_tokens=2, batch_size=2,
                         _cancel=AfterChecks(5))
    batches = []
    real = gen.generate

    def one_batch(*args, **kwargs):  # the file's first batch, then an interruption
        if batches:
            raise KeyboardInterrupt
        batches.append(kwargs["seed"])
        return real(*args, **kwargs)

    gen.generate = one_batch
    target = tmp_path / "t.txt"
    with pytest.raises(KeyboardInterrupt):
        gen.generate_to_file(target, "Hi", n=10**20, seed=7, batch_size=2, max_new_tokens=2)
    assert batches == [[7, 8]] and target.read_text().count("seed") == 2
