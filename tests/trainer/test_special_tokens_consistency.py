"""The BOS / EOS a model is finetuned with are the ones its export makes the runtime add.

Llama's tokenizer class rebuilds tokenizer.json's template from tokenizer_config.json's
add_bos_token / add_eos_token when transformers loads a folder; export writes that
tokenizer, so finetuning must encode with it too (folder_tokenizer). Folders whose file
already encodes so keep it byte for byte: their token caches stay valid.
"""

from __future__ import annotations

import json
import shutil

import pytest
from tokenizers import Tokenizer, processors
from transformers import AutoTokenizer

from tinygen.tokenizer import TextTokenizer
from tinygen_trainer.data.encoder import Encoder
from tinygen_trainer.export.assets import write_tokenizer
from tinygen_trainer.training import TrainConfig, train
from tinygen_trainer.training.setup import build_encoder

from training_corpus import one_thread  # noqa: F401 (fixture)

DOCS = ["To be, or not to be", "The quick brown fox"]
BOS, EOS = 1, 2  # the tiny Llama's <s> and </s>


def _folder(model_dir, tmp_path, name="src", template=None, **config):
    """A copy of `model_dir` with `config` merged into tokenizer_config.json, and tokenizer.json's
    post-processor replaced by `template` where given."""
    src = shutil.copytree(model_dir, tmp_path / name)
    if template is not None:
        tokenizer = Tokenizer.from_file(str(src / "tokenizer.json"))
        tokenizer.post_processor = template
        tokenizer.save(str(src / "tokenizer.json"))
    path = src / "tokenizer_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
    return src


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(" ".join(DOCS) * 40, encoding="utf-8")
    return path


def _encoder(folder, corpus, tmp_path) -> Encoder:
    return build_encoder(TrainConfig(output_dir=tmp_path / "out", data=(corpus,), model=folder))[0]


def _stream(encoder: Encoder) -> list[int]:
    return encoder.encode(DOCS, progress=False)[0].tolist()


def _runtime(folder, tmp_path) -> TextTokenizer:
    """The tokenizer the runtime reads from `folder`'s export."""
    out = tmp_path / "exported"
    out.mkdir()
    return TextTokenizer(write_tokenizer(folder, out))


@pytest.fixture
def tinyllama_dir(tiny_llama_dir, tmp_path):
    """The TinyLlama / Llama-2 convention: tokenizer.json saved by LlamaTokenizerFast, its
    template adding <s>, and tokenizer_config.json saying add_bos_token true."""
    from transformers import LlamaTokenizerFast

    src = shutil.copytree(tiny_llama_dir, tmp_path / "tinyllama")
    LlamaTokenizerFast(tokenizer_file=str(src / "tokenizer.json"), bos_token="<s>",
                       eos_token="</s>", unk_token="<unk>", add_bos_token=True,
                       add_eos_token=False, legacy=False).save_pretrained(src)
    return src


def test_a_llama_is_trained_on_documents_that_start_as_its_prompts_do(tinyllama_dir, corpus,
                                                                       tmp_path):
    encoder = _encoder(tinyllama_dir, corpus, tmp_path)
    runtime = _runtime(tinyllama_dir, tmp_path)
    prompts = [runtime.encode(doc) for doc in DOCS]
    assert all(ids[0] == BOS and EOS not in ids for ids in prompts)
    # Each document: <s>, its text, </s>; generation continues a prompt that starts the same way.
    assert _stream(encoder) == [i for ids in prompts for i in ids + [EOS]]
    assert _stream(encoder) == [i for doc in DOCS
                                for i in AutoTokenizer.from_pretrained(tinyllama_dir)(doc).input_ids
                                + [EOS]]


@pytest.mark.parametrize("config, bos, eos", [
    ({"add_bos_token": False}, False, False),
    ({"add_bos_token": False, "add_eos_token": True}, False, True),
    ({"add_bos_token": True, "add_eos_token": True}, True, True),
])
def test_finetuning_adds_the_special_tokens_the_config_says_not_the_files_template(
        tiny_llama_dir, corpus, tmp_path, config, bos, eos):
    """tokenizer.json's template adds <s> only; the config says otherwise, and transformers (so
    the pretrained model, and the export) follows the config."""
    src = _folder(tiny_llama_dir, tmp_path, tokenizer_class="LlamaTokenizerFast", **config)
    encoder = _encoder(src, corpus, tmp_path)
    expected = AutoTokenizer.from_pretrained(src)(DOCS[0]).input_ids
    assert (expected[0] == BOS, expected[-1] == EOS) == (bos, eos)
    runtime = _runtime(src, tmp_path)
    prompt = expected[:-1] if eos else expected  # continued, not ended: no template EOS
    assert runtime.encode(DOCS[0]) == prompt
    assert encoder.encode(DOCS[:1], progress=False)[0].tolist() == prompt + [EOS]
    # Export writes the very tokenizer the run encoded with: the same fingerprint.
    assert Encoder(runtime.tokenizer, EOS).fingerprint == encoder.fingerprint


def test_a_config_adding_bos_to_a_file_without_one_trains_with_bos(tiny_llama_dir, corpus,
                                                                   tmp_path):
    src = _folder(tiny_llama_dir, tmp_path, template=processors.ByteLevel(trim_offsets=False),
                  tokenizer_class="LlamaTokenizerFast", add_bos_token=True)
    assert Tokenizer.from_file(str(src / "tokenizer.json")).encode(DOCS[0]).ids[0] != BOS
    stream = _stream(_encoder(src, corpus, tmp_path))
    ends = [i + 1 for i, token in enumerate(stream) if token == EOS]
    assert [stream[start] for start in [0, *ends[:-1]]] == [BOS, BOS]
    assert _runtime(src, tmp_path).encode(DOCS[0])[0] == BOS


@pytest.mark.parametrize("model, config", [
    ("gpt2", {}),  # GPT-2: no tokenizer_config keys
    ("gpt2", {"tokenizer_class": "GPT2Tokenizer", "add_bos_token": False}),  # SmolLM2 style
    ("gpt2", {"tokenizer_class": "GPT2Tokenizer", "add_bos_token": True}),  # ignored by the fast one
    ("llama", {}),
    ("llama", {"tokenizer_class": "LlamaTokenizerFast", "add_bos_token": True,
               "add_eos_token": False}),  # agrees with the file's template
])
def test_a_folder_whose_file_encodes_as_transformers_keeps_it_byte_for_byte(
        tiny_gpt2_dir, tiny_llama_dir, corpus, tmp_path, model, config):
    src = _folder(tiny_gpt2_dir if model == "gpt2" else tiny_llama_dir, tmp_path, **config)
    encoder = _encoder(src, corpus, tmp_path)
    assert encoder.fingerprint == Encoder.load(src / "tokenizer.json").fingerprint  # caches hold
    out = tmp_path / "exported"
    out.mkdir()
    assert write_tokenizer(src, out).read_bytes() == (src / "tokenizer.json").read_bytes()
    first = _stream(encoder)[0]
    assert (first == BOS) == (model == "llama")


def test_a_finetuned_llamas_tokenizer_is_the_one_it_trained_on(tiny_llama_dir, corpus, tmp_path):
    src = _folder(tiny_llama_dir, tmp_path, tokenizer_class="LlamaTokenizerFast",
                  add_bos_token=False)
    out = train(TrainConfig(output_dir=tmp_path / "out", data=(corpus,), model=src,
                            block_size=32, steps=1, batch_size=2, checkpoint_every=0,
                            progress=False))
    expected = AutoTokenizer.from_pretrained(src)(DOCS[0]).input_ids
    assert expected[0] != BOS
    assert _runtime(out, tmp_path).encode(DOCS[0]) == expected
